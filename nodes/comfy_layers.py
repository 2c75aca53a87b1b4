"""What a ComfyUI layer does, read from the layer rather than from its class.

ComfyUI's linear layers are not all `torch.nn.Linear`: quantized checkpoints load as
`MixedPrecisionOps.Linear` (ComfyUI >= 0.8: a `torch.nn.Module` whose weight is a
`QuantizedTensor`; scaled-fp8 files are converted to it on load), and newer formats (mxfp8,
nvfp4, int8, ...) use the same layer. What the pack needs from a layer is what it does: it is a
ComfyUI op (a `weight_function` list that ComfyUI applies to the weight before the forward
pass, which is how LoRAs enter it, ours included) and a linear map `in_features -> out_features`.

Scaled fp8 (ComfyUI v0.3.64's `scaled_fp8_ops`): the layer stores W_raw in fp8 and a scalar
`scale_weight` s; the forward pass multiplies what the weight functions return by s. The stock
LoRA loader converts first (W = s W_raw), adds the file's dW and converts back, so a file acts
as W + dW. A weight function that added dW to W_raw would act as W + s dW instead:
`post_function_scale` gives s for such layers, and the pack adds dW / s there. Layers that
dequantize before the weight functions (ComfyUI >= 0.8) need no correction.
"""

from __future__ import annotations

import torch


def linear_features(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a ComfyUI linear op, whatever its class; None for other
    modules (convolutions, norms, embeddings, containers, plain torch layers without ComfyUI's
    weight functions)."""
    if not isinstance(getattr(module, "weight_function", None), list):
        return None
    n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if not isinstance(n_in, int) or not isinstance(n_out, int):
        return None
    weight = getattr(module, "weight", None)
    if weight is None or weight.ndim != 2 or isinstance(module, torch.nn.modules.conv._ConvNd):
        return None
    return n_in, n_out


def is_quantized(weight: torch.Tensor) -> bool:
    """A weight stored in a quantized tensor type (ComfyUI's QuantizedTensor and its kind)."""
    return type(weight) is not torch.Tensor and type(weight) is not torch.nn.Parameter and hasattr(weight, "dequantize")


def post_function_scale(module: torch.nn.Module) -> torch.Tensor | None:
    """The factor s the layer multiplies the weight functions' output by (v0.3.64 scaled fp8:
    `scale_weight`), or None when the weight functions see the layer's true weight."""
    scale = getattr(module, "scale_weight", None)
    weight = getattr(module, "weight", None)
    if not isinstance(scale, torch.Tensor) or weight is None or is_quantized(weight):
        return None
    return scale


def storage_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype a layer's weight is stored in (the quantized storage for quantized weights)."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    if is_quantized(weight):
        for name in ("_qdata", "qdata"):
            data = getattr(weight, name, None)
            if isinstance(data, torch.Tensor):
                return data.dtype
        return torch.float8_e4m3fn if "8" in str(getattr(weight, "_layout_type", "") or getattr(weight, "layout_type", "")) else None
    return weight.dtype


def dequantized_weight(module: torch.nn.Module) -> torch.Tensor:
    """The layer's stored weight as a plain tensor (dequantized for quantized weights), detached."""
    weight = module.weight.detach()
    return weight.dequantize() if is_quantized(weight) else weight
