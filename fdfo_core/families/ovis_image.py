"""Ovis-Image (7B): a Flux-layout MMDiT (double and single blocks, SwiGLU "yak" MLPs, a text
RMS-norm) with a Qwen3 text encoder and the Flux.1 VAE.

diffusers: `OvisImagePipeline` with `OvisImageTransformer2DModel`. Latents [B, 16, H/8, W/8] are
packed into 2x2 patch tokens (as Flux.1); timestep = t (the scheduler's timestep / 1000), no
guidance embedding, true CFG (guidance_scale 5, the empty negative prompt). The time grid is
Flux's: linspace(1, 1/n, n) shifted with the resolution-dependent mu. What it does differently:
- **text**: every prompt gets the pipeline's `system_prompt` ("Describe the image by detailing
  ...") in front, inside Qwen3's chat template (thinking off), padded to max_sequence_length +
  `user_prompt_begin_id` tokens; the first `user_prompt_begin_id` tokens (a hard-coded 28: the
  template's header and the system prompt in Qwen's tokenizer) are dropped and the padding is
  zeroed, not masked: the transformer attends to max_sequence_length tokens, padding included;
- **text position ids** (0, k, k) for token k (Flux's are 0);
- VAE: raw = latents / scaling_factor + shift_factor.
ComfyUI (v0.8.0) runs Ovis-Image as its `Flux` model (`yak_mlp`, `txt_norm`, text ids on two
axes), with Flux.1's module names: the LoRA map is Flux's (`double_blocks.{i}.img_attn.qkv`, ...,
`single_blocks.{i}.linear1` = [q, k, v, MLP in]). Loading our files in ComfyUI is not tested here.
"""

from __future__ import annotations

import torch

from .base import Family, FamilyOptions
from .common import image_position_ids, pack_2x2, unpack_2x2
from .flux import flux_lora_map


class OvisImage(Family):
    name = "ovis_image"
    title = "Ovis-Image"
    min_diffusers = ("0.36", "OvisImagePipeline first shipped in diffusers 0.36")
    diffusers_pipelines = ("OvisImagePipeline",)
    diffusers_transformers = ("OvisImageTransformer2DModel",)
    latent_patch = 2  # 2x2 latent packing (the config says patch_size 1)
    lora_map = flux_lora_map()
    max_sequence_length = 256  # the pipeline's default (after the dropped template tokens)
    preset_name = "ovis-image"
    # The pipeline's 1024 px and 50 steps; FDFO trains without CFG (the published default; the pipeline
    # samples with CFG 5: `--cfg-scale 5`).
    preset = {"height": 1024, "width": 1024, "num_steps": 50}
    vram = ("7.4 B transformer (15 GB in bf16) plus its Qwen3 2B text encoder (4 GB) while prompts are encoded: "
            "32-48 GB at 1024 px with gradient checkpointing (estimates from the parameter count, not measured)")

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        return {"prompt_embeds": ((max_sequence_length, int(transformer_config["joint_attention_dim"])), "float")}

    def diffusers_latent_shape(self, pipe, height, width):
        f = pipe.vae_scale_factor
        return (pipe.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2)))

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        emb, _, _, _ = pipe.encode_prompt(prompt=list(prompts), do_classifier_free_guidance=False, device=device,
                                          max_sequence_length=options.max_sequence_length)
        return {"prompt_embeds": emb}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        emb = cond["prompt_embeds"]
        txt_ids = torch.zeros(emb.shape[1], 3, device=x.device, dtype=x.dtype)
        txt_ids[:, 1] = txt_ids[:, 2] = torch.arange(emb.shape[1], device=x.device, dtype=x.dtype)
        img_ids = image_position_ids(h // 2, w // 2, x.device, x.dtype)
        out = pipe.transformer(hidden_states=pack_2x2(x), timestep=t.to(x.dtype), encoder_hidden_states=emb,
                               txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return unpack_2x2(out, h, w)


FAMILY = OvisImage()
