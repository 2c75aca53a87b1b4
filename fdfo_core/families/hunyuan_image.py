"""HunyuanImage 2.1: a 17 B dual- / single-stream DiT with a Qwen2.5-VL 7B text encoder, a ByT5
glyph encoder for quoted text, and a 32x VAE with 64 latent channels (2048 px native).

diffusers: `HunyuanImagePipeline` with `HunyuanImageTransformer2DModel`; latents [B, 64, h, w]
with 1x1 patches (one token per latent cell), timestep = 1000 t, v = noise - x_0. Prompts go
through a chat template (its system prefix dropped by token count) into Qwen2.5-VL (third-to-last
hidden state), padded to `max_sequence_length` tokens with a mask the transformer honours; text in
quotes (“...”, "...") is also encoded by ByT5 (`encoder_hidden_states_2`, zeros with an all-zero
mask when a prompt has none). Time grid: linspace(1, 1/n, n) shifted by the scheduler (shift 5).
Decoding: raw = latents / scaling_factor.
ComfyUI: `comfy.model_base.HunyuanImage21` (the HunyuanVideo DiT on 2-D latents): double blocks
with fused `img_attn.qkv` / `txt_attn.qkv`, single blocks with `linear1` = [q, k, v, mlp_in] and
`linear2`, and the text refiner's `txt_in.individual_token_refiner.blocks.{i}.self_attn.qkv`.

Refused: HunyuanImage-2.1-Distilled (MeanFlow: its velocity depends on the next step's time, which a
velocity v(x, t) does not know, and ComfyUI reads it from the sampler), the refiner (an
image-to-image model).
"""

from __future__ import annotations

import torch

from .base import Family, FamilyError, FamilyOptions
from .flux import flux_lora_map
from .lora_map import LoraMap, fused


def _hunyuan_image_map() -> LoraMap:
    """Flux.1's double and single blocks, and the text refiner's self-attention (selected by the same
    to_q / ... targets)."""
    dr, cr = "context_embedder.token_refiner.refiner_blocks.{i}.", "txt_in.individual_token_refiner.blocks.{i}."
    return LoraMap(flux_lora_map().modules + (
        fused(cr + "self_attn.qkv", dr + "attn.", ("to_q", "to_k", "to_v")),
        fused(cr + "self_attn.proj", dr + "attn.", ("to_out.0",)),
    ))


_DISTILLED = ("HunyuanImage-2.1-Distilled is a MeanFlow model: its prediction depends on the next sampling "
              "step's time as well as the current one, which FDFO's velocity v(x, t) does not have. Train the "
              "base HunyuanImage-2.1 and sample the LoRA on it")


def _trim(emb: torch.Tensor, mask: torch.Tensor, keep_one: bool):
    """Tokens [B, L, D] and mask [B, L] cut after the last valid token of the batch when every
    prompt is right-padded (always, from the pipeline's tokenizers); (None, None) for no valid
    token at all unless `keep_one`."""
    used = int(mask.sum(dim=1).max())
    if bool(mask[:, used:].any()):  # not right-padded: keep everything
        return emb, mask
    if used == 0 and not keep_one:
        return None, None
    used = max(used, 1)
    return emb[:, :used], mask[:, :used]


class HunyuanImage(Family):
    name = "hunyuan_image"
    title = "HunyuanImage 2.1"
    min_diffusers = ("0.36", "HunyuanImagePipeline first shipped in diffusers 0.36")
    diffusers_pipelines = ("HunyuanImagePipeline",)
    diffusers_transformers = ("HunyuanImageTransformer2DModel",)
    comfy_models = ("HunyuanImage21",)
    diffusers_needs_input = {"HunyuanImageRefinerPipeline": "an input image (the HunyuanImage 2.1 refiner)"}
    latent_patch = 1  # one token per latent cell of the 32x VAE
    lora_map = _hunyuan_image_map()
    # The pipeline pads prompts to 1000 Qwen tokens; the transformer only attends to the real ones.
    max_sequence_length = 1000
    preset_name = "hunyuan-image"
    # Native 2048 px (64 x 64 tokens of the 32x VAE, as Flux at 1024 px); 30 of the pipeline's 50 steps.
    preset = {"height": 2048, "width": 2048, "num_steps": 30}
    vram = ("17 B: ~34 GB in bf16, ~17 GB in fp8, + Qwen2.5-VL 7B (~15 GB, offloaded between phases). 48 GB: fp8 "
            "with storage_device cpu and gradient checkpointing; 80 GB: bf16 at 2048 px with gradient checkpointing "
            "(estimates from the parameter count, not measured)")

    def diffusers_check(self, pipe) -> None:
        super().diffusers_check(pipe)
        config = pipe.transformer.config
        if config.get("use_meanflow") or config.get("guidance_embeds"):
            raise FamilyError(_DISTILLED)

    def diffusers_text_encoders(self, pipe):
        return [m for m in (pipe.text_encoder, pipe.text_encoder_2) if m is not None]

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        # The Qwen part with our text length (the pipeline's encode_prompt fixes 1000), then the
        # pipeline's own glyph (ByT5) encoding for quoted text.
        emb, mask = pipe._get_qwen_prompt_embeds(
            tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, prompt=list(prompts), device=device,
            tokenizer_max_length=options.max_sequence_length, template=pipe.prompt_template_encode,
            drop_idx=pipe.prompt_template_encode_start_idx,
        )
        emb, mask, emb_2, mask_2 = pipe.encode_prompt(prompt=list(prompts), device=device, batch_size=len(prompts),
                                                      prompt_embeds=emb, prompt_embeds_mask=mask)
        return {"prompt_embeds": emb, "prompt_mask": mask.long(), "glyph_embeds": emb_2, "glyph_mask": mask_2.long()}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        # Masked tokens never reach the image (the transformer attends to the valid ones only), so
        # the padding beyond the batch's longest prompt (right-padded) and glyph text is dropped:
        # prompts are padded to 1000 Qwen tokens and 128 ByT5 tokens, which would dominate the cost.
        emb, mask = _trim(cond["prompt_embeds"], cond["prompt_mask"], keep_one=True)
        glyph, glyph_mask = _trim(cond["glyph_embeds"], cond["glyph_mask"], keep_one=False)
        return pipe.transformer(
            hidden_states=x, timestep=(t * 1000).to(x.dtype), encoder_hidden_states=emb, encoder_attention_mask=mask,
            encoder_hidden_states_2=glyph, encoder_attention_mask_2=glyph_mask, return_dict=False,
        )[0]

    def diffusers_decode(self, pipe, latents):
        vae = pipe.vae
        return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]

    def comfy_check(self, base) -> None:
        dm = base.diffusion_model
        if getattr(dm, "time_r_in", None) is not None or getattr(getattr(dm, "params", None), "guidance_embed", False):
            raise FamilyError(_DISTILLED + ".")


FAMILY = HunyuanImage()
