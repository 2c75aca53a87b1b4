"""FDFO (ALGORITHM.md, "The epoch loop") on the run loop (`run.trainer.RunLoop`).

One epoch:
  1. sample `pairs_per_epoch` pairs (each rank its contiguous share), recording x_t and v per step;
     with `branches` K > 2 (an extension beyond the paper), 2 x pairs_per_epoch / K groups of K
     branches that share their initial noise (`FDFOConfig.groups_per_epoch`: the same images per
     epoch), trained on the group's least-squares finite difference (`fdfo_objective.group_deltas`);
  2. decode both branches (all K) and score them; pairs with a non-finite or missing reward are dropped
     and counted, and the run stops when too many are (fdfo_core/rewards/failure_policy.py: the policy);
  3. turn every (sample, step) into a training item, shuffle all items of all ranks with one
     permutation, and split them into `optimizer_steps_per_epoch` updates (gradient accumulation,
     clipping, AdamW) on the FDFO objective (`methods.fdfo_objective`).
Every random draw is seeded from (seed, epoch, global pair index), never from a running RNG, so
a resumed run replays exactly and a 2-rank run samples the same pairs as a 1-process run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..files import faults
from ..flow.conditioning import Cond, cond_select, cond_to
from ..backends.generation import epoch_pairs, sample_pair_batches
from ..flow.seeds import derive_seed, generator
from ..rewards.base import RewardError
from ..rewards.normalize import per_prompt_normalizer, raw_reward
from ..rewards.failure_policy import RewardFailures, dropped_line
from ..rewards.pairwise import PairContext, is_pairwise
from ..run.distributed import shard_range
from ..run.stats import ItemStats
from ..run.trainer import RunLoop
from ..run.hooks import TrainingError
from .fdfo_objective import fdfo_loss, group_deltas


@dataclass
class EpochRollouts:
    """What one rank recorded in the sampling phase of an epoch (K = `branches`, 2 for pairs; a
    "pair" below is a group of K branches when K > 2)."""

    pair_ids: torch.Tensor  # [n] global pair indices owned by this rank
    prompt_ids: torch.Tensor  # [n] index into the prompt list of each pair
    prompt_rows: torch.Tensor  # [n] row of each pair in `cond`
    cond: Cond
    states: torch.Tensor  # [Kn, S, C, h, w] rows: a of pair 0..n-1, then b of pair 0..n-1, ...
    velocities: torch.Tensor
    final: torch.Tensor  # [Kn, C, h, w]
    sigmas: torch.Tensor
    uncond: Cond | None = None  # the negative prompt's conditioning (CFG), None without CFG
    rewards: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [Kn] what training uses
    raw_rewards: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [Kn] before normalisation


@dataclass
class EpochScores:
    """What the scoring phase of an epoch found (`FDFOTrainer.score`)."""

    rewards: torch.Tensor  # [Kn] float64 (rows a..., b..., ...), NaN where an image has no usable reward
    failures: RewardFailures  # this rank's images without a usable reward
    declined: int = 0  # pairs a pairwise reward skipped or left unpicked on purpose (not failures)
    pair_metrics: dict[str, Any] = field(default_factory=dict)  # a pairwise reward's own metrics


class FDFOTrainer(RunLoop):
    """FDFO (`method="fdfo"`) on the run loop: paired sampling, finite differences of the pair's
    rewards and endpoints, the SPO-style surrogate (`fdfo_objective.fdfo_loss`) at every recorded step.
    Raises TrainingError for `branches` > 2 with a pairwise reward (human picks compare two images)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        refuse_groups_with_pairwise(self.reward, self.config.branches, self.reward_spec)

    # --- phase 1: paired sampling ----------------------------------------------------------------

    @torch.no_grad()
    def sample_epoch(self, epoch: int) -> EpochRollouts:
        """This rank's share of the epoch's pairs (`backends.generation.epoch_pairs`, the draw the
        Paired Sampler node shows), with x_t and the velocity recorded at every step."""
        cfg = self.config
        k = cfg.branches
        lo, hi = shard_range(cfg.groups_per_epoch, self.dist.rank, self.dist.world_size)
        pairs = epoch_pairs(self.backend, cfg, self.prompts, epoch, lo, hi)
        cond = cond_to(pairs.cond, self.storage)
        latent_shape = pairs.latent_shape
        velocity = self.velocity_fn(pairs.uncond)

        n = hi - lo
        # One buffer each for states and velocities, rows [a..., b..., ...]: written in place per batch
        # (no concatenation at the end, which would hold them twice). Pinned host memory when
        # they are kept off an accelerator, so the per-step copies do not wait on pageable memory.
        shape = (k * n, cfg.num_steps, *latent_shape)
        pin = self.storage.type == "cpu" and self.device.type == "cuda"
        all_states = torch.empty(shape, device=self.storage, pin_memory=pin)
        all_velocities = torch.empty(shape, device=self.storage, pin_memory=pin)
        final = torch.empty((k * n, *latent_shape))
        batches = sample_pair_batches(velocity, pairs, cfg, epoch, self.device, storage_device=self.storage,
                                      on_step=lambda done, total: self.progress("sample", done, total))
        for start, stop, roll in batches:
            b = stop - start
            for j in range(k):  # branch j of this batch -> rows j n + start .. j n + stop
                all_states[j * n + start:j * n + stop] = roll.states[j * b:(j + 1) * b]
                all_velocities[j * n + start:j * n + stop] = roll.velocities[j * b:(j + 1) * b]
                final[j * n + start:j * n + stop] = roll.final[j * b:(j + 1) * b].cpu()
            del roll
            faults.kill_point("sample", epoch + 1)  # crash tests only (fdfo_core.files.faults)
        return EpochRollouts(
            pair_ids=pairs.pair_ids, prompt_ids=pairs.prompt_ids, prompt_rows=pairs.prompt_rows, cond=cond,
            states=all_states, velocities=all_velocities, final=final, sigmas=pairs.sigmas, uncond=pairs.uncond,
        )

    # --- phase 2: decode and score ---------------------------------------------------------------

    @torch.no_grad()
    def score(self, roll: EpochRollouts) -> EpochScores:
        """Decode and score every branch: rewards float64 [Kn] (rows a..., b..., ...), NaN where an image
        has no usable reward (missing, non-finite, or its reward call failed); also set on `roll`."""
        if is_pairwise(self.reward) or is_pairwise(getattr(self.reward, "inner", None)):
            return self.score_pairs(roll)
        n = roll.pair_ids.numel()
        k = self.config.branches
        prompts = [self.prompts[i] for i in roll.prompt_ids.tolist()] * k
        # A per-prompt normalising reward must see all of a prompt's images at once: score raw
        # chunks with the inner reward, normalise once at the end.
        normalizer = per_prompt_normalizer(self.reward)
        scorer = raw_reward(self.reward)
        # (With several ranks, they decide on the share of lost pairs together, after the gather.)
        raw, failures = self.decode_and_score(roll.final, prompts, scorer, lambda bad: bad.reshape(k, n).any(dim=0), "pairs",
                                              check=not self.dist.active)
        if raw.shape[0] != k * n:
            raise RewardError(f"reward {self.reward_spec!r} returned {raw.shape[0]} scores for {k * n} images")
        roll.raw_rewards = raw
        if normalizer is not None:  # NaN stays NaN and is left out of the statistics
            raw = normalizer.normalize(raw.float(), prompts).double()
        roll.rewards = raw
        return EpochScores(roll.rewards, failures)

    @torch.no_grad()
    def score_pairs(self, roll: EpochRollouts) -> EpochScores:
        """Decode every pair and hand them to a pairwise reward (`fdfo_core.rewards.pairwise`), which gives
        R_left - R_right per pair; image rewards are +delta / 2 and -delta / 2 (rows a..., b...),
        NaN for a pair without a score. Pairs it declined (skipped, unpicked) are counted apart
        from failures."""
        if per_prompt_normalizer(self.reward) is not None:
            raise TrainingError(f"{self.reward.inner.describe()} gives each pair's reward difference itself (+1 / -1 / 0 "
                                "for a pick): per-prompt normalisation does not apply; set reward_normalization to none")
        if self.dist.active:
            raise TrainingError(f"{self.reward_spec} waits for one artist's picks: run it in one process, not "
                                f"{self.dist.world_size} ranks")
        cfg = self.config
        n = roll.pair_ids.numel()
        total = roll.final.shape[0]
        images = []
        for start in range(0, total, cfg.decode_batch_size):
            stop = min(total, start + cfg.decode_batch_size)
            images.append(self.decode(roll.final[start:stop]).clamp(0, 1).cpu())
            self.progress("reward", stop, total)
        images = torch.cat(images)
        pair_ids = roll.pair_ids.tolist()
        context = PairContext(
            epoch=self.epoch, pair_ids=pair_ids, seeds=[derive_seed(cfg.seed, "pair", self.epoch, p) for p in pair_ids],
            run_dir=self.run_dir, run_id=self.run_id,
            check_cancel=self.callbacks.check_cancel, log=self.log)
        failures = RewardFailures()
        out = self.reward.score_pairs(images[:n], images[n:], [self.prompts[i] for i in roll.prompt_ids.tolist()], context)
        delta = torch.as_tensor(out.delta, dtype=torch.float64).reshape(-1)
        if delta.shape[0] != n:
            raise RewardError(f"reward {self.reward_spec!r} returned {delta.shape[0]} pair scores for {n} pairs")
        roll.raw_rewards = roll.rewards = torch.cat([delta / 2, -delta / 2])
        return EpochScores(roll.rewards, failures, declined=int(torch.as_tensor(out.declined).sum()),
                           pair_metrics=dict(out.metrics))

    # --- phase 3: train on all (sample, step) items -----------------------------------------------

    def global_items(self, epoch: int, valid_pairs: torch.Tensor) -> torch.Tensor:
        """All training items of the epoch as rows (global pair, branch, step), shuffled with the
        permutation every rank computes identically."""
        cfg = self.config
        items = []
        for gp in valid_pairs.tolist():
            for branch in range(cfg.branches):
                if cfg.steps_per_sample:
                    g = generator(cfg.seed, "steps", epoch, gp, branch)
                    steps = torch.randperm(cfg.num_steps, generator=g)[: cfg.steps_per_sample].sort().values
                else:
                    steps = torch.arange(cfg.num_steps)
                items.append(torch.stack([torch.full_like(steps, gp), torch.full_like(steps, branch), steps], 1))
        items = torch.cat(items)
        perm = torch.randperm(items.shape[0], generator=generator(cfg.seed, "items", epoch))
        return items[perm]

    def train_on(self, roll: EpochRollouts, epoch: int, valid_global: torch.Tensor, reward_std: float = 1.0) -> ItemStats:
        """The epoch's optimizer steps on every (pair, branch, step) item of `valid_global` (the pairs
        of all ranks with a reward); `reward_std`: the epoch's reward std (`reward_normalization="std"`)."""
        cfg = self.config
        n = roll.pair_ids.numel()
        lo = int(roll.pair_ids[0]) if n else 0
        # Finite differences of every local pair or group (dropped ones are never indexed).
        dr, dxn = group_deltas(roll.rewards.float(), roll.final, cfg.branches)
        if cfg.reward_normalization == "std":
            dr = dr / reward_std
        items = self.global_items(epoch, valid_global)
        chunks = torch.tensor_split(items, cfg.optimizer_steps_per_epoch)
        stats = ItemStats()
        velocity = self.velocity_fn(roll.uncond)
        mine_total = int(((items[:, 0] >= lo) & (items[:, 0] < lo + n)).sum())
        done = 0
        for chunk in chunks:
            chunk_size = chunk.shape[0]  # global count: every rank divides by the same number
            mine = chunk[(chunk[:, 0] >= lo) & (chunk[:, 0] < lo + n)]
            for start in range(0, mine.shape[0], cfg.train_batch_size):
                mb = mine[start : start + cfg.train_batch_size]
                local_pair = mb[:, 0] - lo
                row = local_pair + mb[:, 1] * n  # row in the [a..., b..., ...] layout
                step = mb[:, 2]
                x = self.to_device(roll.states[row, step])
                v_rec = self.to_device(roll.velocities[row, step])
                t = self.to_device(roll.sigmas[step])
                cond = cond_to(cond_select(roll.cond, roll.prompt_rows[local_pair]), self.device)
                v_base = None
                if cfg.kl_weight > 0:
                    with torch.no_grad(), self.backend.adapter_disabled():
                        v_base = velocity(x, t, cond)
                v = velocity(x, t, cond)
                out = fdfo_loss(v, v_rec, dxn[row].to(self.device), dr[row].to(self.device),
                                clip_range=cfg.clip_range, v_base=v_base, kl_weight=cfg.kl_weight)
                loss = out.loss.sum() / chunk_size
                self.scaler.scale(loss).backward()
                stats.add(out.loss, out.ratio, out.clipped, out.kl, t=t)
                done += mb.shape[0]
                self.progress("train", done, mine_total)
            stats.grad_norms.append(self.optimizer_step())
            faults.kill_point("train", epoch + 1)  # crash tests only (fdfo_core.files.faults)
        return stats

    # --- one epoch, end to end -------------------------------------------------------------------

    def train_epoch(self) -> dict[str, Any]:
        cfg = self.config
        epoch = self.epoch
        t0 = time.perf_counter()
        roll = self.sample_epoch(epoch)
        t1 = time.perf_counter()
        scores = self.score(roll)
        rewards = scores.rewards
        t2 = time.perf_counter()

        n = roll.pair_ids.numel()
        k = cfg.branches
        finite = torch.isfinite(rewards)
        valid_local = finite.reshape(k, n).all(dim=0)
        both = valid_local.repeat(k)
        gathered = self.dist.all_gather_object(
            (roll.pair_ids[valid_local].tolist(), rewards[both].tolist(), roll.raw_rewards[both].tolist())
        )
        failures = RewardFailures.merged(self.dist.all_gather_object(scores.failures.state()))
        valid_global = torch.tensor(sorted(p for ids, _, _ in gathered for p in ids), dtype=torch.long)
        all_rewards = torch.tensor([r for _, rs, _ in gathered for r in rs], dtype=torch.float64)
        raw_rewards = torch.tensor([r for _, _, rs in gathered for r in rs], dtype=torch.float64)
        dropped = cfg.groups_per_epoch - valid_global.numel()
        declined = scores.declined  # skipped or unpicked on purpose (a pairwise reward): not failures
        if valid_global.numel() == 0 and declined >= dropped:
            self.log(f"epoch {epoch + 1}: no pair has a reward difference (all {dropped} skipped or unpicked); the "
                     "model is unchanged this epoch")
            t3 = time.perf_counter()
            return self.finish_epoch((t0, t1, t2, t3), raw_rewards, ItemStats(), pairs=0, dropped=dropped,
                                     mean_abs_dr=0.0, with_kl=cfg.kl_weight > 0, failures=failures,
                                     declined=declined, pair_metrics=scores.pair_metrics)
        if valid_global.numel() == 0:
            detail = failures.summary()
            raise TrainingError(
                f"every one of the {cfg.groups_per_epoch} pairs of epoch {epoch + 1} got a NaN or infinite reward "
                f"(or none) from {self.reward_spec!r}" + (f" ({detail})" if detail else "")
                + "; check the reward (weights loaded? server up? images in [0, 1]?) before training"
            )
        self.check_bad_share(dropped - declined, cfg.groups_per_epoch - declined, "pairs", failures)
        if dropped > declined:
            self.log(dropped_line(epoch + 1, dropped, cfg.groups_per_epoch, "pairs", cfg.max_bad_pair_fraction,
                                  failures))
        reward_std = max(float(all_rewards.std()) if all_rewards.numel() > 1 else 1.0, 1e-8)
        # Non-finite rewards would poison the finite differences of their own pair only; zero
        # them so the arithmetic stays finite (those pairs are not among the training items).
        roll.rewards = torch.where(torch.isfinite(roll.rewards), roll.rewards, torch.zeros_like(roll.rewards))

        abs_dr = mean_abs_dr(gathered, k)
        if abs_dr == 0.0:
            # FDFO learns from R_left - R_right only: equal rewards give no update (ALGORITHM.md).
            self.log(f"warning: epoch {epoch + 1}: every one of the {valid_global.numel()} pairs has a zero reward "
                     f"difference (both images of each pair scored alike by {self.reward_spec!r}), so this epoch "
                     "does not change the LoRA. A constant or saturated reward, a reward that ignores the image, "
                     "or only 'same' picks? Check the reward before training on.")
        stats = self.train_on(roll, epoch, valid_global, reward_std)
        t3 = time.perf_counter()
        stats.reduce(self.dist)
        return self.finish_epoch((t0, t1, t2, t3), raw_rewards, stats, pairs=valid_global.numel(), dropped=dropped,
                                 mean_abs_dr=abs_dr, with_kl=cfg.kl_weight > 0, failures=failures,
                                 declined=declined, pair_metrics=scores.pair_metrics)


