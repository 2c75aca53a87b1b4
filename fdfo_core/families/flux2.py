"""Flux.2 (dev) and Flux.2 Klein: one transformer (`Flux2Transformer2DModel`), two families.

The VAE (`AutoencoderKLFlux2`, 32 channels, 8x) is patched 2x2 into 128-channel latents of 16 px
cells, which the pipelines normalise with the VAE's batch-norm statistics; the transformer sees
each cell as one token. Our latent is that patched, normalised tensor [B, 128, H/16, W/16]
(where the pipelines draw their noise); tokens are its cells in row-major order.

diffusers: `Flux2Pipeline` (Mistral Small 3.1 text encoder, hidden states of layers 10, 20, 30
stacked per token) and `Flux2KleinPipeline` (Qwen3, layers 9, 18, 27). Prompts are padded to
`max_sequence_length` tokens and the transformer attends to every one (no mask). timestep = t,
4-axis RoPE ids: image (0, row, col, 0), text (0, 0, 0, token). Flux.2 dev embeds a guidance value
(distilled guidance, default 4); Klein has no guidance embedding and uses true CFG (the
step-distilled Klein none). Time grid: linspace(1, 1/n, n) shifted with an empirical mu that
depends on the image tokens and the step count (BFL's flux2 `compute_empirical_mu`).
ComfyUI (v0.8.0 and later; `comfy_since`): `supported_models.Flux2` / `model_base.Flux2` for dev
and Klein (Klein: no guidance embedding, `comfy_variant`), module names of Flux.1 (double blocks
with fused `qkv`, single blocks `linear1` = to_qkv_mlp_proj, `linear2` = to_out). ComfyUI pads the
text tokens on the left with zeros to 512 and gives them positions 0..511 on the fourth RoPE axis;
the diffusers pipelines pad to `max_sequence_length` (512 by default), so both see the same
sequence at the default length. (ComfyUI v0.8.0's loader detects only Flux.2 dev's width, 48
heads; Klein checkpoints load from v0.9.2, where the same model class runs them.)
"""

from __future__ import annotations

import torch

from .base import MMDIT_ATTENTION_TARGETS, DistilledCheckpoint, Family, FamilyOptions
from .common import scheduler_sigmas
from .lora_map import LoraMap, fused

def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """Flux.2's time-shift mu (BFL flux2 sampling.py, `compute_empirical_mu`): linear in the image
    tokens, fitted at 10 and 200 steps and interpolated linearly in the step count; above 4300
    tokens the 200-step line alone."""
    big = 0.00016927 * image_seq_len + 0.45666666  # the 200-step fit
    if image_seq_len > 4300:
        return float(big)
    small = 8.73809524e-05 * image_seq_len + 1.89833333  # the 10-step fit
    slope = (big - small) / 190.0
    return float(big + slope * (num_steps - 200.0))


def _flux2_map() -> LoraMap:
    d, c = "transformer_blocks.{i}.attn.", "double_blocks.{i}."
    s, cs = "single_transformer_blocks.{i}.attn.", "single_blocks.{i}."
    return LoraMap((
        fused(c + "img_attn.qkv", d, ("to_q", "to_k", "to_v")),
        fused(c + "img_attn.proj", d, ("to_out.0",)),
        fused(c + "txt_attn.qkv", d, ("add_q_proj", "add_k_proj", "add_v_proj")),
        fused(c + "txt_attn.proj", d, ("to_add_out",)),
        # diffusers fuses these too: [q, k, v, mlp gate + up] and [attention, mlp] -> out.
        fused(cs + "linear1", s, ("to_qkv_mlp_proj",)),
        fused(cs + "linear2", s, ("to_out",)),
    ))


