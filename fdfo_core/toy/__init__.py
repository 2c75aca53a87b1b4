"""The bundled toy text-to-image model: a tiny SD3-architecture pipeline pretrained on rendered
scenes of coloured shapes, with its caption grammar and prompt sets.

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
- the "toy_alignment" reward lives with the other rewards (`fdfo_core.rewards.toy_alignment`); it
  reads captions with this package's grammar.
- `pairwise_pixel_diversity(images)`, `prompt_diversity(images, prompts)`: diversity figures.
- `python -m fdfo_core.cli.toy_pretrain --out DIR`: rebuild the model from scratch.

Importing this package is cheap: diffusers and transformers load only when a model is built.
"""

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
    "ToyModelConfig",
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
