"""fp8 storage of a diffusers transformer's frozen weights, through diffusers' layerwise casting.

Each linear / conv layer keeps its weight in float8_e4m3fn (1 byte per parameter) and is cast to
the compute dtype (bf16 on a GPU, fp32 on a CPU) just before its forward and back after it
(`diffusers.hooks.apply_layerwise_casting`, a maintained implementation; no kernels of ours).
Kept in their dtype: what each diffusers model class declares precision-sensitive
(`_skip_layerwise_casting_patterns`, e.g. Wan's condition embedder, Z-Image's `t_embedder` /
`cap_embedder`, and `_keep_in_fp32_modules`), exactly as `ModelMixin.enable_layerwise_casting`
adds them, plus our own list: norms, the patch / position embedding, `proj_in` / `proj_out`,
convolutions (`FP8_SKIP_CLASSES`) and the LoRA's own layers (fp32 master weights being trained). Dropping the model's own patterns
stores e.g. Wan's timestep projection in fp8 while the model feeds it a float32 input: "mat1 and
mat2 must have the same dtype" at the first velocity (tests/test_families.py runs fp8 on every
family).

Cost: e4m3 keeps 3 mantissa bits, so each weight moves by up to 1/16 of itself (relative
rounding 2^-4); the model's outputs move by a few per cent (measured on the test models) and the
LoRA trained on it differs from the bf16 / fp32 one accordingly (tests/test_memory_modes.py
states the tolerance). In training without gradient checkpointing autograd keeps each layer's
upcast weight for the backward pass, so fp8 saves memory mainly with gradient checkpointing on
(see fdfo_core/backends/memory.py).
"""

from __future__ import annotations

import torch

#: Modules kept in their dtype whatever the model: diffusers' defaults plus the LoRA's layers.
FP8_SKIP_PATTERNS = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$", "lora_")
FP8_DTYPE = torch.float8_e4m3fn
#: Convolutions keep their dtype: a convolution's backward reads the module's weight after the
#: hook has cast it back to fp8 ("expected scalar type Float but found Float8_e4m3fn", Sana's
#: GLUMBConv), and the memory estimate (`memory.linear_parameter_count`) counts linear layers only.
FP8_SKIP_CLASSES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def fp8_skip_patterns(transformer: torch.nn.Module | type) -> tuple[str, ...]:
    """The module-name patterns (regular expressions, matched with `re.search`) kept out of fp8
    for this diffusers transformer (an instance or its class): our FP8_SKIP_PATTERNS plus the
    class's `_skip_layerwise_casting_patterns` and `_keep_in_fp32_modules`, in that order,
    without repeats."""
    out = list(FP8_SKIP_PATTERNS)
    for name in ("_skip_layerwise_casting_patterns", "_keep_in_fp32_modules"):
        for pattern in getattr(transformer, name, None) or ():
            if pattern not in out:
                out.append(pattern)
    return tuple(out)


def enable_fp8_storage(transformer: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Store the frozen weights of `transformer` in fp8, computing in `compute_dtype` (call after
    the LoRA is attached, before moving the model to the device: the cast happens here, on the
    weights' current device). The modules `fp8_skip_patterns` names keep their dtype."""
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(transformer, storage_dtype=FP8_DTYPE, compute_dtype=compute_dtype,
                            skip_modules_pattern=fp8_skip_patterns(transformer), skip_modules_classes=FP8_SKIP_CLASSES)


def fp8_available() -> bool:
    """Whether this torch has float8_e4m3fn tensors (torch >= 2.1)."""
    return hasattr(torch, "float8_e4m3fn")
