"""LongCat-Image (Meituan): a Flux-layout MMDiT with a Qwen2.5-VL text encoder.

diffusers (0.42): `LongCatImagePipeline` with `LongCatImageTransformer2DModel` (19 double and 38
single blocks, Flux's module names) and a Flux-style KL VAE (16 channels, 8x; raw = latents /
scaling_factor + shift_factor). What differs:
- the pipeline *rewrites the prompt* with its text encoder by default (`enable_prompt_rewrite`,
  sampled text generation): FDFO never does; it encodes the prompt as given, so the reward judges
  images of the user's own prompt;
- prompts are tokenized without the chat template, quoted text one character at a time, padded to
  a fixed `tokenizer_max_length` = 512 tokens *between* the template's prefix and suffix (masked
  in the text encoder only; the transformer attends to all 512 outputs), and the template tokens
  are cut off by count after encoding. The 512 is also where the image's RoPE positions start
  (text ids (0, i, i), image ids (1, 512 + row, 512 + col)): FDFO's `max_sequence_length` option
  is not used for this family (changing the length would move the image positions);
- timestep = t (the model scales by 1000); no guidance embedding;
- CFG: guidance_scale g > 1 samples v_u + g (v_c - v_u) (FDFO's cfg_scale = g), then by default
  *renormalises* the guided velocity per token to at most the conditional one's norm
  (`enable_cfg_renorm`); FDFO's CFG does not renormalise;
- time grid: linspace(1, 1/n, n) with Flux's resolution-dependent mu.
ComfyUI: the ComfyUI versions FDFO is tested against have no LongCat-Image model. LoRA files use
the Flux.1 key names (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, ...) that
ComfyUI's converter of diffusers Flux weights gives these modules; not tested in a ComfyUI that
runs LongCat-Image.
"""

from __future__ import annotations

import torch

from .base import Family, FamilyOptions
from .common import pack_2x2, unpack_2x2
from .flux import flux_lora_map

#: The pipeline's fixed text length (`tokenizer_max_length`), also the image's RoPE offset.
TEXT_TOKENS = 512


class LongCatImage(Family):
    name = "longcat_image"
    title = "LongCat-Image"
    min_diffusers = ("0.37", "LongCatImagePipeline first shipped in diffusers 0.37")
    diffusers_pipelines = ("LongCatImagePipeline",)
    diffusers_transformers = ("LongCatImageTransformer2DModel",)
    diffusers_needs_input = {"LongCatImageEditPipeline": "an input image to edit (LongCat-Image-Edit)"}
    latent_patch = 2  # 2x2 latent packing (the config says patch_size 1)
    lora_map = flux_lora_map()
    max_sequence_length = TEXT_TOKENS  # fixed by the pipeline (see the module docstring)
    preset_name = "longcat-image"
    # The pipeline's defaults: 1024 px, 50 steps, CFG 4.5 (without the pipeline's renormalisation).
    preset = {"height": 1024, "width": 1024, "num_steps": 50, "cfg_scale": 4.5}
    vram = ("6 B transformer (the model card's size; 12 GB in bf16) plus Qwen2.5-VL-7B (16 GB) while prompts are "
            "encoded: 24 GB at 1024 px with gradient checkpointing and storage_device cpu (tight), 48 GB comfortable "
            "(estimates, not measured)")

    def diffusers_distilled(self, pipe) -> str | None:
        """LongCat-Image and LongCat-Image-Dev are not distilled: None."""
        return None

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        return {"prompt_embeds": ((TEXT_TOKENS, int(transformer_config["joint_attention_dim"])), "float")}

    def diffusers_latent_shape(self, pipe, height, width):
        f = pipe.vae_scale_factor
        return (pipe.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2)))

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        # encode_prompt tokenizes and encodes on the pipeline's device, without prompt rewriting.
        emb, _ = pipe.encode_prompt(prompt=list(prompts))
        return {"prompt_embeds": emb.to(device)}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        emb = cond["prompt_embeds"]
        n = emb.shape[1]
        txt_ids = torch.zeros(n, 3, device=x.device)
        txt_ids[:, 1] = txt_ids[:, 2] = torch.arange(n, device=x.device, dtype=torch.float32)
        img_ids = torch.ones(h // 2, w // 2, 3, device=x.device)
        img_ids[..., 1] = torch.arange(h // 2, device=x.device)[:, None] + float(pipe.tokenizer_max_length)
        img_ids[..., 2] = torch.arange(w // 2, device=x.device)[None, :] + float(pipe.tokenizer_max_length)
        out = pipe.transformer(
            hidden_states=pack_2x2(x), timestep=t.to(x.dtype), guidance=None, encoder_hidden_states=emb,
            txt_ids=txt_ids, img_ids=img_ids.reshape(-1, 3), return_dict=False,
        )[0]
        return unpack_2x2(out, h, w)


FAMILY = LongCatImage()
