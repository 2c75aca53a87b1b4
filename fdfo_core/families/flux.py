"""Flux.1 (dev, schnell, Kontext used for text-to-image): 16-channel latents packed into 2x2
patch tokens, CLIP-L pooled + T5 tokens, RoPE position ids, optional guidance embedding.

diffusers: `FluxPipeline` / `FluxKontextPipeline` with `FluxTransformer2DModel`; timestep = t
(the model scales by 1000 inside), `img_ids` = (0, row, col) per patch, `txt_ids` = 0, guidance
embedding (dev, Kontext) = the distilled guidance value. The time grid is linspace(1, 1/n, n)
shifted by a resolution-dependent mu (dev) or not at all (schnell).
ComfyUI: `comfy.model_base.Flux` (double blocks with fused `qkv`; single blocks with `linear1` =
[q, k, v, mlp_in] and `linear2` = proj_out). Fill / Depth / Canny variants (image channels
concatenated to the latent) need an input image and are refused.
"""

from __future__ import annotations

import torch

from .base import DistilledCheckpoint, Family, FamilyError, FamilyOptions
from .common import image_position_ids, pack_2x2, unpack_2x2
from .lora_map import LoraMap, fused
from .published import CLIP_L_B, SD3_VAE_CONFIG, SMALL_KL_VAE_CONFIG, T5_XXL_ENCODER_B, PublishedModel


def _flux(key: str, title: str, repo: str, guidance_embeds: bool) -> PublishedModel:
    config = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
              "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
              "guidance_embeds": guidance_embeds, "axes_dims_rope": (16, 56, 56)}
    small = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
             "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": (4, 6, 6)}
    vae = {**SD3_VAE_CONFIG, "scaling_factor": 0.3611, "shift_factor": 0.1159}
    return PublishedModel(
        key=key, title=title, repo=repo, pipeline="FluxPipeline", transformer="FluxTransformer2DModel",
        transformer_config=config, vae="AutoencoderKL", vae_config=vae, published_params_b=12.0,
        text_encoders_b=CLIP_L_B + T5_XXL_ENCODER_B, resolution=1024, small_transformer=small,
        small_vae={**SMALL_KL_VAE_CONFIG, "scaling_factor": 0.3611, "shift_factor": 0.1159},
        scheduler_config={"shift": 3.0, "use_dynamic_shifting": guidance_embeds, "base_shift": 0.5, "max_shift": 1.15,
                          "base_image_seq_len": 256, "max_image_seq_len": 4096})


def single_block_rows(in_features: int, out_features: int) -> list[int]:
    # linear1 = [q, k, v (hidden each), mlp_in (the rest)]; hidden = in_features.
    return [in_features, in_features, in_features, out_features - 3 * in_features]


def flux_lora_map() -> LoraMap:
    """Flux.1's key map (also Chroma's, whose blocks ComfyUI and diffusers name as Flux's, and the
    double and single blocks of HunyuanImage-2.1's)."""
    d, c = "transformer_blocks.{i}.", "double_blocks.{i}."
    ds, cs = "single_transformer_blocks.{i}.", "single_blocks.{i}."
    return LoraMap((
        fused(c + "img_attn.qkv", d + "attn.", ("to_q", "to_k", "to_v")),
        fused(c + "img_attn.proj", d + "attn.", ("to_out.0",)),
        fused(c + "txt_attn.qkv", d + "attn.", ("add_q_proj", "add_k_proj", "add_v_proj")),
        fused(c + "txt_attn.proj", d + "attn.", ("to_add_out",)),
        fused(cs + "linear1", ds, ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), split=single_block_rows),
        fused(cs + "linear2", ds, ("proj_out",)),
    ))


