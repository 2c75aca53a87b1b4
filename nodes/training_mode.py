"""ComfyUI in training mode while the pack samples and differentiates a model.

ComfyUI's diffusion models are written for inference. Since comfy-kitchen (ComfyUI v0.8.0), some
of their operations run fused kernels that have no autograd formula: Flux-style RoPE
(`comfy.ldm.flux.math.apply_rope` / `apply_rope1`, used by Flux, Chroma, HiDream, Qwen-Image,
Wan, Lumina 2 / Z-Image, Kandinsky 5, HunyuanImage) is `comfy_kitchen.apply_rope` /
`apply_rope1`, and a backward pass through it fails with "Trying to backward through
comfy_kitchen.apply_rope1.default but no autograd formula was registered".

Newer ComfyUI (after v0.8.0; read in its `comfy/ldm/flux/math.py`, `comfy/ldm/lumina/model.py`,
`comfy/model_management.py`) has a flag, `comfy.model_management.in_training`: while it is True
the models take eager, differentiable code paths instead of those kernels (RoPE, fused RMS norm +
RoPE, fused AdaLN, in-place residuals); ComfyUI's own LoRA trainer sets it around its loop.
v0.8.0 has no such flag: there the kernel is bound directly as a module attribute
(`apply_rope1 = comfy.quant_ops.ck.apply_rope1`, and `from comfy.ldm.flux.math import apply_rope1`
in each model module).

`training_mode()` covers both:
- it sets `comfy.model_management.in_training = True` where the flag exists;
- every module attribute that *is* one of comfy-kitchen's fused ops without autograd
  (`FUSED_OPS`) is pointed at the eager equivalent below while the context is open;
and restores both on exit, also on error or cancel. The eager code computes the same function
(the kernels' forward agrees with it to float rounding; tests/test_training_mode.py and the
ComfyUI-gated family gradient checks).

The pack uses it for whole backend sessions, sampling included, so the trajectories it records
and the velocities it differentiates come from the same code (at the start of an epoch the
trained velocity equals the recorded one, ratio 1, as the objective assumes), and the Paired
Sampler draws the trainer's pairs exactly. ComfyUI's own samplers (KSampler on the trained MODEL)
run outside it with the inference kernels.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator

import torch

log = logging.getLogger("fdfo")


# --- eager, differentiable equivalents of the fused kernels ----------------------------------------


def rope1(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding as Flux defines it (Black Forest Labs' flux `math.py`).

    x: [..., L, D] queries or keys (D even: pairs (x_2i, x_2i+1) are rotated);
    freqs_cis: [..., L, D / 2, 2, 2] real rotation matrices ((cos, -sin), (sin, cos)) broadcast
    against x's leading dims, float32. Returns x's shape and dtype; computed in freqs_cis' dtype.
    """
    pairs = x.to(freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    rotated = freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]
    return rotated.reshape(*x.shape).type_as(x)


def rope(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope1` on queries and keys: ([..., L, D], [..., L, D])."""
    return rope1(xq, freqs_cis), rope1(xk, freqs_cis)


#: comfy-kitchen's fused inference ops that have no autograd formula -> eager equivalents.
#: (Newer fused ops - rms_rope, rms_rope_split_half, adaln - are only reached by ComfyUI code
#: that checks `in_training` first, which `training_mode` sets.)
FUSED_OPS: dict[str, Callable] = {"apply_rope": rope, "apply_rope1": rope1}


def comfy_kitchen():
    """The comfy-kitchen module ComfyUI uses (`comfy.quant_ops.ck`), or None (ComfyUI < 0.8 or
    kitchen failed to import). Looked up, never imported: if ComfyUI has not imported it, no
    model calls it."""
    quant_ops = sys.modules.get("comfy.quant_ops")
    return getattr(quant_ops, "ck", None) if quant_ops is not None else None


def fused_kernels() -> dict[int, tuple[str, Callable]]:
    """id(kernel) -> (op name, eager equivalent) for the fused ops present in this ComfyUI."""
    ck = comfy_kitchen()
    found = {}
    for name, eager in FUSED_OPS.items():
        kernel = getattr(ck, name, None) if ck is not None else None
        if kernel is not None and kernel is not eager:
            found[id(kernel)] = (name, eager)
    return found


def _route(kernels: dict[int, tuple[str, Callable]]) -> list[tuple[dict, str, Callable]]:
    """Point every module attribute that is one of `kernels` at its eager equivalent; returns
    [(module __dict__, attribute, original)] to undo it."""
    if not kernels:
        return []
    routed = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attribute, value in list(namespace.items()):
            hit = kernels.get(id(value))
            if hit is not None and callable(value):
                namespace[attribute] = hit[1]
                routed.append((namespace, attribute, value))
    return routed


@contextlib.contextmanager
def training_mode() -> Iterator[list[str]]:
    """ComfyUI in training mode for the duration of the block (see the module docstring).

    Yields the routed attributes ("module.attribute") for logging and tests. Nesting is safe:
    an inner block finds the attributes already routed and the flag already on, and leaves both
    as it found them. Not thread-safe against another thread running ComfyUI models at the same
    time (ComfyUI runs one prompt at a time)."""
    mm = sys.modules.get("comfy.model_management")
    has_flag = mm is not None and hasattr(mm, "in_training")
    previous = mm.in_training if has_flag else None
    routed = _route(fused_kernels())
    names = sorted(f"{ns.get('__name__', '?')}.{attr}" for ns, attr, _ in routed)
    if routed:
        log.debug("FDFO: routing comfy-kitchen kernels to eager code while training: %s", ", ".join(names))
    try:
        if has_flag:
            mm.in_training = True
        yield names
    finally:
        if has_flag:
            mm.in_training = previous
        for namespace, attribute, original in reversed(routed):
            namespace[attribute] = original
