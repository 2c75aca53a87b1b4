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


class PartialRewardError(RewardError):
    """Some images of a call could not be scored, the others were.

    `scores`: float32 [N], NaN for every image that has no score; `errors`: one
    ``(images, message)`` per failed micro-batch. The trainer uses the scores (an image without a
    score loses its pair, see `FDFOConfig.max_bad_pair_fraction`); other callers see an error
    that says how many images failed and why.
    """

    def __init__(self, message: str, scores: torch.Tensor, errors: Sequence[tuple[int, str]]):
        super().__init__(message)
        self.scores = scores
        self.errors = list(errors)


def is_fatal(error: BaseException) -> bool:
    """Errors that must stop at once instead of costing only the images being scored: the user's
    Cancel (ComfyUI raises an Exception subclass for it) and out-of-memory (the fix is a setting,
    a smaller decode_batch_size or micro_batch; retrying the next batch would fail the same way)."""
    if not isinstance(error, Exception):
        return True
    oom = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                if isinstance(t, type))
    return isinstance(error, (MemoryError, *oom)) or type(error).__name__ in (
        "InterruptProcessingException", "TrainingInterrupted")


def error_text(error: BaseException) -> str:
    """'Type: message' on one line (RewardErrors by their message alone), for logs and summaries."""
    msg = " ".join(str(error).split())
    return msg if isinstance(error, RewardError) else f"{type(error).__name__}: {msg}"


def as_scores(values, n: int, name: str = "reward") -> torch.Tensor:
    """A reward's output as float32 [n] on the CPU; None (a missing score, JSON null) becomes NaN.

    Raises RewardError when the count is wrong or a value is not a number.
    """
    if isinstance(values, torch.Tensor):
        scores = values.detach().float().reshape(-1).cpu()
    else:
        try:
            scores = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            flat = []
            for v in values:
                if v is None:
                    flat.append(float("nan"))
                    continue
                try:
                    flat.append(float(v))
                except (TypeError, ValueError) as e:
                    raise RewardError(f"{name}: score {len(flat)} is {v!r}, not a number") from e
            scores = torch.tensor(flat, dtype=torch.float32)
    if scores.shape[0] != n:
        raise RewardError(f"{name}: returned {scores.shape[0]} scores for {n} images")
    return scores


def summarize_errors(errors: Sequence[tuple[int, str]]) -> str:
    """'2 calls (24 images): <message>; 1 call (8 images): <other message>' (same messages merged)."""
    merged: dict[str, list[int]] = {}
    for images, message in errors:
        calls_images = merged.setdefault(message, [0, 0])
        calls_images[0] += 1
        calls_images[1] += images
    return "; ".join(f"{c} call{'s' if c != 1 else ''} ({k} image{'s' if k != 1 else ''}): {m}"
                     for m, (c, k) in merged.items())


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
        out, errors, first_error, calls = [], [], None, 0
        with torch.no_grad():
            for i in range(0, n, self.micro_batch):
                calls += 1
                chunk = images[i : i + self.micro_batch].to(self.device)
                k = chunk.shape[0]
                try:
                    out.append(as_scores(self._score(chunk, prompts[i : i + self.micro_batch]), k, self.name))
                except Exception as e:
                    # One micro-batch failing (a server error, a bad image) costs only its images.
                    if is_fatal(e):
                        raise
                    first_error = first_error or e
                    errors.append((k, error_text(e)))
                    out.append(torch.full((k,), float("nan")))
        scores = torch.cat(out)
        if errors:
            if len(errors) == calls:  # nothing was scored: raise the error itself
                raise first_error
            failed = sum(k for k, _ in errors)
            raise PartialRewardError(
                f"{self.name}: {failed} of {n} images could not be scored ({summarize_errors(errors)})", scores, errors)
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
