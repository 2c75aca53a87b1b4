"""Wan 2.1 / Wan 2.2 text-to-video models used as text-to-image models (one frame).

diffusers: `WanPipeline` with `WanTransformer3DModel`, a UMT5 text encoder and a video VAE
(`AutoencoderKLWan`). Latents are video latents [B, C, T, h, w]; an image is one frame (T = 1),
so FDFO's [B, C, h, w] latents gain T = 1 in the velocity call and decoding. The transformer
takes timestep = 1000 t (Wan 2.2 TI2V-5B, `expand_timesteps`: one timestep per 2x2 latent patch,
all equal for text-to-image), the UMT5 tokens zero-padded to `max_sequence_length` (no mask: the
padding is part of what the model saw in training) and predicts v = noise - x_0. Decoding:
raw = latents * std + mean per channel. Wan 2.1 and Wan 2.2 A14B have 16 latent channels and an
8x VAE; Wan 2.2 TI2V-5B has 48 channels and a 16x VAE. The pipelines ship a
`UniPCMultistepScheduler` in flow mode (flow sigmas, flow prediction): FDFO takes its time grid
(`set_timesteps(n)`, as `WanPipeline` calls it) and integrates it with its own solver.
ComfyUI: `comfy.model_base.WAN21` (Wan 2.1, each Wan 2.2 A14B expert) and `WAN22` (TI2V-5B),
both on [B, C, T, h, w] latents, trained with T = 1; attention linears `blocks.{i}.self_attn.q`
/ `k` / `v` / `o` and `blocks.{i}.cross_attn.*` (diffusers `blocks.{i}.attn1.to_q` ... and
`attn2.*`), none fused.

Refused: Wan 2.2 A14B as one diffusers pipeline (two expert transformers switched at a noise
boundary: FDFO trains one transformer), and image-to-video variants (extra input channels for a
reference image).
"""

from __future__ import annotations

import torch

from .base import Family, FamilyError, FamilyOptions
from .common import decode_one_frame, scheduler_set_timesteps_sigmas
from .lora_map import LoraMap, LoraModule

#: diffusers projection -> ComfyUI linear, for the self- (attn1) and cross-attention (attn2).
_PROJECTIONS = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}


def _wan_map() -> LoraMap:
    modules = []
    for diffusers_attn, comfy_attn in (("attn1", "self_attn"), ("attn2", "cross_attn")):
        for diffusers_name, comfy_name in _PROJECTIONS.items():
            modules.append(LoraModule(f"blocks.{{i}}.{comfy_attn}.{comfy_name}",
                                      (f"blocks.{{i}}.{diffusers_attn}.{diffusers_name}",)))
    return LoraMap(tuple(modules))


class Wan(Family):
    name = "wan"
    title = "Wan 2.1 / 2.2 (text-to-video, one frame)"
    diffusers_pipelines = ("WanPipeline",)
    diffusers_transformers = ("WanTransformer3DModel",)
    diffusers_flow_schedulers = ("UniPCMultistepScheduler",)
    comfy_models = ("WAN21", "WAN22")
    diffusers_needs_input = {
        "WanImageToVideoPipeline": "an input image (Wan image-to-video)",
        "WanVideoToVideoPipeline": "an input video",
        "WanVACEPipeline": "reference images / a control video (VACE)",
        "WanAnimatePipeline": "a character image and a pose video (Wan-Animate)",
    }
    comfy_video_latents = True
    latent_patch = 2  # the transformer's (1, 2, 2) patches
    lora_map = _wan_map()
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    # Prompts are zero-padded to 512 UMT5 tokens, as in Wan's training (ComfyUI pads the same way).
    max_sequence_length = 512
    preset_name = "wan"
    # Wan 2.1 / 2.2 make 480p-720p video; one 832x480 frame is their native image size. The
    # velocity comes from a video model: 40 steps as the published recipe, CFG off (FDFO default).
    preset = {"height": 480, "width": 832}
    vram = ("Wan 2.1 1.3B (~3 GB in bf16): 24 GB at 832x480; 14B (one A14B expert; ~28 GB in bf16, ~14 GB in "
            "fp8): 48 GB in fp8 with storage_device cpu and gradient checkpointing, 80 GB in bf16; Wan 2.2 "
            "TI2V-5B (~10 GB in bf16): 24-48 GB at 1280x704 (estimates from the parameter counts, not measured)")

    # --- diffusers ----------------------------------------------------------------------------

    def diffusers_check(self, pipe) -> None:
        if getattr(pipe, "transformer_2", None) is not None or pipe.transformer is None:
            raise FamilyError(
                "this WanPipeline has two expert transformers (Wan 2.2 A14B: high-noise and low-noise, switched at "
                f"boundary_ratio={pipe.config.get('boundary_ratio')}); FDFO trains one transformer. Train one "
                "expert as its own Wan model (in ComfyUI: load one expert with Load Diffusion Model), or use "
                "Wan 2.1 / Wan 2.2 TI2V-5B"
            )
        super().diffusers_check(pipe)
        config = pipe.transformer.config
        if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None:
            raise FamilyError("this Wan transformer has image-conditioning inputs (image-to-video); FDFO trains "
                              "text-to-video models (Wan 2.1 T2V, Wan 2.2 T2V / TI2V) as image models")

    def diffusers_vae_scale(self, pipe) -> int:
        return int(pipe.vae_scale_factor_spatial)

    def diffusers_sigmas(self, pipe, num_steps: int, height: int, width: int) -> torch.Tensor:
        # WanPipeline lets the scheduler make its grid: set_timesteps(n), no resolution shift.
        return scheduler_set_timesteps_sigmas(pipe.scheduler, num_steps)

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        emb, _ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False, device=device,
                                    max_sequence_length=options.max_sequence_length)
        return {"prompt_embeds": emb}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, _, h, w = x.shape
        timestep = (t * 1000).to(device=x.device, dtype=torch.float32)
        if pipe.config.get("expand_timesteps", False):
            # Wan 2.2 TI2V: a timestep per 2x2 patch of the (one) frame; all equal without an image.
            timestep = timestep[:, None].expand(b, (h // 2) * (w // 2))
        out = pipe.transformer(hidden_states=x.unsqueeze(2), timestep=timestep,
                               encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]
        return out[:, :, 0]

    def diffusers_decode(self, pipe, latents):
        return decode_one_frame(pipe.vae, latents)

    # --- ComfyUI ------------------------------------------------------------------------------

    def comfy_check(self, base) -> None:
        channels = base.diffusion_model.patch_embedding.weight.shape[1]
        latent = base.latent_format.latent_channels
        if channels != latent:
            raise FamilyError(
                f"this Wan model takes {channels} input channels for {latent} latent channels: an image-to-video or "
                "control variant that needs a reference image / video. Load a text-to-video Wan model "
                "(Wan 2.1 T2V, a Wan 2.2 T2V expert or Wan 2.2 TI2V-5B)."
            )


FAMILY = Wan()
