"""Pieces the baselines share with each other (not with FDFO's paired loop)."""

from __future__ import annotations

import torch

from ..rewards.failure_policy import RewardFailures, dropped_line
from ..run.trainer import TrainingError


@torch.no_grad()
def score_latents(trainer, final: torch.Tensor, prompts: list[str], group_size: int) -> torch.Tensor:
    """Decode final latents [N, C, h, w] (laid out group by group, `group_size` images a group) in
    `decode_batch_size` chunks and score them under the shared bad-reward policy
    (fdfo_core/rewards/failure_policy.py): float64 [N] on the CPU, NaN for an image without a usable reward,
    recorded in `trainer._failures`. Raises TrainingError as soon as more than
    max_bad_pair_fraction of the groups have such an image."""
    trainer._failures = RewardFailures()
    out = []
    bad = torch.zeros(final.shape[0], dtype=torch.bool)
    for start in range(0, final.shape[0], trainer.config.decode_batch_size):
        trainer._cancel_point()
        stop = min(final.shape[0], start + trainer.config.decode_batch_size)
        with trainer._autocast():
            images = trainer.backend.decode(final[start:stop].to(trainer.device)).float()
        r = trainer._score_call(trainer.reward, images, prompts[start:stop]).double().cpu()
        out.append(r)
        bad[start:stop] = ~torch.isfinite(r)
        trainer.progress("reward", stop, final.shape[0])
        trainer._check_bad_share(int(bad.reshape(-1, group_size).any(dim=1).sum()), final.shape[0] // group_size,
                                 "groups", certain=stop < final.shape[0])
    return torch.cat(out)


def finite_groups(trainer, rewards: torch.Tensor, group_size: int, epoch: int) -> torch.Tensor:
    """bool [N / group_size]: the groups whose rewards are all finite (the others are dropped, and
    the drop is logged). Raises TrainingError when no group is left."""
    finite = torch.isfinite(rewards).reshape(-1, group_size).all(dim=1)
    if not bool(finite.any()):
        raise TrainingError(f"every group of epoch {epoch + 1} got a NaN or infinite reward (or none) from "
                            f"{trainer.reward_spec!r}: {trainer._failures.summary()}")
    bad_groups = int((~finite).sum())
    if bad_groups:
        trainer.log(dropped_line(epoch + 1, bad_groups, finite.numel(), "groups", trainer.config.max_bad_pair_fraction,
                                  trainer._failures))
    return finite
