"""Qwen-Image: a 60-block MMDiT with a Qwen2.5-VL text encoder and the Wan 2.1 VAE.

diffusers: `QwenImagePipeline` with `QwenImageTransformer2DModel`. Latents [B, 16, h, w] are
packed into 2x2 patch tokens; the transformer takes timestep = t (it scales by 1000 inside),
`img_shapes` = (1, h/2, w/2) per image for its 3-D RoPE, the text tokens and their mask (text
positions continue after the image's). The VAE is a video VAE: latents [B, 16, 1, h, w],
raw = latents * std + mean per channel. The time grid is linspace(1, 1/n, n) with the
resolution-dependent mu.
ComfyUI: `comfy.model_base.QwenImage`, module names identical to diffusers' (no fused linears),
run on video latents [B, 16, T, h, w] with T = 1.
"""

from __future__ import annotations

import torch

from .base import Family, FamilyOptions
from .common import decode_one_frame, pack_2x2, unpack_2x2
from .lora_map import LoraMap, same_names
from .published import QWEN25_VL_7B_B, PublishedModel


class QwenImage(Family):
    name = "qwen_image"
    title = "Qwen-Image"
    min_diffusers = ("0.37", "the Qwen-Image transformer honours the prompt's text mask from diffusers 0.37 (older releases attend to the padding tokens, so a batch of prompts of different lengths gives other velocities)")
    diffusers_pipelines = ("QwenImagePipeline",)
    diffusers_transformers = ("QwenImageTransformer2DModel",)
    comfy_models = ("QwenImage",)
    diffusers_needs_input = {
        "QwenImageEditPipeline": "an input image (Qwen-Image-Edit)",
        "QwenImageEditPlusPipeline": "input images (Qwen-Image-Edit-2509)",
        "QwenImageEditInpaintPipeline": "an input image and a mask",
        "QwenImageImg2ImgPipeline": "an input image",
        "QwenImageInpaintPipeline": "an input image and a mask",
        "QwenImageControlNetPipeline": "a control image",
        "QwenImageControlNetInpaintPipeline": "a control image and a mask",
        "QwenImageLayeredPipeline": "an input image",
    }
    comfy_video_latents = True
    latent_patch = 2  # 2x2 latent packing
    lora_map = LoraMap(tuple(same_names("transformer_blocks.{i}.attn.", (
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    ))))
    # Prompts are padded to this many tokens (so that batches concatenate) and trimmed back to
    # the longest real prompt of each batch in the velocity call; longer prompts are cut.
    max_sequence_length = 512
    preset_name = "qwen-image"
    # Native 1328 px; 1024 px keeps the published recipe's token count within reach.
    preset = {"height": 1024, "width": 1024, "num_steps": 30}
    vram = ("20 B: ~41 GB in bf16, ~20 GB in fp8. 48 GB: fp8 at 512-1024 px with storage_device cpu and gradient "
            "checkpointing; 80 GB: bf16 at 1024 px with gradient checkpointing")

    published_models = (
        PublishedModel(
            key="qwen-image", title="Qwen-Image", repo="Qwen/Qwen-Image", pipeline="QwenImagePipeline",
            transformer="QwenImageTransformer2DModel",
            transformer_config={"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60,
                                "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                                "guidance_embeds": False, "axes_dims_rope": (16, 56, 56)},
            vae="AutoencoderKLQwenImage", vae_config={}, published_params_b=20.0, text_encoders_b=QWEN25_VL_7B_B,
            resolution=1024,
            small_transformer={"num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
                               "joint_attention_dim": 32, "axes_dims_rope": (4, 6, 6)},
            small_vae={"base_dim": 8},
            scheduler_config={"shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 0.9,
                              "base_image_seq_len": 256, "max_image_seq_len": 8192, "shift_terminal": 0.02,
                              "time_shift_type": "exponential"}),
    )

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        # Qwen2.5-VL hidden states padded to the text length, and their mask (1 = a real token).
        return {"prompt_embeds": ((max_sequence_length, int(transformer_config["joint_attention_dim"])), "float"),
                "prompt_mask": ((max_sequence_length,), "mask")}

    def diffusers_latent_shape(self, pipe, height, width):
        f = pipe.vae_scale_factor
        return (pipe.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2)))

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        length = options.max_sequence_length
        emb, mask = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=length)
        b, n, d = emb.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.long, device=emb.device)
        # Pad to a fixed length: conditionings of separate calls (prompt and negative prompt)
        # must concatenate. Masked tokens are never attended to; `diffusers_velocity` trims them.
        emb = torch.cat([emb, emb.new_zeros(b, length - n, d)], dim=1)
        mask = torch.cat([mask.long(), mask.new_zeros(b, length - n).long()], dim=1)
        return {"prompt_embeds": emb, "prompt_mask": mask}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        mask = cond["prompt_mask"]
        used = int(mask.sum(dim=1).max())  # the batch's longest prompt: padding beyond is dropped
        emb, mask = cond["prompt_embeds"][:, :used], mask[:, :used]
        out = pipe.transformer(
            hidden_states=pack_2x2(x), timestep=t.to(x.dtype), guidance=self._guidance(pipe, b, x, options),
            encoder_hidden_states=emb, encoder_hidden_states_mask=None if bool(mask.all()) else mask,
            img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False,
        )[0]
        return unpack_2x2(out, h, w)

    @staticmethod
    def _guidance(pipe, b, x, options):
        if not pipe.transformer.config.guidance_embeds:
            return None
        return torch.full((b,), 1.0 if options.guidance is None else options.guidance, device=x.device,
                          dtype=torch.float32)

    def diffusers_decode(self, pipe, latents):
        return decode_one_frame(pipe.vae, latents)


FAMILY = QwenImage()
