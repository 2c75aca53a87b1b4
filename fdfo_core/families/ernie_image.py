"""ERNIE-Image (Baidu): a shared-AdaLN single-stream DiT on Flux.2's VAE, Mistral3 text features.

diffusers (0.42): `ErnieImagePipeline` with `ErnieImageTransformer2DModel` and `AutoencoderKLFlux2`.
What differs:
- the pipeline *rewrites prompts* with its prompt-enhancer model (`pe`, a Ministral 3 LM with
  sampled generation) whenever one is loaded, by default (`use_pe=True`): FDFO never does; it
  encodes the prompt as given, so the reward judges images of the user's own prompt;
- text features: the second-to-last hidden state of the text encoder, per prompt without padding
  (no chat template); the transformer takes them padded with their lengths (`text_lens`, from
  which it builds the key mask and the image's RoPE offset). FDFO pads to `max_sequence_length`
  tokens (longer prompts are cut) and trims to the batch's longest prompt in the velocity call;
- latents: the VAE's 32 channels patched 2x2 into 128 channels of 16 px cells, normalised with the
  VAE's batch-norm statistics with a hard-coded eps 1e-5 (not the VAE config's `batch_norm_eps`);
  the transformer takes them as [B, 128, H/16, W/16] images (no token packing);
- timestep = 1000 t (the scheduler's timestep, not the flow time);
- time grid: linspace(1, 1/n, n) shifted by the scheduler (no resolution-dependent mu);
- CFG: guidance_scale g > 1 samples v_u + g (v_c - v_u): FDFO's cfg_scale = g.
ComfyUI: no ERNIE-Image model in the ComfyUI versions FDFO is tested against; LoRA files use the
diffusers module names (`diffusion_model.layers.0.self_attention.to_q...`).
"""

from __future__ import annotations

import torch

from .base import DistilledCheckpoint, Family, FamilyOptions
from .common import pad_text_rows, scheduler_sigmas
from .lora_map import LoraMap, same_names

#: The batch-norm eps the pipeline de-normalises latents with (hard-coded there).
LATENT_BN_EPS = 1e-5


class ErnieImage(Family):
    name = "ernie_image"
    title = "ERNIE-Image"
    min_diffusers = ("0.38", "ErnieImagePipeline first shipped in diffusers 0.38")
    diffusers_pipelines = ("ErnieImagePipeline",)
    diffusers_transformers = ("ErnieImageTransformer2DModel",)
    latent_patch = 1  # the VAE's 2x2 patches are the latent cells (16 px); the transformer's patch_size is 1
    fingerprint_module = "final_linear"
    lora_map = LoraMap(tuple(same_names("layers.{i}.self_attention.", ("to_q", "to_k", "to_v", "to_out.0"))))
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    max_sequence_length = 512
    preset_name = "ernie-image"
    # The pipeline's defaults: 1024 px, 50 steps, CFG 4.
    preset = {"height": 1024, "width": 1024, "num_steps": 50, "cfg_scale": 4.0}
    distilled = (DistilledCheckpoint(
        title="ERNIE-Image Turbo", kind="few-step distilled", base_model="ERNIE-Image (the base checkpoint)",
        settings={"cfg_scale": 1.0}, names=("turbo",)),)
    vram = ("2.8 B transformer (counted from diffusers' default config: 5.6 GB in bf16) plus the Mistral3 text encoder "
            "while prompts are encoded: 24 GB at 1024 px with gradient checkpointing (estimates, not measured; a "
            "checkpoint with a larger config needs more)")

    def diffusers_distilled(self, pipe) -> str | None:
        """A sentence when the checkpoint's name says it is a few-step distilled "Turbo" model, else None."""
        name = str(getattr(pipe, "name_or_path", "") or "")
        if "turbo" in name.lower():
            return (f"{name} is a few-step distilled (Turbo) checkpoint: RL on it blurs its images; train the base "
                    "ERNIE-Image checkpoint instead")
        return None

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        return {"prompt_embeds": ((max_sequence_length, int(transformer_config["text_in_dim"])), "float"),
                "prompt_mask": ((max_sequence_length,), "mask")}

    def diffusers_vae_scale(self, pipe):
        return int(pipe.vae_scale_factor)  # 16: the VAE's 8x and its 2x2 latent patches

    def diffusers_latent_shape(self, pipe, height, width):
        f = self.diffusers_vae_scale(pipe)
        return (pipe.transformer.config.in_channels, height // f, width // f)

    def diffusers_image_seq_len(self, pipe, height, width):
        _, h, w = self.diffusers_latent_shape(pipe, height, width)
        return h * w

    def diffusers_sigmas(self, pipe, num_steps, height, width):
        return scheduler_sigmas(pipe.scheduler, num_steps, self.diffusers_image_seq_len(pipe, height, width),
                                explicit_linspace=True)

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        length = options.max_sequence_length
        hiddens = pipe.encode_prompt(list(prompts), device)  # one [T_i, D] per prompt; never the enhancer
        emb, mask = pad_text_rows([h[:length] for h in hiddens], length)
        return {"prompt_embeds": emb, "prompt_mask": mask}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        lens = cond["prompt_mask"].sum(dim=1)
        used = int(lens.max())  # the transformer masks each row's padding: trimming changes nothing
        return pipe.transformer(
            hidden_states=x, timestep=(1000 * t).to(x.dtype), text_bth=cond["prompt_embeds"][:, :used].to(x.dtype),
            text_lens=lens, return_dict=False,
        )[0]

    def diffusers_decode(self, pipe, latents):
        vae = pipe.vae
        z = latents.to(vae.dtype)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + LATENT_BN_EPS).to(z)
        z = z * std + mean
        # Undo the 2x2 patching: channel (c, dy, dx) of cell (i, j) -> pixel (2i + dy, 2j + dx) of c.
        b, c, h, w = z.shape
        z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)
        return vae.decode(z, return_dict=False)[0]


FAMILY = ErnieImage()
