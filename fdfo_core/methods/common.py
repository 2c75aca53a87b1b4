"""Pieces the baselines share with each other (not with FDFO's paired loop)."""

from __future__ import annotations

import torch

from ..rewards.failure_policy import RewardFailures, dropped_line
from ..run.trainer import RunLoop
from ..run.hooks import TrainingError


def score_latents(trainer: RunLoop, final: torch.Tensor, prompts: list[str],
                  group_size: int) -> tuple[torch.Tensor, RewardFailures]:
    """`RunLoop.decode_and_score` of final latents [N, C, h, w] laid out group by group
    (`group_size` images a group): (float64 [N] on the CPU, NaN for an image without a usable
    reward; the epoch's failures). Raises TrainingError as soon as more than
    max_bad_pair_fraction of the groups have such an image."""
    return trainer.decode_and_score(final, prompts, trainer.reward,
                                    lambda bad: bad.reshape(-1, group_size).any(dim=1), "groups")


def finite_groups(trainer: RunLoop, rewards: torch.Tensor, group_size: int, epoch: int,
                  failures: RewardFailures) -> torch.Tensor:
    """bool [N / group_size]: the groups whose rewards are all finite (the others are dropped, and
    the drop is logged). Raises TrainingError when no group is left."""
    finite = torch.isfinite(rewards).reshape(-1, group_size).all(dim=1)
    if not bool(finite.any()):
        raise TrainingError(f"every group of epoch {epoch + 1} got a NaN or infinite reward (or none) from "
                            f"{trainer.reward_spec!r}: {failures.summary()}")
    bad_groups = int((~finite).sum())
    if bad_groups:
        trainer.log(dropped_line(epoch + 1, bad_groups, finite.numel(), "groups", trainer.config.max_bad_pair_fraction,
                                  failures))
    return finite
