"""What ComfyUI's LoRA loaders do to a LoRA on fp8 weights, measured on the trained LoRA.

The Trainer's MODEL, previews and held-out figures apply the LoRA exactly: its weight function adds
dW to the (dequantized) weight in the compute dtype. The stock loaders (LoraLoaderModelOnly,
`comfy.sd.load_lora_for_models`) do the same for layers ComfyUI loads partially (lowvram: the patch
is applied when the weight is cast, e.g. on the CPU), but merge into the layers it loads whole (a
model that fits the GPU): for an fp8 weight they compute W + dW in float and round the sum back to
the layer's fp8 grid with stochastic rounding (ComfyUI's
`ModelPatcher.patch_weight_to_device` -> `comfy.float.stochastic_rounding(value, dtype,
seed=string_to_seed(key))`; scaled-fp8 layers round (W + dW) / s and keep s). An fp8 step is
2^-3 of the weight's magnitude (e4m3), usually far larger than a LoRA's change, so the loaded
LoRA carries its change only on average, with rounding noise on top.

`loader_rounding(adapters, diffusion_model)` emulates that rounding on every fp8 weight the LoRA
targets (with the loader's own seeds where this ComfyUI has them) and reports the noise against
the LoRA's change; `rounding_note` turns it into the line the Trainer logs and shows. Emulating
the loader inside every preview (re-rounding each targeted weight at each sampling step, or
keeping a rounded copy of them) would cost a second model's memory or time; the figure says
instead how far the previews can be from what the loaded file gives.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .comfy_layers import dequantized_weight, is_quantized, post_function_scale, storage_dtype

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass(frozen=True)
class RoundingReport:
    """The stock loader's fp8 rounding of a LoRA, over the fp8 layers it targets.

    layers: fp8 layers the LoRA targets (of `targets` LoRA layers); dtype: their fp8 format;
    noise_to_change: ||round(W + dW) - (W + dW)|| / ||dW|| (Frobenius, summed over the layers);
    below_half_step: fraction of the weights whose change |dW| is under half an fp8 step there
    (carried by the rounding only on average); stochastic: rounded with ComfyUI's own stochastic
    rounding and seeds (else round-to-nearest, an estimate)."""

    layers: int
    targets: int
    dtype: str
    noise_to_change: float
    below_half_step: float
    stochastic: bool


def _rounder() -> tuple[Callable | None, Callable | None]:
    """ComfyUI's (stochastic_rounding, string_to_seed) where loaded, else (None, None)."""
    cf, mp = sys.modules.get("comfy.float"), sys.modules.get("comfy.model_patcher")
    sr = getattr(cf, "stochastic_rounding", None) if cf is not None else None
    seed = getattr(mp, "string_to_seed", None) if mp is not None else None
    return (sr, seed) if callable(sr) and callable(seed) else (None, None)


def _grid_scale(module: torch.nn.Module, weight: torch.Tensor) -> float:
    """s such that the stored fp8 values are W / s: the scaled-fp8 scale, a quantized tensor's
    per-tensor scale (read as |W|max / |q|max), else 1."""
    scale = post_function_scale(module)
    if scale is not None:
        return float(scale.float().reshape(-1)[0])
    raw = module.weight
    if is_quantized(raw):
        for name in ("_qdata", "qdata"):
            q = getattr(raw, name, None)
            if isinstance(q, torch.Tensor) and q.numel():
                qmax = float(q.float().abs().max())
                return float(weight.abs().max()) / qmax if qmax > 0 else 1.0
    return 1.0


def _step(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of the fp8 grid at `values` (float32, same shape)."""
    info = torch.finfo(dtype)
    mantissa = 3 if dtype == torch.float8_e4m3fn else 2
    exponent = torch.floor(torch.log2(values.abs().clamp_min(info.smallest_normal)))
    return torch.exp2(exponent - mantissa)


@torch.no_grad()
def loader_rounding(adapters: Mapping[str, object], diffusion_model: torch.nn.Module) -> RoundingReport | None:
    """Emulate the stock loader's fp8 rounding of the LoRA (see the module docstring).

    adapters: module name (in `diffusion_model`) -> adapter with `delta()` (the fp32 update [out,
    in] in the layer's true units). Returns None when no targeted layer is stored in fp8."""
    sr, seed_of = _rounder()
    noise2 = change2 = 0.0
    below = total = layers = 0
    dtypes = set()
    for name, adapter in adapters.items():
        module = diffusion_model.get_submodule(name)
        dtype = storage_dtype(module)
        if dtype not in FP8:
            continue
        weight = dequantized_weight(module).float()
        s = _grid_scale(module, weight)
        if post_function_scale(module) is not None:
            weight = weight * s  # the layer's true weight W = s W_raw
        delta = adapter.delta().detach().float().to(weight.device).reshape(weight.shape)
        merged = (weight + delta) / s
        if sr is not None:
            rounded = sr(merged, dtype, seed=seed_of(f"diffusion_model.{name}.weight")).float()
        else:
            rounded = merged.to(dtype).float()
        noise2 += float(((rounded - merged) * s).square().sum())
        change2 += float(delta.square().sum())
        below += int((delta.abs() < 0.5 * s * _step(merged, dtype)).sum())
        total += delta.numel()
        layers += 1
        dtypes.add(str(dtype).removeprefix("torch."))
    if not layers:
        return None
    return RoundingReport(layers=layers, targets=len(adapters), dtype="/".join(sorted(dtypes)),
                          noise_to_change=math.sqrt(noise2 / change2) if change2 > 0 else math.inf,
                          below_half_step=below / max(total, 1), stochastic=sr is not None)


def rounding_note(report: RoundingReport | None) -> str | None:
    """The line for the Trainer's log and summary, or None for a model without fp8 weights."""
    if report is None:
        return None
    how = "stochastic rounding, the loader's seeds" if report.stochastic else "estimated with round-to-nearest"
    return (f"fp8 weights ({report.dtype}, {report.layers} of {report.targets} LoRA layers): the previews and held-out "
            f"figures apply this LoRA exactly. Where ComfyUI's LoRA loaders merge it into the fp8 weights (layers "
            f"loaded whole onto the GPU; layers it loads partially get it exactly, as here), they round W + dW back to "
            f"fp8: noise of {report.noise_to_change:.2f}x the LoRA's change ({how}; "
            f"{100 * report.below_half_step:.0f} % of the changes are under half an fp8 step and survive only on "
            f"average), so images from the loaded file can differ from the previews by about that much. A 16-bit "
            f"weight_dtype avoids it.")


def backend_rounding_note(backend) -> str | None:
    """`rounding_note` for a ComfyBackend in a training session (its `adapters` on the layers of
    `base.diffusion_model`); None without fp8 targets, or for a backend that has no ComfyUI LoRA
    layers (the node tests' stand-in backend)."""
    adapters = getattr(backend, "adapters", None)
    model = getattr(getattr(backend, "base", None), "diffusion_model", None)
    if not adapters or not isinstance(model, torch.nn.Module):
        return None
    return rounding_note(loader_rounding(adapters, model))
