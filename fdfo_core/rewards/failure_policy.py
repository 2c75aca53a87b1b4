"""What happens to images without a usable reward: one policy for every reward and method.

A reward can fail for some images and not others: a scoring server answers ``null`` for one
image or times out on one request, a VLM chokes on one batch, a learned scorer returns NaN. The
policy (FDFO and every baseline, any reward: remote, VLM, learned, weighted sums, per-prompt
normalised):

1. An image whose score is missing (None / JSON null), NaN or infinite gets NaN. A reward call
   that raises marks the images of that call NaN: one decode batch (`decode_batch_size`) in the
   trainer, or only the failed micro-batch when the reward itself can say which images failed
   (`PartialRewardError`, raised by `Reward.__call__` and weighted sums).
2. The pair of a NaN image (a Flow-GRPO group, a gradient baseline's sample) is dropped from the
   epoch's update and counted: `pairs_dropped`, `images_without_reward`, `reward_errors` and
   `bad_pair_fraction` in metrics.jsonl, and one log line per epoch naming each distinct error
   with its count.
3. The run stops with a TrainingError (the LoRA trained so far is saved) when the dropped share
   of an epoch exceeds `FDFOConfig.max_bad_pair_fraction` (default 0.5). Single-process runs stop
   as soon as that is certain, without scoring the rest of the epoch.
4. Some failures stop at once instead: a reward that raises on its very first call of a run (a
   setup problem: wrong URL, missing weights, not a bad image), the user's Cancel, running out of
   memory, and a reward that returns the wrong number of scores.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from .base import PartialRewardError, RewardError, as_scores, error_text, is_fatal, summarize_errors


class RewardFailures:
    """The images of one epoch (one rank, or all ranks after `merged`) that got no usable reward."""

    def __init__(self) -> None:
        self.images = 0  # images scored (or attempted)
        self.non_finite = 0  # images whose reward came back missing, NaN or infinite
        self.errors: list[tuple[int, str]] = []  # (images, message) per failed reward call

    @property
    def error_images(self) -> int:
        return sum(k for k, _ in self.errors)

    @property
    def images_without_reward(self) -> int:
        return self.non_finite + self.error_images

    def add_call(self, scores: torch.Tensor, errors: Sequence[tuple[int, str]] = ()) -> None:
        """Record one call's scores (NaN where missing) and the failures it reported."""
        errors = list(errors)
        self.images += int(scores.numel())
        missing = int((~torch.isfinite(scores)).sum())
        self.non_finite += max(0, missing - sum(k for k, _ in errors))
        self.errors += errors

    def state(self) -> dict[str, Any]:
        return {"images": self.images, "non_finite": self.non_finite, "errors": list(self.errors)}

    @classmethod
    def merged(cls, states: Sequence[dict[str, Any]]) -> "RewardFailures":
        out = cls()
        for s in states:
            out.images += s["images"]
            out.non_finite += s["non_finite"]
            out.errors += [tuple(e) for e in s["errors"]]
        return out

    def summary(self) -> str:
        """'3 image(s) without a finite reward (NaN, infinite or missing); reward errors: 2 calls
        (32 images): remote: ... failed after 4 attempt(s): HTTP 503' (empty when all went well)."""
        parts = []
        if self.non_finite:
            parts.append(f"{self.non_finite} image(s) got a NaN, infinite or missing score")
        if self.errors:
            parts.append(f"reward errors: {summarize_errors(self.errors)}")
        return "; ".join(parts)

    def metrics(self) -> dict[str, Any]:
        return {"images_without_reward": self.images_without_reward, "reward_errors": len(self.errors)}


def score_call(
    reward: Callable[..., Any], images: torch.Tensor, prompts: Sequence[str], failures: RewardFailures,
    name: str, strict: bool,
) -> torch.Tensor:
    """Score one batch of images under the policy: float64 [N], NaN for images without a reward.

    `strict`: a failure of the whole call raises instead (used until the reward has worked once
    in the run). Fatal errors (`is_fatal`) and a wrong number of scores always raise; a scorer's
    own exception is raised as a RewardError naming the reward.
    """
    n = images.shape[0]
    errors: list[tuple[int, str]] = []
    try:
        out = reward(images, prompts)
    except PartialRewardError as e:
        out, errors = e.scores, e.errors
    except Exception as e:
        if is_fatal(e):
            raise
        if strict:
            if isinstance(e, RewardError):
                raise
            raise RewardError(f"reward {name!r} failed: {error_text(e)}") from e
        out, errors = torch.full((n,), math.nan), [(n, error_text(e))]
    scores = as_scores(out, n, f"reward {name!r}")
    failures.add_call(scores, errors)
    return scores.double()


def too_many_bad(epoch: int, bad: int, total: int, unit: str, limit: float, reward: str,
                 failures: RewardFailures, certain: bool = False) -> str:
    """The TrainingError message when more than `limit` of an epoch's `unit`s are lost."""
    detail = failures.summary()
    when = " (already certain: the rest of the epoch was not scored)" if certain else ""
    return (
        f"epoch {epoch}: {bad} of {total} {unit} ({bad / max(total, 1):.0%}) have an image with a NaN or infinite "
        f"reward (or none) from {reward!r}{when}, more than max_bad_pair_fraction = {limit:g} allows"
        + (f". {detail[0].upper() + detail[1:]}" if detail else "")
        + ". Fix the reward (the errors above say what failed; check that its weights load and that a scoring "
        "server is up), or raise max_bad_pair_fraction (--max-bad-pair-fraction, or the Trainer node's input) to "
        "train on the pairs that remain. Checkpoints and the LoRA trained so far (if any) are kept."
    )


def dropped_line(epoch: int, dropped: int, total: int, unit: str, limit: float, failures: RewardFailures) -> str:
    """The epoch's log line about dropped pairs."""
    detail = failures.summary()
    return (f"epoch {epoch}: dropped {dropped} of {total} {unit} ({dropped / max(total, 1):.0%}; the run stops above "
            f"{limit:.0%})" + (f": {detail}" if detail else ""))
