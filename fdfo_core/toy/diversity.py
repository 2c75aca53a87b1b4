"""Diversity figure: how different are the images one prompt gives across seeds?"""

from __future__ import annotations

import torch


def pairwise_pixel_diversity(images: torch.Tensor) -> float:
    """Mean pairwise pixel distance among images of ONE prompt (different seeds).

    `images`: [N, C, H, W] (or NHWC with C <= 4) in [0, 1], N >= 2. The distance of a pair is the
    mean absolute pixel difference, so the figure is in [0, 1]: 0 when all images are identical
    (mode collapse), about 0.1-0.3 for the toy model's varied layouts.
    """
    if images.ndim != 4:
        raise ValueError(f"expected [N, C, H, W] images, got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3, 4) and images.shape[-1] in (1, 3, 4):
        images = images.permute(0, 3, 1, 2)
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 images of the same prompt to measure diversity, got {n}")
    flat = images.float().reshape(n, -1)
    # Upcast: the distance between similar images is small.
    dist = torch.cdist(flat.double(), flat.double(), p=1) / flat.shape[1]
    return float(dist.sum() / (n * (n - 1)))


def prompt_diversity(images: torch.Tensor, prompts: list[str]) -> float:
    """Average of `pairwise_pixel_diversity` over the prompts that appear at least twice in `prompts`."""
    if images.shape[0] != len(prompts):
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    values = [pairwise_pixel_diversity(images[idx]) for idx in groups.values() if len(idx) >= 2]
    if not values:
        raise ValueError("no prompt appears twice: repeat each prompt over several seeds")
    return sum(values) / len(values)
