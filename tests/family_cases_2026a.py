"""Family cases of the 2026 families, part a (issue 26): Krea 2, ERNIE-Image, Kandinsky 5 (image),
LongCat-Image, Qwen-Image 2.1. Registered into the shared harness by one line in
tests/family_cases.py; the family quirks the shared checks cannot see are pinned in
tests/test_families_2026a.py.

None has a ComfyUI half: the ComfyUI versions FDFO is tested against (v0.3.64, v0.8.0) cannot load
these models in the form tested here.
"""

from __future__ import annotations

from family_cases import FamilyCase
from tiny_pipelines_2026a import composite_over_white
from tiny_pipelines_2026a import (
    tiny_ernie_image_pipeline,
    tiny_kandinsky5_t2i_pipeline,
    tiny_krea2_pipeline,
    tiny_longcat_image_pipeline,
    tiny_qwen_image21_pipeline,
)

def longcat_short_text(tmp, seed):
    """The tiny LongCat-Image pipeline with a fixed text length of 32 tokens (`tokenizer_max_length`,
    which also moves the image's RoPE offset; the family reads both from the pipeline)."""
    pipe = tiny_longcat_image_pipeline(tmp, seed)
    pipe.tokenizer_max_length = 32
    return pipe


CASES = [
    # Krea 2 guides whenever g > 0 (v_c + g (v_c - v_u)): "no CFG" is g = 0 and FDFO's cfg_scale is 1 + g.
    # 8 text tokens: each test prompt is 3 word tokens, so the in-template padding is exercised.
    FamilyCase("krea2", "krea2", lambda tmp, seed: tiny_krea2_pipeline(tmp, seed),
               pipeline_kwargs=lambda options: {"guidance_scale": 0.0},
               cfg_kwargs=lambda cfg: {"guidance_scale": cfg - 1},
               train=True, train_overrides={"epochs": 6}),
    # LongCat: the pipeline's prompt rewriting and CFG renormalisation off (FDFO does neither); its 512 text
    # tokens are fixed (the harness's max_sequence_length does not apply).
    FamilyCase("longcat-image", "longcat_image", lambda tmp, seed: tiny_longcat_image_pipeline(tmp, seed),
               pipeline_kwargs=lambda options: {"guidance_scale": 1.0, "enable_prompt_rewrite": False},
               cfg_kwargs=lambda cfg: {"guidance_scale": cfg, "enable_cfg_renorm": False},
               # (training with 32 text tokens instead of 512: the same model, ~10x less text to attend to)
               train=True, train_overrides={"epochs": 6}, train_pipeline=longcat_short_text),
    # ERNIE-Image: 16 px latent cells (Flux.2's VAE), no prompt enhancer; CFG g > 1 as usual.
    FamilyCase("ernie-image", "ernie_image", lambda tmp, seed: tiny_ernie_image_pipeline(tmp, seed),
               pipeline_kwargs=lambda options: {"guidance_scale": 1.0, "use_pe": False},
               cfg_kwargs=lambda cfg: {"guidance_scale": cfg}, latent_cell=16,
               train=True, train_overrides={"epochs": 6}),
    # Kandinsky 5: channel-last latents, decode without the VAE's shift; the test prompts are 3 word tokens each,
    # so the pipeline's batch (padded, unmasked) equals each prompt alone (tests/test_families_2026a.py: other lengths).
    FamilyCase("kandinsky5-image", "kandinsky5_image", lambda tmp, seed: tiny_kandinsky5_t2i_pipeline(tmp, seed),
               pipeline_kwargs=lambda options: {"guidance_scale": 1.0},
               cfg_kwargs=lambda cfg: {"guidance_scale": cfg},
               pipeline_images=lambda output: output.image,
               train=True, train_overrides={"epochs": 6}),
    # Qwen-Image 2.1: RGBA images (compared composited over white), 16x latents without packing (32 px sizes),
    # true CFG only with a negative prompt. Its Qwen3VLProcessor needs torchvision: skipped without it.
    FamilyCase("qwen-image21", "qwen_image21", lambda tmp, seed: tiny_qwen_image21_pipeline(tmp, seed),
               pipeline_kwargs=lambda options: {"true_cfg_scale": 1.0},
               # (its pipeline does not repeat a single negative prompt for the harness's batch of 2)
               cfg_kwargs=lambda cfg: {"true_cfg_scale": cfg, "negative_prompt": ["", ""]},
               pipeline_images=lambda output: composite_over_white(output.images),
               max_sequence_length=48,  # (the chat template's user and assistant markers count: 8 tokens)
               latent_cell=16, size_multiple=32, train=True, train_overrides={"epochs": 6}),
]
