"""Per-prompt reward normalisation: ``(r - mean_p) / (std_p + eps)`` with statistics per prompt.

Some prompts are simply easier than others; normalising per prompt turns "how good is this image"
into "how much better than usual for this prompt", which is what an advantage should be.

Which statistics (decided per prompt, per call, in this order):

1. **the current batch**, when the prompt has at least ``min_group`` images in it (default 3):
   group mean and standard deviation, as in group-relative methods. This uses only the images
   sampled from the current model, so it never goes stale.
2. **the prompt's running history**, otherwise: its last ``window`` scores (default 64) from this
   and earlier calls, when there are at least ``min_group`` of them. Groups of 1 or 2 are too small
   to estimate a spread from (a group of 2 always normalises to -1/+1), so they borrow from the
   prompt's past scores.
3. when the prompt itself is too new: the mean of the prompt's own scores so far (this call
   included) and the spread of every prompt's recent scores (a window of ``window * 8`` scores over
   all prompts). A new prompt's pair is thus centred on itself and scaled by the typical spread,
   and a prompt seen once with a single image gets 0 (there is nothing to compare it with).
4. with fewer than 2 scores in total, the score minus its mean (so 0).

The current batch's scores are added to the history before normalising (so a prompt seen once is
centred on its own score rather than passed through). Standard deviations are population ones
(divide by n) and ``eps`` (default 1e-6) keeps a constant group at 0 instead of dividing by 0.
Everything is deterministic: the output depends only on the sequence of calls. The state can be
saved and restored with `state_dict` / `load_state_dict` to resume a run, and `reset` clears it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Sequence

import torch

from .base import PartialRewardError, Reward, RewardError

NORMALIZE_MODES = ("none", "per_prompt")


class PerPromptNormalized(Reward):
    """Wraps a reward and normalises its scores per prompt (see the module docstring)."""

    def __init__(self, reward: Reward, min_group: int = 3, window: int = 64, eps: float = 1e-6,
                 max_prompts: int = 100_000):
        if min_group < 2:
            raise RewardError(f"min_group must be at least 2, got {min_group}")
        if window < min_group:
            raise RewardError(f"window ({window}) must be at least min_group ({min_group})")
        super().__init__(micro_batch=reward.micro_batch, device=reward.device)
        self.inner = reward
        self.name = f"per_prompt({reward.name})"
        self.differentiable = False
        self.min_group = int(min_group)
        self.window = int(window)
        self.eps = float(eps)
        self.max_prompts = int(max_prompts)
        self.history: OrderedDict[str, deque] = OrderedDict()
        self.global_history: deque = deque(maxlen=self.window * 8)
        #: raw (unnormalised) scores of the last call, for logging
        self.last_raw: torch.Tensor | None = None

    @property
    def last_components(self) -> dict:
        return getattr(self.inner, "last_components", {})

    def to(self, device):
        self.inner.to(device)
        return super().to(device)

    def reset(self) -> None:
        self.history.clear()
        self.global_history.clear()

    def state_dict(self) -> dict:
        return {"history": {p: list(h) for p, h in self.history.items()}, "global": list(self.global_history)}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        for p, h in state.get("history", {}).items():
            self.history[p] = deque((float(x) for x in h), maxlen=self.window)
        self.global_history.extend(float(x) for x in state.get("global", []))

    @staticmethod
    def _stats(values: Sequence[float]) -> tuple[float, float]:
        t = torch.tensor(list(values), dtype=torch.float64)
        std = float(t.std(unbiased=False)) if len(values) > 1 else 1.0
        return float(t.mean()), std

    def normalize(self, scores: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Normalise raw `scores` (one per prompt) and update the running statistics.

        Missing scores (NaN, +-inf) stay NaN and are left out of every statistic and of the
        history, so one failed image never shifts the other images' normalisation.
        """
        raw = scores.detach().double().cpu().reshape(-1)
        finite = torch.isfinite(raw)
        out = torch.full_like(raw, float("nan"))
        keep = finite.nonzero().flatten().tolist()
        if keep:
            out[keep] = self._normalize_finite(raw[keep], [prompts[i] for i in keep])
        return out.float()

    def _normalize_finite(self, raw: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        groups: OrderedDict[str, list[int]] = OrderedDict()
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        for p, idx in groups.items():
            h = self.history.get(p)
            if h is None:
                h = self.history[p] = deque(maxlen=self.window)
            self.history.move_to_end(p)
            h.extend(float(raw[i]) for i in idx)
        self.global_history.extend(float(x) for x in raw)
        while len(self.history) > self.max_prompts:
            self.history.popitem(last=False)
        out = torch.empty_like(raw)
        for p, idx in groups.items():
            if len(idx) >= self.min_group:
                mean, std = self._stats([float(raw[i]) for i in idx])
            elif len(self.history[p]) >= self.min_group:
                mean, std = self._stats(self.history[p])
            elif len(self.global_history) >= 2:
                mean, std = self._stats(self.global_history)
                mean = self._stats(self.history[p])[0]  # centre on the prompt, borrow the spread
            else:
                mean, std = float(raw[idx].mean()), 1.0
            out[idx] = (raw[idx] - mean) / (std + self.eps)
        return out

    def __call__(self, images, prompts, layout="auto"):
        if isinstance(prompts, str):
            n = images.shape[0] if images.ndim == 4 else 1
            prompts = [prompts] * n
        prompts = list(prompts)
        try:
            raw = self.inner(images, prompts, layout=layout)
        except PartialRewardError as e:  # normalise what was scored, keep the failures NaN
            self.last_raw = e.scores
            raise PartialRewardError(str(e), self.normalize(e.scores, prompts), e.errors) from e
        self.last_raw = raw
        return self.normalize(raw, prompts)

    def describe(self) -> str:
        return f"per_prompt({self.inner.describe()}; min_group={self.min_group}, window={self.window})"


def wrap_normalization(reward: Reward, normalize: str | None, **options) -> Reward:
    """Apply a normalisation mode by name: None/'none' returns `reward` itself."""
    mode = (normalize or "none").lower().replace("-", "_")
    if mode == "none":
        if options:
            raise RewardError(f"normalisation options {sorted(options)} given without normalize='per_prompt'")
        return reward
    if mode == "per_prompt":
        try:
            return PerPromptNormalized(reward, **options)
        except TypeError as e:
            raise RewardError(f"bad options for per-prompt normalisation: {e}") from e
    raise RewardError(f"unknown normalisation {normalize!r}; use one of {', '.join(NORMALIZE_MODES)}")


def per_prompt_normalizer(reward):
    """`reward` itself when it normalises per prompt (a `PerPromptNormalized`, or any object with
    its `normalize(scores, prompts)` and `inner`, e.g. a front end's own wrapper), else None."""
    return reward if hasattr(reward, "normalize") and hasattr(reward, "inner") else None


def raw_reward(reward):
    """The reward before per-prompt normalisation (`reward` itself when it does not normalise): what
    scores images one batch at a time, where the normaliser must see all of a prompt's images at
    once or must not see them at all (held-out images would change its running statistics)."""
    normalizer = per_prompt_normalizer(reward)
    return normalizer.inner if normalizer is not None else reward
