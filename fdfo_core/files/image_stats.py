"""Image statistics that show reward hacking before a judge does (cheap: no model).

A reward pushed too far often changes plain statistics of the images first: a share of the
pixels goes to pure black or white, colours saturate or collapse onto few values, textures turn
into noise or flat areas. The held-out evaluation (guardrails.py) measures, on every held-out
image, and averages over the images:

- `near_black`: share of pixels whose luma Y < NEAR_BLACK (0.05);
- `near_white`: share of pixels with Y > NEAR_WHITE (0.95);
- `saturation`: mean HSV saturation (max(R,G,B) - min(R,G,B)) / max(R,G,B), 0 for black;
- `colour_entropy`: Shannon entropy in bits of the image's colours quantised to COLOUR_LEVELS
  levels per channel (8: 512 bins; at most 9 bits), the histogram of its own pixels;
- `edge_density`: share of pixels whose Sobel gradient magnitude of Y (on [0, 1] pixels, the
  kernel normalised by 1/8 so a step from 0 to 1 gives 0.5) exceeds EDGE_THRESHOLD (0.1).

Y is Rec. 709 luma of the (gamma-encoded) RGB values, Y = 0.2126 R + 0.7152 G + 0.0722 B.
`shift_from_base` scales each statistic's change from the base model to its range (shares and
saturation by 1, entropy by its maximum), so one bound can govern all five (early stop's
`early_stop_max_image_shift`).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

NEAR_BLACK = 0.05
NEAR_WHITE = 0.95
COLOUR_LEVELS = 8
EDGE_THRESHOLD = 0.1
LUMA = (0.2126, 0.7152, 0.0722)
#: The statistics, in the order logged and plotted.
STAT_NAMES = ("near_black", "near_white", "saturation", "colour_entropy", "edge_density")
#: Each statistic's range, which `shift_from_base` divides by.
STAT_RANGES = {"near_black": 1.0, "near_white": 1.0, "saturation": 1.0,
               "colour_entropy": 3 * math.log2(COLOUR_LEVELS), "edge_density": 1.0}


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] images in [0, 1] -> float64 [N, 3, H, W] (grey repeated, alpha dropped)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"image statistics need images [N, 1|3|4, H, W], got shape {tuple(images.shape)}")
    x = images.detach().to("cpu", torch.float64).clamp(0, 1)
    return x[:, :3] if x.shape[1] >= 3 else x.expand(-1, 3, -1, -1)


def per_image_statistics(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each statistic of each image: {name: float64 [N]} (see the module docstring).

    images: [N, 1|3|4, H, W] in [0, 1]. Raises ValueError for other shapes."""
    x = _rgb(images)
    n = x.shape[0]
    y = sum(w * x[:, c] for c, w in enumerate(LUMA))  # [N, H, W]
    hi, lo = x.max(dim=1).values, x.min(dim=1).values
    sat = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))
    q = (x * COLOUR_LEVELS).floor().clamp(max=COLOUR_LEVELS - 1).long()
    codes = (q[:, 0] * COLOUR_LEVELS + q[:, 1]) * COLOUR_LEVELS + q[:, 2]  # [N, H, W]
    bins = COLOUR_LEVELS ** 3
    entropy = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        p = torch.bincount(codes[i].flatten(), minlength=bins).double()
        p = p[p > 0] / p.sum()
        entropy[i] = float(-(p * p.log2()).sum()) if p.numel() > 1 else 0.0
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64) / 8
    kernels = torch.stack([sobel_x, sobel_x.T]).unsqueeze(1)  # [2, 1, 3, 3]
    grad = F.conv2d(F.pad(y.unsqueeze(1), (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = grad.pow(2).sum(dim=1).sqrt()  # [N, H, W]
    return {
        "near_black": (y < NEAR_BLACK).double().flatten(1).mean(1),
        "near_white": (y > NEAR_WHITE).double().flatten(1).mean(1),
        "saturation": sat.flatten(1).mean(1),
        "colour_entropy": entropy,
        "edge_density": (magnitude > EDGE_THRESHOLD).double().flatten(1).mean(1),
    }


def image_statistics(images: torch.Tensor) -> dict[str, float]:
    """The mean of each statistic over the images: {name: float} in STAT_NAMES order."""
    per = per_image_statistics(images)
    return {k: float(per[k].mean()) for k in STAT_NAMES}


def shift_from_base(stats: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """|stat - base| / range for each statistic both have (0 = unchanged, 1 = across the whole range)."""
    return {k: abs(float(stats[k]) - float(base[k])) / STAT_RANGES[k] for k in STAT_NAMES if k in stats and k in base}


def largest_shift(stats: Mapping[str, float], base: Mapping[str, float]) -> tuple[str, float] | None:
    """The statistic that moved most from the base model's (by `shift_from_base`), or None."""
    shifts = shift_from_base(stats, base)
    if not shifts:
        return None
    name = max(shifts, key=lambda k: shifts[k])
    return name, shifts[name]


__all__ = ["COLOUR_LEVELS", "EDGE_THRESHOLD", "NEAR_BLACK", "NEAR_WHITE", "STAT_NAMES", "STAT_RANGES", "image_statistics",
           "largest_shift", "per_image_statistics", "shift_from_base"]
