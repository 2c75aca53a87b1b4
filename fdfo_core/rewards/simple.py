"""Weight-free image statistics as rewards (cheap, deterministic, no downloads)."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .base import Reward
from .registry import register_reward

# Rec. 601 luma weights: the brightness a viewer perceives, not the plain channel mean.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


class Brightness(Reward):
    name = "brightness"
    differentiable = True

    def _score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return torch.einsum("nchw,c->n", images, _LUMA.to(images)) / (images.shape[2] * images.shape[3])


class Saturation(Reward):
    name = "saturation"
    differentiable = True

    def _score(self, images, prompts):
        # HSV saturation (max - min) / max, averaged over pixels; eps keeps black pixels at 0.
        mx = images.amax(dim=1)
        mn = images.amin(dim=1)
        return ((mx - mn) / (mx + 1e-6)).mean(dim=(1, 2))


class Colourfulness(Reward):
    """Hasler and Suesstrunk (2003) colourfulness on 0-255 RGB (about 0 for grey, >100 for vivid)."""

    name = "colourfulness"
    differentiable = True

    def _score(self, images, prompts):
        x = images * 255.0
        rg = x[:, 0] - x[:, 1]
        yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
        std = torch.sqrt(rg.flatten(1).var(dim=1, unbiased=False) + yb.flatten(1).var(dim=1, unbiased=False))
        mean = torch.sqrt(rg.flatten(1).mean(dim=1) ** 2 + yb.flatten(1).mean(dim=1) ** 2)
        return std + 0.3 * mean


def _jpeg_kilobytes(image: torch.Tensor, quality: int) -> float:
    arr = (image.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


class JpegSize(Reward):
    """JPEG file size in kB (DDPO's compressibility task, with the sign chosen by `sign`)."""

    def __init__(self, sign: float, quality: int = 95, micro_batch: int = 64, device=None):
        super().__init__(micro_batch=micro_batch, device=device)
        self.sign = sign
        self.quality = quality
        self.name = "jpeg_compressibility" if sign < 0 else "jpeg_incompressibility"

    def _score(self, images, prompts):
        return torch.tensor([self.sign * _jpeg_kilobytes(im, self.quality) for im in images])


@register_reward("brightness", "mean luma of the image, 0 (black) to 1 (white)")
def _brightness(micro_batch: int = 64, device=None) -> Reward:
    return Brightness(micro_batch=micro_batch, device=device)


@register_reward("saturation", "mean HSV saturation, 0 (grey) to 1 (pure colours)")
def _saturation(micro_batch: int = 64, device=None) -> Reward:
    return Saturation(micro_batch=micro_batch, device=device)


@register_reward("colourfulness", "Hasler-Suesstrunk colourfulness metric")
def _colourfulness(micro_batch: int = 64, device=None) -> Reward:
    return Colourfulness(micro_batch=micro_batch, device=device)


@register_reward("jpeg_compressibility", "minus the JPEG size in kB (DDPO): smaller files score higher")
def _jpeg_compressibility(quality: int = 95, micro_batch: int = 64, device=None) -> Reward:
    return JpegSize(-1.0, quality=quality, micro_batch=micro_batch, device=device)


@register_reward("jpeg_incompressibility", "the JPEG size in kB (DDPO): detailed images score higher")
def _jpeg_incompressibility(quality: int = 95, micro_batch: int = 64, device=None) -> Reward:
    return JpegSize(1.0, quality=quality, micro_batch=micro_batch, device=device)
