"""The toy SD3-architecture model: its configuration, component builders, loading and prompt encoding.

Shapes (defaults of `ToyModelConfig`):
- images 64x64 RGB -> latents [16, 8, 8] (AutoencoderTiny, ComfyUI's TAESD layout);
- MMDiT with hidden 64 * depth and `depth` heads (the only tiny shapes ComfyUI's model
  detection accepts), patch 2, so 16 image tokens;
- two small CLIP text encoders with projection, 16 tokens each; their penultimate hidden states
  are concatenated to `prompt_embeds` [B, 16, 128] (plus `max_sequence_length` zero "T5" tokens,
  which the pipeline appends because there is no T5; the model was trained with
  TOY_MAX_SEQUENCE_LENGTH = 0 of them) and their projections to `pooled` [B, 128].
- latents in ComfyUI's SD3 convention: the transformer sees (raw - 0.0609) * 1.5305.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

#: ComfyUI's SD3 latent format (comfy/latent_formats.py): model latent = (raw - SHIFT) * SCALE.
SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609
#: Zero "T5" tokens the pipeline appends (it has no T5). The toy model was trained with none:
#: always pass `max_sequence_length=TOY_MAX_SEQUENCE_LENGTH` to the pipeline. Its default, 256,
#: appends 256 zero tokens the model never saw (wrong images, ~10x slower); 0 instead of 16
#: makes every transformer call ~25 % cheaper on CPU (16 image + 16 text tokens).
TOY_MAX_SEQUENCE_LENGTH = 0


@dataclass(frozen=True)
class ToyModelConfig:
    # MMDiT: ComfyUI detects depth as hidden // 64 and uses depth heads of 64 channels.
    depth: int = 3
    patch_size: int = 2
    sample_size: int = 8  # latent side: 64 px / 8
    # 16x16 patches of position table: enough for 256x256 images, small on disk (the default 96 is 7 MB).
    pos_embed_max_size: int = 16
    latent_channels: int = 16
    # CLIP text encoders (SD3 needs two): tiny, one token per caption word.
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate: int = 256
    text_projection: int = 64
    text_max_length: int = 16
    # Flow-matching timestep shift of the shipped scheduler (ComfyUI's SD3 default is also 3.0).
    shift: float = 3.0

    @property
    def hidden(self) -> int:
        return 64 * self.depth

    @property
    def joint_attention_dim(self) -> int:
        return 2 * self.text_hidden

    @property
    def pooled_projection_dim(self) -> int:
        return 2 * self.text_projection


def build_transformer(cfg: ToyModelConfig):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=cfg.sample_size,
        patch_size=cfg.patch_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        num_layers=cfg.depth,
        attention_head_dim=64,
        num_attention_heads=cfg.depth,
        joint_attention_dim=cfg.joint_attention_dim,
        caption_projection_dim=cfg.hidden,
        pooled_projection_dim=cfg.pooled_projection_dim,
        pos_embed_max_size=cfg.pos_embed_max_size,
    )


def zero_init_modulation(transformer) -> None:
    """DiT-style init: zero every adaptive-norm modulation and the output projection, so each block
    starts as the identity and the model starts by predicting 0 (trains faster from scratch)."""
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and (
            name.endswith("norm1.linear") or name.endswith("norm1_context.linear") or name == "norm_out.linear" or name == "proj_out"
        ):
            torch.nn.init.zeros_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def build_vae(cfg: ToyModelConfig):
    """AutoencoderTiny in the default TAESD layout (ComfyUI's VAELoader rebuilds exactly this)."""
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(
        latent_channels=cfg.latent_channels,
        scaling_factor=SD3_SCALING_FACTOR,
        shift_factor=SD3_SHIFT_FACTOR,
    )


def build_text_encoder(cfg: ToyModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        projection_dim=cfg.text_projection,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.text_max_length,
        hidden_act="gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    return CLIPTextModelWithProjection(config)


def build_scheduler(cfg: ToyModelConfig):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift)


def default_toy_model_path() -> Path:
    """The shipped toy pipeline folder (diffusers `save_pretrained` layout)."""
    path = Path(__file__).resolve().parent / "weights"
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the toy model is missing from {path}: reinstall comfyui-fdfo, or rebuild it with "
            "`python -m fdfo_core.cli.toy_pretrain --out <dir>` and pass that folder instead"
        )
    return path


def load_toy_pipeline(path: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load the toy `StableDiffusion3Pipeline` (weights are stored in fp16; computed in `dtype`).

    Call it with `max_sequence_length=TOY_MAX_SEQUENCE_LENGTH`, 64x64 images, e.g.
    `pipe(prompts, num_inference_steps=20, guidance_scale=4.0, max_sequence_length=TOY_MAX_SEQUENCE_LENGTH)`.
    """
    from diffusers import StableDiffusion3Pipeline

    path = Path(path) if path is not None else default_toy_model_path()
    with warnings.catch_warnings():
        # diffusers >= 0.36 prefers `dtype=`; older releases only know `torch_dtype=`.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*")
        warnings.filterwarnings("ignore", message=".*Expected types for vae.*")
        pipe = StableDiffusion3Pipeline.from_pretrained(str(path), text_encoder_3=None, tokenizer_3=None, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def encode_toy_prompts(
    text_encoders: Sequence[torch.nn.Module],
    tokenizers: Sequence,
    prompts: Sequence[str] | str,
    max_sequence_length: int = TOY_MAX_SEQUENCE_LENGTH,
    joint_attention_dim: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text conditioning exactly as `StableDiffusion3Pipeline.encode_prompt` builds it without T5.

    Returns `prompt_embeds` [B, L + max_sequence_length, D] (each CLIP's penultimate hidden
    states, concatenated along channels, zero-padded to `joint_attention_dim`, then
    `max_sequence_length` zero tokens) and `pooled` [B, P] (the CLIP projections, concatenated).
    For ComfyUI: `[[prompt_embeds, {"pooled_output": pooled}]]`.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if len(text_encoders) != 2 or len(tokenizers) != 2:
        raise ValueError(
            f"the SD3 layout needs exactly two CLIP text encoders and two tokenizers, got "
            f"{len(text_encoders)} and {len(tokenizers)}"
        )
    device = torch.device(device) if device is not None else next(text_encoders[0].parameters()).device
    dtype = next(text_encoders[0].parameters()).dtype
    hidden, pooled = [], []
    with torch.no_grad():
        for enc, tok in zip(text_encoders, tokenizers):
            ids = tok(
                prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(device)
            out = enc(ids, output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2].to(dtype))
    clip = torch.cat(hidden, dim=-1)
    dim = joint_attention_dim if joint_attention_dim is not None else clip.shape[-1]
    if dim < clip.shape[-1]:
        raise ValueError(f"joint_attention_dim {dim} is smaller than the CLIP hidden sizes' sum {clip.shape[-1]}")
    clip = torch.nn.functional.pad(clip, (0, dim - clip.shape[-1]))
    t5 = torch.zeros(len(prompts), max_sequence_length, dim, device=device, dtype=dtype)
    return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)
