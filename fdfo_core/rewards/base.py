"""The one reward interface: images in [0, 1] plus prompts in, one float per image out.

Every scorer (weight-free, learned, remote, combined) subclasses `Reward` and implements
`_score(images, prompts)` on an NCHW float32 micro-batch. `Reward.__call__` does the shared
work once: layout detection (NCHW or ComfyUI's NHWC), range checks, micro-batching,
`torch.no_grad`, and the shape and dtype of the result.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

Layout = Literal["auto", "nchw", "nhwc"]


class RewardError(RuntimeError):
    """A reward could not be computed; the message names the reward and says what to do."""


def to_nchw(images: torch.Tensor, layout: Layout = "auto") -> torch.Tensor:
    """Return `images` as float32 NCHW. Accepts NCHW or NHWC (ComfyUI's IMAGE) with 1, 3 or 4 channels.

    Single-channel images are repeated to RGB and an alpha channel is dropped, so scorers can
    assume 3 channels.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise RewardError(f"expected a batch of images with 4 dimensions, got shape {tuple(images.shape)}")
    if layout == "auto":
        if images.shape[1] in (1, 3, 4):
            layout = "nchw"
        elif images.shape[-1] in (1, 3, 4):
            layout = "nhwc"
        else:
            raise RewardError(
                f"cannot tell the channel axis of images with shape {tuple(images.shape)}: "
                "pass layout='nchw' or layout='nhwc'"
            )
    if layout == "nhwc":
        images = images.permute(0, 3, 1, 2)
    elif layout != "nchw":
        raise ValueError(f"unknown layout {layout!r}; expected 'auto', 'nchw' or 'nhwc'")
    images = images.float()
    channels = images.shape[1]
    if channels == 1:
        images = images.expand(-1, 3, -1, -1)
    elif channels == 4:
        images = images[:, :3]
    elif channels != 3:
        raise RewardError(f"images must have 1, 3 or 4 channels, got {channels}")
    return images.contiguous()


class Reward:
    """Base class of all rewards.

    Subclasses set `name` and implement `_score`, which receives float32 NCHW images in [0, 1]
    on `self.device` (at most `micro_batch` of them) and returns one value per image.
    """

    name: str = "reward"
    #: True when `_score` is differentiable with respect to the images (used by baselines).
    differentiable: bool = False

    def __init__(self, micro_batch: int = 16, device: str | torch.device | None = None):
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")
        self.micro_batch = micro_batch
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "Reward":
        self.device = torch.device(device)
        return self

    def _score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str] | str, layout: Layout = "auto"
    ) -> torch.Tensor:
        """Score a batch. Returns a float32 CPU tensor of shape [N]."""
        images = to_nchw(images, layout)
        n = images.shape[0]
        if isinstance(prompts, str):
            prompts = [prompts] * n
        prompts = list(prompts)
        if len(prompts) != n:
            raise RewardError(f"{self.name}: got {n} images but {len(prompts)} prompts; pass one prompt per image")
        if n == 0:
            return torch.zeros(0)
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise RewardError(
                f"{self.name}: images must be in [0, 1], got values in [{lo:.3f}, {hi:.3f}]; "
                "decode latents to [0, 1] (x / 2 + 0.5 for a [-1, 1] VAE output) before scoring"
            )
        images = images.clamp(0, 1)
        out = []
        with torch.no_grad():
            for i in range(0, n, self.micro_batch):
                chunk = images[i : i + self.micro_batch].to(self.device)
                scores = self._score(chunk, prompts[i : i + self.micro_batch])
                out.append(torch.as_tensor(scores).detach().float().reshape(-1).cpu())
        scores = torch.cat(out)
        if scores.shape[0] != n:
            raise RewardError(f"{self.name}: returned {scores.shape[0]} scores for {n} images")
        return scores

    def score_differentiable(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores with gradients flowing back to `images` (NCHW in [0, 1], on any device).

        Only for rewards with `differentiable = True` (the reward-gradient baselines use it);
        returns float32 [N] on the images' device.
        """
        if not self.differentiable:
            raise RewardError(
                f"reward {self.name!r} is not differentiable; the gradient baselines (grad_copy, "
                "backprop_chain) need a differentiable reward such as brightness, saturation, "
                "colourfulness, pickscore, hpsv2, aesthetic or clipscore"
            )
        prompts = list(prompts)
        if len(prompts) != images.shape[0]:
            raise RewardError(f"{self.name}: got {images.shape[0]} images but {len(prompts)} prompts")
        out = self._score(images.to(self.device).float(), prompts)
        return torch.as_tensor(out).float().reshape(-1).to(images.device)

    def describe(self) -> str:
        """A short spec string stored in LoRA metadata and run configs."""
        return self.name
