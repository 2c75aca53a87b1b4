"""Kandinsky 5.0 Image (T2I Lite): a text-encoder / visual-decoder DiT on channel-last latents.

diffusers (0.42): `Kandinsky5T2IPipeline` with `Kandinsky5Transformer3DModel`, a Flux-style KL VAE
(16 channels, 8x). What differs:
- latents are *channel-last video latents* [B, 1, H/8, W/8, 16] (the transformer patches 1x2x2
  inside); FDFO's latent is [B, 16, H/8, W/8] and is permuted around the call;
- the VAE decodes latents / scaling_factor *without* the VAE's shift_factor;
- text: Qwen2.5-VL's last hidden state of the chat-templated prompt with the template's first 40
  tokens dropped by count, plus CLIP-L's pooled output; the pipeline pads a batch to its longest
  prompt and passes *no mask* (neither to the text encoder nor to the transformer, whose text RoPE
  runs over the padded length), so a prompt's image depends on the other prompts of its batch.
  FDFO encodes each prompt alone and runs the transformer on groups of rows of the same prompt
  length: a row's velocity is what the pipeline gives that prompt on its own;
- timestep = 1000 t (the scheduler's timestep);
- time grid: the scheduler's own `set_timesteps(n)` (shift, no resolution-dependent mu);
- sizes: the pipeline *silently replaces* any (width, height) outside its list `resolutions`
  (1024 x 1024, 640 x 1408, 1408 x 640, 768 x 1280, 1280 x 768, 896 x 1152, 1152 x 896) by the
  listed size of the nearest aspect ratio; FDFO refuses other sizes (FamilyError naming the list)
  instead of training at a size the model is never sampled at;
- CFG: guidance_scale g > 1 samples v_u + g (v_c - v_u): FDFO's cfg_scale = g.
ComfyUI: not covered here (issue 26 item 1); LoRA files use the diffusers module names
(`diffusion_model.visual_transformer_blocks.0.self_attention.to_query...`).
"""

from __future__ import annotations

import torch

from .base import DistilledCheckpoint, Family, FamilyError, FamilyOptions
from .common import pad_text_rows, scheduler_set_timesteps_sigmas
from .lora_map import LoraMap, same_names

_NAMES = ("to_query", "to_key", "to_value", "out_layer")
_ATTENTIONS = ("visual_transformer_blocks.{i}.self_attention.", "visual_transformer_blocks.{i}.cross_attention.",
               "text_transformer_blocks.{i}.self_attention.")