def refuse_groups_with_pairwise(reward: Any, branches: int, reward_spec: str | None = None) -> None:
    """Raise TrainingError when `branches` > 2 meets a pairwise reward (human picks: one pick between
    the two images of a pair; `fdfo_core.rewards.pairwise`), which cannot score a group of K images.
    Front ends call it before loading a model; `FDFOTrainer` checks it again."""
    if branches > 2 and (is_pairwise(reward) or is_pairwise(getattr(reward, "inner", None))):
        name = reward_spec or (reward.describe() if hasattr(reward, "describe") else "this reward")
        raise TrainingError(
            f"{name} compares the two images of a pair (one pick between left and right), so it cannot score "
            f"groups of {branches} branches: set branches to 2 (pairs, the published setting), or train with a "
            "reward that scores each image")


def mean_abs_dr(gathered, branches: int = 2) -> float:
    """Mean |dR| over the pairs of `gathered` (per rank: pair ids, rewards a... b... (...), raw rewards);
    for groups of K = `branches`, the mean |R_k - group mean| over the branches (= |R_a - R_b| / 2 for pairs)."""
    total, count = 0.0, 0
    for ids, rs, _ in gathered:
        m = len(ids)
        for i in range(m):
            if branches == 2:
                total += abs(rs[i] - rs[m + i]) / 2
            else:
                group = [rs[j * m + i] for j in range(branches)]
                centre = sum(group) / branches
                total += sum(abs(r - centre) for r in group) / branches
            count += 1
    return total / max(count, 1)

