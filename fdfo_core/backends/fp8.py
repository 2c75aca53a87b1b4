"""fp8 storage of a diffusers transformer's frozen weights, through diffusers' layerwise casting.

Each linear / conv layer keeps its weight in float8_e4m3fn (1 byte per parameter) and is cast to
the compute dtype (bf16 on a GPU, fp32 on a CPU) just before its forward and back after it
(`diffusers.hooks.apply_layerwise_casting`, a maintained implementation; no kernels of ours).
Norms, embeddings, the patch / position embedding, `proj_in` / `proj_out` and the LoRA's own
layers (fp32 master weights being trained) keep their dtype.

Cost: e4m3 keeps 3 mantissa bits, so each weight moves by up to 1/16 of itself (relative
rounding 2^-4); the model's outputs move by a few per cent (measured on the test models) and the
LoRA trained on it differs from the bf16 / fp32 one accordingly (tests/test_memory_modes.py
states the tolerance). In training without gradient checkpointing autograd keeps each layer's
upcast weight for the backward pass, so fp8 saves memory mainly with gradient checkpointing on
(see fdfo_core/backends/memory.py).
"""

from __future__ import annotations

import torch

#: Modules kept in their dtype: diffusers' defaults plus the LoRA's layers.
FP8_SKIP_PATTERNS = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$", "lora_")
FP8_DTYPE = torch.float8_e4m3fn


def enable_fp8_storage(transformer: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Store the frozen weights of `transformer` in fp8, computing in `compute_dtype` (call after
    the LoRA is attached, before moving the model to the device: the cast happens here, on the
    weights' current device)."""
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(transformer, storage_dtype=FP8_DTYPE, compute_dtype=compute_dtype,
                            skip_modules_pattern=FP8_SKIP_PATTERNS)


def fp8_available() -> bool:
    """Whether this torch has float8_e4m3fn tensors (torch >= 2.1)."""
    return hasattr(torch, "float8_e4m3fn")