class Kandinsky5Image(Family):
    name = "kandinsky5_image"
    title = "Kandinsky 5.0 Image (T2I Lite)"
    min_diffusers = ("0.36", "Kandinsky5T2IPipeline first shipped in diffusers 0.36")
    diffusers_pipelines = ("Kandinsky5T2IPipeline",)
    diffusers_transformers = ("Kandinsky5Transformer3DModel",)
    diffusers_needs_input = {"Kandinsky5I2IPipeline": "an input image (Kandinsky 5.0 image editing)"}
    latent_patch = 2  # the transformer's 1x2x2 patches
    fingerprint_module = "out_layer.out_layer"
    lora_map = LoraMap(tuple(m for prefix in _ATTENTIONS for m in same_names(prefix, _NAMES)))
    # ("out_layer" alone would also select the feed-forward, modulation and embedding layers.)
    lora_targets = ("to_query", "to_key", "to_value", "self_attention.out_layer", "cross_attention.out_layer")
    max_sequence_length = 512
    preset_name = "kandinsky5-image"
    # The pipeline's defaults: 1024 px (one of its listed sizes), 50 steps, CFG 3.5.
    preset = {"height": 1024, "width": 1024, "num_steps": 50, "cfg_scale": 3.5}
    distilled = (DistilledCheckpoint(
        title="Kandinsky 5.0 Image distilled / no-CFG", kind="few-step or CFG-distilled",
        base_model="Kandinsky-5.0-T2I-Lite-sft", settings={"cfg_scale": 1.0}, names=("distil", "nocfg")),)
    vram = ("T2I Lite: diffusers' default config counts 2.2 B (4.3 GB in bf16), the published checkpoint's config "
            "decides; plus Qwen2.5-VL-7B (16 GB) and CLIP-L while prompts are encoded: 24 GB at 1024 px with gradient "
            "checkpointing, 48 GB comfortable (estimates, not measured)")

    def diffusers_distilled(self, pipe) -> str | None:
        """A sentence when the checkpoint's name says it is distilled (Kandinsky's "distilled" /
        "nocfg" variants), else None (sft, pretrain)."""
        name = str(getattr(pipe, "name_or_path", "") or "")
        if any(k in name.lower() for k in ("distil", "nocfg")):
            return (f"{name} is a distilled Kandinsky 5.0 checkpoint (few-step or CFG-distilled): RL on it blurs its "
                    "images; train the sft checkpoint (Kandinsky-5.0-T2I-Lite-sft) instead")
        return None

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        return {"prompt_embeds": ((max_sequence_length, int(transformer_config["in_text_dim"])), "float"),
                "prompt_mask": ((max_sequence_length,), "mask"),
                "pooled": ((int(transformer_config["in_text_dim2"]),), "float")}

    def diffusers_vae_scale(self, pipe):
        return int(pipe.vae_scale_factor_spatial)

    def diffusers_latent_shape(self, pipe, height, width):
        f = self.diffusers_vae_scale(pipe)
        return (pipe.transformer.config.in_visual_dim, height // f, width // f)

    def check_size(self, pipe, height: int, width: int) -> None:
        """FamilyError unless (width, height) is one of the pipeline's `resolutions`, which it would
        otherwise replace by the nearest listed aspect ratio."""
        sizes = [tuple(int(v) for v in wh) for wh in pipe.resolutions]
        if (int(width), int(height)) not in sizes:
            listed = ", ".join(f"{h}x{w}" for w, h in sizes)
            raise FamilyError(
                f"Kandinsky 5.0 Image samples only at its listed sizes (height x width: {listed}); its pipeline "
                f"silently replaces {height}x{width} by the listed size of the nearest aspect ratio. Set --height / "
                "--width to one of them.")

    def diffusers_sigmas(self, pipe, num_steps, height, width):
        self.check_size(pipe, height, width)  # every sampling run starts here
        return scheduler_set_timesteps_sigmas(pipe.scheduler, num_steps)

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        length = options.max_sequence_length
        rows = []
        for prompt in prompts:  # alone: the pipeline's batches attend to each other's padding
            emb, pooled, _ = pipe.encode_prompt(prompt=[prompt], max_sequence_length=length, device=device)
            rows.append((emb[0, :length], pooled[0]))
        emb, mask = pad_text_rows([e for e, _ in rows], length)
        return {"prompt_embeds": emb, "prompt_mask": mask, "pooled": torch.stack([p for _, p in rows])}

    @staticmethod
    def _keep_fp32(transformer) -> None:
        """The model's time embeddings and modulations run in float32 (`_keep_in_fp32_modules`, which
        from_pretrained honours); a transformer cast wholesale to bf16 is put back for them."""
        keep = tuple(getattr(transformer, "_keep_in_fp32_modules", None) or ())
        if transformer.time_embeddings.in_layer.weight.dtype == torch.float32:
            return
        for name, module in transformer.named_modules():
            if any(k in name.split(".") for k in keep):
                module.float()

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        self._keep_fp32(pipe.transformer)
        lengths = cond["prompt_mask"].sum(dim=1)
        latents = x.permute(0, 2, 3, 1).unsqueeze(1)  # [B, 1, h, w, C]
        visual_pos = [torch.arange(1, device=x.device), torch.arange(h // 2, device=x.device),
                      torch.arange(w // 2, device=x.device)]
        out = torch.empty_like(latents)
        for n in lengths.unique().tolist():  # rows of one prompt length: no padding attended to
            rows = (lengths == n).nonzero(as_tuple=True)[0]
            out[rows] = pipe.transformer(
                hidden_states=latents[rows], encoder_hidden_states=cond["prompt_embeds"][rows, : int(n)].to(x.dtype),
                pooled_projections=cond["pooled"][rows].to(x.dtype), timestep=(1000 * t[rows]).to(x.dtype),
                visual_rope_pos=visual_pos, text_rope_pos=torch.arange(int(n), device=x.device),
                scale_factor=[1.0, 1.0, 1.0], sparse_params=None, return_dict=True,
            ).sample.to(out.dtype)  # (with return_dict=False it returns the bare tensor, not a tuple)
        return out[:, 0].permute(0, 3, 1, 2)

    def diffusers_decode(self, pipe, latents):
        vae = pipe.vae
        return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]


FAMILY = Kandinsky5Image()
