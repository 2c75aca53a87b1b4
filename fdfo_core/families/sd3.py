"""SD3 / SD3.5 (Medium, Large, Large Turbo): MMDiT, 16-channel latents, CLIP-L + CLIP-G (+ T5).

diffusers: `StableDiffusion3Pipeline` with `SD3Transformer2DModel`; the transformer takes unpacked
latents [B, 16, h, w], timestep = 1000 t, token embeddings and the pooled CLIP embedding.
ComfyUI: `comfy.model_base.SD3` (MMDiT with fused `qkv` per joint block). SD3.5 Medium adds a
second self-attention on the image stream in its first blocks (diffusers `attn2`, ComfyUI
`x_block.attn2`) and RMS q/k-norm; both are covered by the same map.
"""

from __future__ import annotations

import torch

from .base import DistilledCheckpoint, Family, FamilyOptions
from .common import scheduler_sigmas
from .lora_map import LoraMap, fused
from .published import CLIP_G_B, CLIP_L_B, SD3_VAE_CONFIG, SMALL_KL_VAE_CONFIG, T5_XXL_ENCODER_B, PublishedModel

#: CLIP-L and CLIP-G tokens (77) come before the T5 tokens in SD3's prompt embedding.
CLIP_TOKENS = 77
_SMALL_MMDIT = {"attention_head_dim": 16, "num_attention_heads": 2, "num_layers": 2, "caption_projection_dim": 32,
                "joint_attention_dim": 32, "pooled_projection_dim": 32, "pos_embed_max_size": 16, "sample_size": 8}


def _sd3(key, title, repo, params_b, layers, heads, pos_max, dual=0, qk_norm=None) -> PublishedModel:
    config = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": layers,
              "attention_head_dim": 64, "num_attention_heads": heads, "joint_attention_dim": 4096,
              "caption_projection_dim": 64 * heads, "pooled_projection_dim": 2048, "pos_embed_max_size": pos_max,
              "dual_attention_layers": tuple(range(dual)), "qk_norm": qk_norm}
    small = {**_SMALL_MMDIT, "dual_attention_layers": (0,) if dual else ()}
    return PublishedModel(
        key=key, title=title, repo=repo, pipeline="StableDiffusion3Pipeline", transformer="SD3Transformer2DModel",
        transformer_config=config, vae="AutoencoderKL", vae_config=SD3_VAE_CONFIG, published_params_b=params_b,
        text_encoders_b=CLIP_L_B + CLIP_G_B + T5_XXL_ENCODER_B, resolution=512 if key == "sd35-medium" else 1024,
        small_transformer=small, small_vae=SMALL_KL_VAE_CONFIG, count_buffers=True)


def _joint_block_map() -> LoraMap:
    d, c = "transformer_blocks.{i}.", "joint_blocks.{i}."
    return LoraMap((
        fused(c + "x_block.attn.qkv", d + "attn.", ("to_q", "to_k", "to_v")),
        fused(c + "x_block.attn.proj", d + "attn.", ("to_out.0",)),
        fused(c + "context_block.attn.qkv", d + "attn.", ("add_q_proj", "add_k_proj", "add_v_proj")),
        fused(c + "context_block.attn.proj", d + "attn.", ("to_add_out",)),
        # SD3.5 Medium's dual attention (MMDiT-X): the image stream's second self-attention.
        fused(c + "x_block.attn2.qkv", d + "attn2.", ("to_q", "to_k", "to_v")),
        fused(c + "x_block.attn2.proj", d + "attn2.", ("to_out.0",)),
    ))


class SD3(Family):
    name = "sd3"
    title = "SD3 / SD3.5 (Medium, Large, Turbo)"
    diffusers_pipelines = ("StableDiffusion3Pipeline",)
    diffusers_transformers = ("SD3Transformer2DModel",)
    comfy_models = ("SD3",)
    diffusers_needs_input = {
        "StableDiffusion3Img2ImgPipeline": "an input image",
        "StableDiffusion3InpaintPipeline": "an input image and a mask",
        "StableDiffusion3ControlNetPipeline": "a control image",
        "StableDiffusion3ControlNetInpaintingPipeline": "a control image and a mask",
    }
    lora_map = _joint_block_map()
    max_sequence_length = 256
    preset_name = "sd35-medium"
    # The published FDFO recipe (the FDFOConfig defaults) is for SD3.5 Medium at 512 px.
    preset = {}
    distilled = (DistilledCheckpoint(
        title="Stable Diffusion 3.5 Large Turbo", kind="step-distilled (ADD, 4 steps, no CFG)",
        base_model="Stable Diffusion 3.5 Large (stabilityai/stable-diffusion-3.5-large)",
        settings={"num_steps": 4, "cfg_scale": 1.0},
        names=("large-turbo", "3.5-turbo", "35-turbo", "sd3-turbo")),)
    vram = ("SD3.5 Medium (2.5 B, ~5 GB in bf16) at 512 px: 24 GB with storage_device cpu and gradient "
            "checkpointing, the published settings in 48 GB; Large (8 B, ~16 GB in bf16): 48 GB and up")

    published_models = (
        _sd3("sd35-medium", "SD3.5 Medium", "stabilityai/stable-diffusion-3.5-medium", 2.5, 24, 24, 384, dual=13,
             qk_norm="rms_norm"),
        _sd3("sd35-large", "SD3.5 Large", "stabilityai/stable-diffusion-3.5-large", 8.1, 38, 38, 192,
             qk_norm="rms_norm"),
        _sd3("sd3-medium", "SD3 Medium", "stabilityai/stable-diffusion-3-medium-diffusers", 2.0, 24, 24, 192),
    )

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        # CLIP-L / CLIP-G tokens, then T5's; pooled = CLIP-L + CLIP-G projections.
        return {"prompt_embeds": ((CLIP_TOKENS + max_sequence_length, int(transformer_config["joint_attention_dim"])),
                                  "float"),
                "pooled": ((int(transformer_config["pooled_projection_dim"]),), "float")}

    def diffusers_sigmas(self, pipe, num_steps: int, height: int, width: int) -> torch.Tensor:
        # StableDiffusion3Pipeline lets the scheduler make its own grid (no explicit sigmas).
        return scheduler_sigmas(pipe.scheduler, num_steps, self.diffusers_image_seq_len(pipe, height, width),
                                explicit_linspace=False, max_shift_default=1.16)

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        emb, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device,
            do_classifier_free_guidance=False, max_sequence_length=options.max_sequence_length,
        )
        return {"prompt_embeds": emb, "pooled": pooled}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        return pipe.transformer(
            hidden_states=x,
            timestep=(t * 1000).to(x.dtype),
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled"],
            return_dict=False,
        )[0]


FAMILY = SD3()
