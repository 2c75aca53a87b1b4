"""The `vram_gb` option (FDFO Training Options): memory settings for a budget, from fdfo_core.backends.memory.

ComfyUI's MODEL is not a diffusers model, so the estimate is made for the published model of the
same family and nearest size (`Family.published_models`, built on the meta device, which needs the
diffusers package), at the run's resolution and LoRA. The base weights' dtype is the loader's
(ComfyUI's `weight_dtype`: fp8 there means fp8 here); the node then chooses gradient checkpointing,
where the recorded states live and the micro-batch sizes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..fdfo_core.config import FDFOConfig
from ..fdfo_core.families import family_for_comfy_model
from ..fdfo_core.run.hooks import TrainingError
from .comfy_layers import linear_features, storage_dtype

#: How far (ratio of parameter counts) a published model may be from the loaded one to stand for it.
MAX_SIZE_RATIO = 1.25


def comfy_weight_kind(diffusion_model: torch.nn.Module) -> str:
    """"fp8" when the model's linear weights are stored in a float8 dtype (plain, scaled or
    quantized layers), else "auto"."""
    for m in diffusion_model.modules():
        if linear_features(m) is not None or isinstance(m, torch.nn.Linear):
            return "fp8" if "float8" in str(storage_dtype(m)) else "auto"
    return "auto"


def nearest_published(family, params: int):
    """The family's published model nearest in size to `params` (within MAX_SIZE_RATIO), or None."""
    best = None
    for m in family.published_models:
        ratio = max(params / (m.published_params_b * 1e9), m.published_params_b * 1e9 / params)
        if ratio <= MAX_SIZE_RATIO and (best is None or ratio < best[0]):
            best = (ratio, m)
    return best[1] if best else None


def choose_comfy_memory(model: Any, cfg: FDFOConfig, vram_gb: float) -> tuple[FDFOConfig, str]:
    """(config with the chosen memory settings, the message to log) for a ComfyUI MODEL; a
    TrainingError that says what to do when the model has no estimate or nothing fits."""
    from ..fdfo_core.backends.memory import MemoryBudgetError, choose_mode, measure_published

    base = model.model
    family = family_for_comfy_model(base)
    dm = base.diffusion_model
    params = sum(p.numel() for p in dm.parameters())
    published = nearest_published(family, params) if family is not None else None
    if published is None:
        known = ", ".join(f"{m.title} ({m.published_params_b:g} B)" for m in getattr(family, "published_models", ()))
        raise TrainingError(
            f"vram_gb: no memory estimate for this model ({type(base).__name__}, {params / 1e9:.2f} B parameters"
            + (f"; estimates exist for {known}" if known else "") + "). Set vram_gb to 0 and the memory options "
            "(gradient_checkpointing, storage_device, batch sizes) by hand.")
    try:
        mem = measure_published(published, family, cfg.height, cfg.width, lora_rank=cfg.lora_rank)
    except ImportError as e:
        raise TrainingError(f"vram_gb needs the diffusers package for its estimates ({e}); install it in ComfyUI's "
                            "python (pip install diffusers) or set vram_gb to 0 and the memory options by hand") from None
    weights = comfy_weight_kind(dm)
    try:
        plan = choose_mode(mem, vram_gb, cfg.pairs_per_epoch, cfg.num_steps, cfg.cfg_scale, cfg.sample_batch_size,
                           cfg.train_batch_size, cfg.decode_batch_size, base_weights=weights)
    except Exception as e:
        if isinstance(e, MemoryBudgetError) and weights != "fp8":
            raise TrainingError(f"{e} In ComfyUI, fp8 base weights are the loader's weight_dtype (fp8_e4m3fn).") from None
        raise TrainingError(str(e)) from None
    changes = {k: v for k, v in plan.mode.config_changes().items() if k != "base_weights"}
    message = (f"memory settings for {published.title}-sized {family.title} (estimated from its published config): "
               + plan.message())
    return cfg.replace(**changes).validate(), message


__all__ = ["choose_comfy_memory", "comfy_weight_kind", "nearest_published"]