class Flux2(Family):
    name = "flux2"
    title = "Flux.2 (dev)"
    min_diffusers = ("0.36", "Flux2Pipeline first shipped in diffusers 0.36")
    diffusers_pipelines = ("Flux2Pipeline",)
    diffusers_transformers = ("Flux2Transformer2DModel",)
    comfy_models = ("Flux2",)
    comfy_since = "0.8.0"
    latent_patch = 2  # the VAE's 2x2 latent patches (the transformer's patch_size is 1)
    lora_map = _flux2_map()
    # Every attention projection: the double blocks' q, k, v, out of both streams and the single
    # blocks' fused q, k, v + MLP input (their only attention input projection; `to_out` cannot be
    # selected by suffix without the double blocks' `to_out` list).
    lora_targets = MMDIT_ATTENTION_TARGETS + ("to_qkv_mlp_proj",)
    fingerprint_module = "proj_out"
    max_sequence_length = 512
    guidance = 4.0
    preset_name = "flux2"
    preset = {"height": 1024, "width": 1024, "num_steps": 28}
    vram = ("32.2 B transformer: 64 GB of bf16 weights on the GPU, plus the 24 B Mistral text encoder (48 GB) while "
            "prompts are encoded: a 141 GB card (H200) at 1024 px with gradient checkpointing; the diffusers backend "
            "has no fp8 path (estimates from the parameter count, not measured)")

    def diffusers_latent_shape(self, pipe, height, width):
        cell = pipe.vae_scale_factor * 2
        return (pipe.transformer.config.in_channels, height // cell, width // cell)

    def diffusers_image_seq_len(self, pipe, height, width):
        _, h, w = self.diffusers_latent_shape(pipe, height, width)
        return h * w  # one token per latent cell

    def diffusers_sigmas(self, pipe, num_steps, height, width):
        seq = self.diffusers_image_seq_len(pipe, height, width)
        return scheduler_sigmas(pipe.scheduler, num_steps, seq, explicit_linspace=True,
                                mu=empirical_mu(seq, num_steps))

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        # Padded to max_sequence_length by the pipeline; the transformer attends to the padding
        # too, as the pipeline's own sampling does.
        emb, _ = pipe.encode_prompt(prompt=list(prompts), device=device,
                                    max_sequence_length=options.max_sequence_length)
        return {"prompt_embeds": emb}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        device = x.device
        emb = cond["prompt_embeds"]
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        zero = torch.zeros(h * w, dtype=torch.long)
        img_ids = torch.stack([zero, rows.reshape(-1), cols.reshape(-1), zero], dim=1)
        txt_ids = torch.zeros(emb.shape[1], 4, dtype=torch.long)
        txt_ids[:, 3] = torch.arange(emb.shape[1])
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full((b,), options.guidance, device=device, dtype=torch.float32)
        out = pipe.transformer(
            hidden_states=x.reshape(b, c, h * w).transpose(1, 2), timestep=t.to(x.dtype), guidance=guidance,
            encoder_hidden_states=emb, txt_ids=txt_ids.expand(b, -1, -1).to(device),
            img_ids=img_ids.expand(b, -1, -1).to(device), return_dict=False,
        )[0]
        return out[:, : h * w].transpose(1, 2).reshape(b, c, h, w)

    def comfy_variant(self, base):
        # Klein has no guidance embedding; ComfyUI runs both as its Flux2 model.
        from . import get_family

        params = getattr(getattr(base, "diffusion_model", None), "params", None)
        klein = params is not None and not getattr(params, "guidance_embed", True)
        return get_family("flux2_klein" if klein else "flux2")

    def comfy_conditioning(self, extras, options):
        # ComfyUI's Flux models read the distilled guidance from the conditioning (3.5 when absent).
        if "guidance" not in extras and options.guidance is not None:
            extras = {**extras, "guidance": options.guidance}
        return extras

    def diffusers_decode(self, pipe, latents):
        vae = pipe.vae
        z = latents.to(vae.dtype)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z)
        z = z * std + mean
        # Undo the 2x2 patching: channel (c, dy, dx) of cell (i, j) -> pixel (2i + dy, 2j + dx) of c.
        b, c, h, w = z.shape
        z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)
        return vae.decode(z, return_dict=False)[0]


class Flux2Klein(Flux2):
    name = "flux2_klein"
    title = "Flux.2 Klein (4B, 9B; base and step-distilled)"
    min_diffusers = ("0.37", "Flux2KleinPipeline first shipped in diffusers 0.37")
    diffusers_pipelines = ("Flux2KleinPipeline",)
    diffusers_needs_input = {
        "Flux2KleinInpaintPipeline": "an input image and a mask",
        "Flux2KleinKVPipeline": "reference images (KV-cached image conditioning)",
    }
    comfy_models = ()  # ComfyUI runs Klein as its `Flux2` model: Flux2.comfy_variant picks Klein
    guidance = None  # no guidance embedding: true CFG (cfg_scale), none for the step-distilled models
    preset_name = "flux2-klein"
    preset = {"height": 1024, "width": 1024, "num_steps": 28}
    distilled = (DistilledCheckpoint(
        title="FLUX.2 [klein] 4B / 9B (step-distilled)", kind="step-distilled (4 steps, no CFG)",
        base_model="FLUX.2 [klein] Base 4B / 9B (black-forest-labs/FLUX.2-klein-base-4B, FLUX.2-klein-base-9B)",
        settings={"num_steps": 4, "cfg_scale": 1.0},
        # Flux2KleinPipeline's own flag (model_index.json); the base models have is_distilled false
        pipeline_config={"is_distilled": True}),)
    vram = ("4B: 3.9 B transformer (8 GB in bf16) plus Qwen3-4B (8 GB) while prompts are encoded: 24 GB at 1024 px "
            "with gradient checkpointing; 9B: 9.1 B (18 GB) plus Qwen3-8B (16 GB): 48 GB (estimates from the "
            "parameter count, not measured)")


FAMILIES = (Flux2(), Flux2Klein())