class Flux(Family):
    name = "flux"
    title = "Flux.1 (dev, schnell, Kontext for text-to-image)"
    diffusers_pipelines = ("FluxPipeline", "FluxKontextPipeline")
    diffusers_transformers = ("FluxTransformer2DModel",)
    comfy_models = ("Flux",)
    latent_patch = 2  # 2x2 latent packing (the diffusers config says patch_size 1)
    diffusers_needs_input = {
        "FluxImg2ImgPipeline": "an input image",
        "FluxInpaintPipeline": "an input image and a mask",
        "FluxFillPipeline": "an input image and a mask (Flux.1 Fill)",
        "FluxControlPipeline": "a control image (Flux.1 Depth / Canny)",
        "FluxControlNetPipeline": "a control image",
        "FluxKontextInpaintPipeline": "an input image and a mask",
        "FluxPriorReduxPipeline": "an input image (Redux)",
    }
    lora_map = flux_lora_map()
    max_sequence_length = 512
    guidance = 3.5
    preset_name = "flux"
    # 1024 px is Flux's native size; the guidance-distilled dev model samples without CFG.
    preset = {"height": 1024, "width": 1024, "num_steps": 28}
    distilled = (DistilledCheckpoint(
        title="FLUX.1 [schnell]", kind="step-distilled (adversarial, 1-4 steps, no guidance input)",
        base_model=("FLUX.1 [dev] (black-forest-labs/FLUX.1-dev; guidance-distilled itself, but sampled in 28+ steps: "
                    "no undistilled FLUX.1 is public)"),
        settings={"num_steps": 4, "cfg_scale": 1.0},
        # schnell is the Flux.1 text-to-image model without a guidance embedding (ComfyUI: FluxSchnell)
        names=("schnell",), transformer_config={"guidance_embeds": False}, comfy_configs=("FluxSchnell",)),)
    vram = ("12 B: ~24 GB in bf16, ~12 GB in fp8. 24 GB: fp8 at 512 px with storage_device cpu and gradient "
            "checkpointing (tight); 48 GB: 1024 px with gradient checkpointing; 80 GB: bf16 at 1024 px")

    published_models = (
        _flux("flux-dev", "Flux.1 dev", "black-forest-labs/FLUX.1-dev", guidance_embeds=True),
        _flux("flux-schnell", "Flux.1 schnell", "black-forest-labs/FLUX.1-schnell", guidance_embeds=False),
    )

    def diffusers_latent_shape(self, pipe, height, width):
        f = pipe.vae_scale_factor
        return (pipe.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2)))

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        emb, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, max_sequence_length=options.max_sequence_length,
        )
        return {"prompt_embeds": emb, "pooled": pooled}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        dtype, device = x.dtype, x.device
        img_ids = image_position_ids(h // 2, w // 2, device, dtype)  # one per 2x2 patch
        txt_ids = torch.zeros(cond["prompt_embeds"].shape[1], 3, device=device, dtype=dtype)
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full((b,), options.guidance, device=device, dtype=torch.float32)
        out = pipe.transformer(
            hidden_states=pack_2x2(x), timestep=t.to(dtype), guidance=guidance,
            pooled_projections=cond["pooled"], encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]
        return unpack_2x2(out, h, w)

    def comfy_check(self, base) -> None:
        dm = base.diffusion_model
        params = getattr(dm, "params", None)
        # ComfyUI's markers of Ovis-Image (v0.8.0 runs it as a Flux model with a text norm and yak MLPs)
        if getattr(dm, "txt_norm", None) is not None or getattr(params, "yak_mlp", False) or getattr(params, "txt_norm", False):
            raise FamilyError(
                "this Flux-class model has a text norm: it is Ovis-Image, which ComfyUI (from v0.8) runs as a Flux "
                "variant. FDFO's nodes do not train it (untested there): train it with `fdfo train` on the diffusers "
                "model (OvisImagePipeline); the LoRA file uses Flux.1's ComfyUI key names."
            )
        patch = getattr(dm, "patch_size", 2)
        channels = dm.img_in.weight.shape[1] // (patch * patch)
        out_channels = int(dm.out_channels) // (patch * patch)  # ComfyUI stores both per patch
        if channels > out_channels:
            kind = "Fill (inpainting)" if channels > 2 * out_channels else "Depth / Canny (control)"
            raise FamilyError(
                f"this Flux model takes {channels} input channels ({out_channels} latent + image channels): it is a "
                f"Flux.1 {kind} model, which needs an input image on every step. FDFO trains text-to-image; load "
                "Flux.1 dev, schnell or Kontext instead."
            )

    def comfy_conditioning(self, extras, options):
        if "guidance" not in extras and options.guidance is not None:
            extras = {**extras, "guidance": options.guidance}
        return extras


FAMILY = Flux()
