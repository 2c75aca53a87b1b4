"""The bundled toy text-to-image model: a tiny SD3-architecture pipeline pretrained on rendered
scenes of coloured shapes, with its caption grammar, a weight-free alignment reward and prompt sets.

It runs on a CPU in seconds and takes the same code path as real SD3 models (diffusers
`StableDiffusion3Pipeline`, ComfyUI's UNETLoader / VAELoader). See MODEL_CARD.md.

Entry points:
- `default_toy_model_path()`, `load_toy_pipeline(path=None)`: the shipped diffusers folder; call the
  pipeline with `max_sequence_length=TOY_MAX_SEQUENCE_LENGTH` and 64x64 images.
- `encode_toy_prompts(text_encoders, tokenizers, prompts)`: (prompt_embeds, pooled) as the
  pipeline's `encode_prompt`; ComfyUI conditioning is `[[prompt_embeds, {"pooled_output": pooled}]]`.
- `export_comfyui_files(models_dir)`, `comfyui_state_dicts()`: files / state dicts for ComfyUI.
- `sample_toy_prompts(n, split, seed)`, `toy_prompt_sets(n_train, n_heldout, seed)`: train and
  held-out captions.
- reward "toy_alignment" (registered with the reward registry); `alignment_scores(images, captions)`.
- `pairwise_pixel_diversity(images)`, `prompt_diversity(images, prompts)`: diversity figures.
- `python -m fdfo_core.toy.pretrain --out DIR`: rebuild the model from scratch.

Importing this package is cheap: diffusers and transformers load only when a model is built.
"""

from .alignment import ToyAlignment, alignment_checks, alignment_score, alignment_scores
from .comfy_export import ComfyUIFiles, comfyui_state_dicts, export_comfyui_files
from .diversity import pairwise_pixel_diversity, prompt_diversity
from .grammar import SceneSpec, parse_caption
from .model import (
    SD3_SCALING_FACTOR,
    SD3_SHIFT_FACTOR,
    TOY_MAX_SEQUENCE_LENGTH,
    ToyModelConfig,
    default_toy_model_path,
    encode_toy_prompts,
    load_toy_pipeline,
)
from .prompts import sample_toy_prompts, toy_prompt_sets

__all__ = [
    "ComfyUIFiles",
    "SD3_SCALING_FACTOR",
    "SD3_SHIFT_FACTOR",
    "SceneSpec",
    "TOY_MAX_SEQUENCE_LENGTH",
    "ToyAlignment",
    "ToyModelConfig",
    "alignment_checks",
    "alignment_score",
    "alignment_scores",
    "comfyui_state_dicts",
    "default_toy_model_path",
    "encode_toy_prompts",
    "export_comfyui_files",
    "load_toy_pipeline",
    "pairwise_pixel_diversity",
    "parse_caption",
    "prompt_diversity",
    "sample_toy_prompts",
    "toy_prompt_sets",
]
