"""The FDFO training loop (ALGORITHM.md, "The epoch loop"), shared by the CLI and the ComfyUI nodes.

One epoch:
  1. sample `pairs_per_epoch` pairs (each rank its contiguous share), recording x_t and v per step;
  2. decode both branches and score them; pairs with a non-finite or missing reward are dropped
     and counted, and the run stops when too many are (fdfo_core/bad_rewards.py: the policy);
  3. turn every (sample, step) into a training item, shuffle all items of all ranks with one
     permutation, and split them into `optimizer_steps_per_epoch` updates (gradient accumulation,
     clipping, AdamW).
Every random draw is seeded from (seed, epoch, global pair index), never from a running RNG, so
a resumed run replays exactly and a 2-rank run samples the same pairs as a 1-process run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .backend import FlowBackend
from .bad_rewards import RewardFailures, dropped_line, score_call, too_many_bad
from .checkpoint import checkpoint_name, latest_checkpoint, load_checkpoint, save_checkpoint
from .conditioning import Cond, cond_select, cond_to
from .config import FDFOConfig
from .distributed import DistContext, shard_range
from .image_size import check_backend_size
from .lora_files import save_lora
from .objective import fdfo_loss, pair_deltas
from .prompts import clean_prompt
from .rewards.base import Reward, RewardError
from .sampler import ChurnSettings, guided, sample_pairs

#: Config fields a resumed run may change without breaking the replay.
RESUMABLE_CHANGES = frozenset({"epochs", "checkpoint_every", "storage_device", "train_batch_size",
                               "decode_batch_size", "sample_batch_size", "gradient_checkpointing",
                               "max_bad_pair_fraction"})


class TrainingInterrupted(RuntimeError):
    """Raised through the loop when the user cancels (Ctrl-C, ComfyUI's Cancel)."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from (seed, purpose, epoch, index...), stable across processes and platforms."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_prompt_indices(seed: int, epoch: int, num_prompts: int, num_pairs: int) -> torch.Tensor:
    """Which prompt each pair of an epoch uses: walks through fresh random permutations."""
    g = generator(seed, "prompts", epoch)
    reps = math.ceil(num_pairs / num_prompts)
    return torch.cat([torch.randperm(num_prompts, generator=g) for _ in range(reps)])[:num_pairs]


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. The adapter itself always stays fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ValueError(f"unknown precision {precision!r}")


@dataclass
class Callbacks:
    """Hooks for front ends. All optional; the ComfyUI nodes and the CLI use the same loop."""

    #: (phase, done, total) with phase in {"sample", "reward", "train"}; called often, keep it cheap.
    on_progress: Callable[[str, int, int], None] | None = None
    #: Called after every epoch with its metrics (rank 0 and others alike).
    on_epoch_end: Callable[["FDFOTrainer", dict[str, Any]], None] | None = None
    #: Raise (e.g. TrainingInterrupted) to stop; called at least once per model call.
    check_cancel: Callable[[], None] | None = None
    #: Log lines (one per epoch and for notable events).
    log: Callable[[str], None] | None = print


@dataclass
class EpochRollouts:
    """What one rank recorded in the sampling phase of an epoch."""

    pair_ids: torch.Tensor  # [n] global pair indices owned by this rank
    prompt_ids: torch.Tensor  # [n] index into the prompt list of each pair
    prompt_rows: torch.Tensor  # [n] row of each pair in `cond`
    cond: Cond
    states: torch.Tensor  # [2n, S, C, h, w] rows: a of pair 0..n-1, then b of pair 0..n-1
    velocities: torch.Tensor
    final: torch.Tensor  # [2n, C, h, w]
    sigmas: torch.Tensor
    rewards: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [2n] what training uses
    raw_rewards: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [2n] before normalisation


class ItemStats:
    """Per-item training diagnostics of an epoch, summed over micro-batches (and ranks).

    The clip fraction is also binned by flow time t (4 bins over [0, 1]): where in the chain the
    trust region binds is the first thing to look at when a run misbehaves.
    """

    T_BINS = 4

    def __init__(self) -> None:
        self.loss = self.ratio_sum = self.clipped = self.kl = 0.0
        self.items = 0
        self.ratio_min, self.ratio_max = math.inf, -math.inf
        self.grad_norms: list[float] = []
        self.bin_items = torch.zeros(self.T_BINS, dtype=torch.float64)
        self.bin_clipped = torch.zeros(self.T_BINS, dtype=torch.float64)

    def add(self, loss: torch.Tensor, ratio: torch.Tensor, clipped: torch.Tensor, kl: torch.Tensor | None = None,
            t: torch.Tensor | None = None) -> None:
        if t is not None:
            b = (t.detach().float().cpu() * self.T_BINS).long().clamp(0, self.T_BINS - 1)
            self.bin_items += torch.bincount(b, minlength=self.T_BINS).double()
            self.bin_clipped += torch.bincount(b, weights=clipped.detach().cpu().double(), minlength=self.T_BINS)
        self.loss += float(loss.detach().sum())
        self.ratio_sum += float(ratio.sum())
        self.clipped += float(clipped.sum())
        self.items += int(ratio.numel())
        self.ratio_min = min(self.ratio_min, float(ratio.min()))
        self.ratio_max = max(self.ratio_max, float(ratio.max()))
        if kl is not None:
            self.kl += float(kl.sum())

    def reduce(self, dist: DistContext) -> None:
        """Sum over ranks (min / max for the ratio range)."""
        if not dist.active:
            return
        counts = torch.tensor([self.loss, self.ratio_sum, self.clipped, float(self.items), self.kl], dtype=torch.float64)
        dist.all_reduce_([counts, self.bin_items, self.bin_clipped])
        self.loss, self.ratio_sum, self.clipped, items, self.kl = counts.tolist()
        self.items = int(items)
        self.ratio_min = min(dist.all_gather_object(self.ratio_min))
        self.ratio_max = max(dist.all_gather_object(self.ratio_max))

    def metrics(self, with_kl: bool) -> dict[str, Any]:
        n = max(self.items, 1)
        return {
            "loss": self.loss / n, "ratio_mean": self.ratio_sum / n, "ratio_min": self.ratio_min,
            "ratio_max": self.ratio_max, "clip_fraction": self.clipped / n,
            "grad_norm": sum(self.grad_norms) / max(1, len(self.grad_norms)),
            "kl": self.kl / n if with_kl else None, "items": self.items,
            # bins of t: [0, .25), [.25, .5), [.5, .75), [.75, 1]; None where no item fell
            "clip_fraction_by_t": [float(c / i) if i else None for c, i in zip(self.bin_clipped, self.bin_items)],
        }


class FDFOTrainer:
    def __init__(
        self,
        backend: FlowBackend,
        reward: Reward,
        prompts: Sequence[str],
        config: FDFOConfig,
        run_dir: str | Path | None = None,
        callbacks: Callbacks | None = None,
        dist: DistContext | None = None,
        reward_spec: str | None = None,
        lora_name: str = "lora",
    ):
        config.validate()
        prompts = [clean_prompt(p) for p in prompts]  # stray byte-order marks never reach the encoder
        prompts = [p for p in prompts if p]
        if not prompts:
            raise TrainingError("the prompt list is empty: give at least one non-empty prompt (one per line)")
        check_backend_size(backend, config.height, config.width)  # before any model work
        self.backend = backend
        self.reward = reward
        self.reward_spec = reward_spec or reward.describe()
        self.prompts = prompts
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = callbacks or Callbacks()
        self.dist = dist or DistContext()
        self.lora_name = lora_name
        self.device = torch.device(backend.device)
        self.amp = amp_dtype(config.precision, self.device)
        self.storage = torch.device("cpu") if config.storage_device == "cpu" else self.device
        self.params = backend.trainable_parameters()
        if not self.params:
            raise TrainingError("the backend has no trainable adapter parameters")
        for p in self.params:
            if p.dtype != torch.float32:
                raise TrainingError(f"adapter parameters must be fp32 (got {p.dtype}); the backend must upcast them")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay, eps=config.adam_eps,
        )
        # Loss scaling is needed for fp16 only; bf16 has fp32's range. The scaler is saved either way.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.epoch = 0  # completed epochs
        self.images_seen = 0
        self.history: list[dict[str, Any]] = []
        # Until the reward has scored one image, a failing call is a setup problem and stops the run.
        self._reward_worked = False
        self._failures = RewardFailures()

    # --- small helpers ---------------------------------------------------------------------------

    def _log(self, msg: str) -> None:
        if self.callbacks.log is not None and self.dist.is_main:
            self.callbacks.log(msg)

    def _cancel_point(self) -> None:
        if self.callbacks.check_cancel is not None:
            self.callbacks.check_cancel()

    def _progress(self, phase: str, done: int, total: int) -> None:
        if self.callbacks.on_progress is not None:
            self.callbacks.on_progress(phase, done, total)

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _velocity_fn(self, uncond: Cond | None):
        def velocity(x, t, cond):
            self._cancel_point()
            with self._autocast():
                return self.backend.velocity(x, t, cond).float()

        return guided(velocity, self.config.cfg_scale, uncond)

    # --- phase 1: paired sampling ----------------------------------------------------------------

    @torch.no_grad()
    def sample_epoch(self, epoch: int) -> EpochRollouts:
        cfg = self.config
        lo, hi = shard_range(cfg.pairs_per_epoch, self.dist.rank, self.dist.world_size)
        prompt_idx = epoch_prompt_indices(cfg.seed, epoch, len(self.prompts), cfg.pairs_per_epoch)[lo:hi]
        unique, rows = torch.unique(prompt_idx, return_inverse=True)
        cond = self.backend.encode_prompts([self.prompts[i] for i in unique.tolist()])
        uncond = self.backend.encode_prompts([cfg.negative_prompt]) if cfg.cfg_scale != 1.0 else None
        cond = cond_to(cond, self.storage)
        self._uncond = uncond
        latent_shape = self.backend.latent_shape(cfg.height, cfg.width)
        sigmas = self.backend.sigmas(cfg.num_steps, cfg.height, cfg.width).float().cpu()
        churn = ChurnSettings(cfg.churn, cfg.churn_strength, cfg.interval_mean, cfg.interval_std, cfg.interval_width)
        velocity = self._velocity_fn(uncond)

        n = hi - lo
        shape = (n, cfg.num_steps, *latent_shape)
        states = {k: torch.empty(shape, device=self.storage) for k in ("sa", "sb", "va", "vb")}
        final_a = torch.empty((n, *latent_shape))
        final_b = torch.empty((n, *latent_shape))
        steps_done, steps_total = 0, math.ceil(n / cfg.sample_batch_size) * cfg.num_steps
        for start in range(0, n, cfg.sample_batch_size):
            stop = min(n, start + cfg.sample_batch_size)
            gens = [generator(cfg.seed, "pair", epoch, lo + j) for j in range(start, stop)]

            def on_step(i, total, _base=steps_done):
                self._progress("sample", _base + i, steps_total)

            roll = sample_pairs(
                velocity, cond_to(cond_select(cond, rows[start:stop]), self.device), gens, latent_shape, sigmas,
                churn, device=self.device, storage_device=self.storage, on_step=on_step,
            )
            b = stop - start
            states["sa"][start:stop], states["sb"][start:stop] = roll.states[:b], roll.states[b:]
            states["va"][start:stop], states["vb"][start:stop] = roll.velocities[:b], roll.velocities[b:]
            final_a[start:stop], final_b[start:stop] = roll.final[:b].cpu(), roll.final[b:].cpu()
            steps_done += cfg.num_steps
        return EpochRollouts(
            pair_ids=torch.arange(lo, hi), prompt_ids=prompt_idx, prompt_rows=rows, cond=cond,
            states=torch.cat([states.pop("sa"), states.pop("sb")]),
            velocities=torch.cat([states.pop("va"), states.pop("vb")]),
            final=torch.cat([final_a, final_b]), sigmas=sigmas,
        )

    # --- phase 2: decode and score ---------------------------------------------------------------

    def _score_call(self, scorer, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """One reward call under the bad-reward policy (fdfo_core/bad_rewards.py): float64 [N],
        NaN for images without a usable reward, recorded in this epoch's `self._failures`."""
        scores = score_call(scorer, images, prompts, self._failures, self.reward_spec, strict=not self._reward_worked)
        self._reward_worked = self._reward_worked or bool(torch.isfinite(scores).any())
        return scores

    def _check_bad_share(self, bad: int, total: int, unit: str, certain: bool = False) -> None:
        """Stop the run when more than max_bad_pair_fraction of the epoch's `unit`s are lost."""
        limit = self.config.max_bad_pair_fraction
        if bad > limit * total:
            raise TrainingError(too_many_bad(self.epoch + 1, bad, total, unit, limit, self.reward_spec,
                                             self._failures, certain=certain))

    @torch.no_grad()
    def score(self, roll: EpochRollouts) -> torch.Tensor:
        """Decode and score both branches: float64 [2n] (rows a..., b...), NaN where an image has
        no usable reward (missing, non-finite, or its reward call failed)."""
        n = roll.pair_ids.numel()
        prompts = [self.prompts[i] for i in roll.prompt_ids.tolist()] * 2
        # A per-prompt normalising reward must see all of a prompt's images at once: score raw
        # chunks with the inner reward, normalise once at the end.
        normalizer = self.reward if hasattr(self.reward, "normalize") and hasattr(self.reward, "inner") else None
        scorer = normalizer.inner if normalizer is not None else self.reward
        self._failures = RewardFailures()
        rewards = []
        total = roll.final.shape[0]
        bad_rows = torch.zeros(total, dtype=torch.bool)
        for start in range(0, total, self.config.decode_batch_size):
            self._cancel_point()
            stop = min(total, start + self.config.decode_batch_size)
            with self._autocast():
                images = self.backend.decode(roll.final[start:stop].to(self.device)).float()
            r = self._score_call(scorer, images, prompts[start:stop])
            rewards.append(r)
            bad_rows[start:stop] = ~torch.isfinite(r)
            self._progress("reward", stop, total)
            if not self.dist.active:  # (ranks decide together, after the gather)
                self._check_bad_share(int((bad_rows[:n] | bad_rows[n:]).sum()), n, "pairs", certain=stop < total)
        raw = torch.cat(rewards) if rewards else torch.zeros(0, dtype=torch.float64)
        if raw.shape[0] != 2 * n:
            raise RewardError(f"reward {self.reward_spec!r} returned {raw.shape[0]} scores for {2 * n} images")
        roll.raw_rewards = raw
        if normalizer is not None:  # NaN stays NaN and is left out of the statistics
            raw = normalizer.normalize(raw.float(), prompts).double()
        roll.rewards = raw
        return roll.rewards

    # --- phase 3: train on all (sample, step) items -----------------------------------------------

    def _global_items(self, epoch: int, valid_pairs: torch.Tensor) -> torch.Tensor:
        """All training items of the epoch as rows (global pair, branch, step), shuffled with the
        permutation every rank computes identically."""
        cfg = self.config
        items = []
        for gp in valid_pairs.tolist():
            for branch in (0, 1):
                if cfg.steps_per_sample:
                    g = generator(cfg.seed, "steps", epoch, gp, branch)
                    steps = torch.randperm(cfg.num_steps, generator=g)[: cfg.steps_per_sample].sort().values
                else:
                    steps = torch.arange(cfg.num_steps)
                items.append(torch.stack([torch.full_like(steps, gp), torch.full_like(steps, branch), steps], 1))
        items = torch.cat(items)
        perm = torch.randperm(items.shape[0], generator=generator(cfg.seed, "items", epoch))
        return items[perm]

    def train_on(self, roll: EpochRollouts, epoch: int, valid_global: torch.Tensor) -> ItemStats:
        cfg = self.config
        n = roll.pair_ids.numel()
        lo = int(roll.pair_ids[0]) if n else 0
        # Finite differences of every local pair (dropped pairs are never indexed).
        dr, dxn = pair_deltas(roll.rewards.float(), roll.final)
        if cfg.reward_normalization == "std":
            dr = dr / self._reward_std
        items = self._global_items(epoch, valid_global)
        chunks = torch.tensor_split(items, cfg.optimizer_steps_per_epoch)
        stats = ItemStats()
        uncond = self._uncond
        velocity = self._velocity_fn(uncond)
        mine_total = int(((items[:, 0] >= lo) & (items[:, 0] < lo + n)).sum())
        done = 0
        for chunk in chunks:
            chunk_size = chunk.shape[0]  # global count: every rank divides by the same number
            mine = chunk[(chunk[:, 0] >= lo) & (chunk[:, 0] < lo + n)]
            for start in range(0, mine.shape[0], cfg.train_batch_size):
                mb = mine[start : start + cfg.train_batch_size]
                local_pair = mb[:, 0] - lo
                row = local_pair + mb[:, 1] * n  # row in the [a..., b...] layout
                step = mb[:, 2]
                x = roll.states[row, step].to(self.device)
                v_rec = roll.velocities[row, step].to(self.device)
                t = roll.sigmas[step].to(self.device)
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
                self._progress("train", done, mine_total)
            stats.grad_norms.append(self._optimizer_step())
        return stats

    def _optimizer_step(self) -> float:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.dist.all_reduce_([p.grad for p in self.params])
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # --- one epoch, end to end -------------------------------------------------------------------

    def train_epoch(self) -> dict[str, Any]:
        cfg = self.config
        epoch = self.epoch
        t0 = time.perf_counter()
        roll = self.sample_epoch(epoch)
        t1 = time.perf_counter()
        rewards = self.score(roll)
        t2 = time.perf_counter()

        n = roll.pair_ids.numel()
        finite = torch.isfinite(rewards)
        valid_local = finite[:n] & finite[n:]
        both = torch.cat([valid_local, valid_local])
        gathered = self.dist.all_gather_object(
            (roll.pair_ids[valid_local].tolist(), rewards[both].tolist(), roll.raw_rewards[both].tolist())
        )
        self._failures = RewardFailures.merged(self.dist.all_gather_object(self._failures.state()))
        valid_global = torch.tensor(sorted(p for ids, _, _ in gathered for p in ids), dtype=torch.long)
        all_rewards = torch.tensor([r for _, rs, _ in gathered for r in rs], dtype=torch.float64)
        raw_rewards = torch.tensor([r for _, _, rs in gathered for r in rs], dtype=torch.float64)
        dropped = cfg.pairs_per_epoch - valid_global.numel()
        if valid_global.numel() == 0:
            detail = self._failures.summary()
            raise TrainingError(
                f"every one of the {cfg.pairs_per_epoch} pairs of epoch {epoch + 1} got a NaN or infinite reward "
                f"(or none) from {self.reward_spec!r}" + (f" ({detail})" if detail else "")
                + "; check the reward (weights loaded? server up? images in [0, 1]?) before training"
            )
        self._check_bad_share(dropped, cfg.pairs_per_epoch, "pairs")
        if dropped:
            self._log(dropped_line(epoch + 1, dropped, cfg.pairs_per_epoch, "pairs", cfg.max_bad_pair_fraction,
                                   self._failures))
        self._reward_std = max(float(all_rewards.std()) if all_rewards.numel() > 1 else 1.0, 1e-8)
        # Non-finite rewards would poison the finite differences of their own pair only; zero
        # them so the arithmetic stays finite (those pairs are not among the training items).
        roll.rewards = torch.where(torch.isfinite(roll.rewards), roll.rewards, torch.zeros_like(roll.rewards))

        stats = self.train_on(roll, epoch, valid_global)
        t3 = time.perf_counter()
        stats.reduce(self.dist)
        return self._finish_epoch((t0, t1, t2, t3), raw_rewards, stats, pairs=valid_global.numel(), dropped=dropped,
                                  mean_abs_dr=self._mean_abs_dr(gathered), with_kl=cfg.kl_weight > 0)

    def _finish_epoch(self, times, rewards: torch.Tensor, stats: ItemStats, pairs: int, dropped: int,
                      mean_abs_dr: float, with_kl: bool) -> dict[str, Any]:
        """Advance the counters and record the epoch's metrics (shared with the baselines).

        times: (start, sampled, scored, trained) perf_counter stamps; rewards: every finite
        reward scored this epoch (all ranks), before any normalisation.
        """
        t0, t1, t2, t3 = times
        rewards = rewards.double()
        total = pairs + dropped
        self.epoch += 1
        self.images_seen += rewards.numel()
        metrics = {
            "epoch": self.epoch,
            "images_seen": self.images_seen,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "reward_min": float(rewards.min()),
            "reward_max": float(rewards.max()),
            "mean_abs_dR": mean_abs_dr,
            "pairs": pairs,
            "pairs_dropped": dropped,
            # images without a usable reward (NaN, infinite, missing, or a failed reward call), failed calls
            **self._failures.metrics(),
            "bad_pair_fraction": dropped / total if total else 0.0,
            **stats.metrics(with_kl),
            "time_sample": t1 - t0,
            "time_reward": t2 - t1,
            "time_train": t3 - t2,
            "time_epoch": t3 - t0,
        }
        self.history.append(metrics)
        return metrics

    @staticmethod
    def _mean_abs_dr(gathered) -> float:
        total, count = 0.0, 0
        for ids, rs, _ in gathered:
            k = len(ids)
            for i in range(k):
                total += abs(rs[i] - rs[k + i]) / 2
                count += 1
        return total / max(count, 1)

    # --- the loop, checkpoints and LoRA files ----------------------------------------------------

    def train(self) -> list[dict[str, Any]]:
        """Run until `config.epochs` epochs are complete. On any interruption or error the LoRA
        trained so far is written to the run folder (as `<name>-interrupted.safetensors`) before
        the exception propagates; completed checkpoints are never touched."""
        cfg = self.config
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(self.config.to_json())
        try:
            while self.epoch < cfg.epochs:
                metrics = self.train_epoch()
                self._log(format_metrics(metrics, cfg.epochs))
                if self.run_dir is not None and self.dist.is_main:
                    with open(self.run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                if cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.callbacks.on_epoch_end is not None:
                    self.callbacks.on_epoch_end(self, metrics)
        except BaseException:
            if self.run_dir is not None and self.dist.is_main and self.has_trained():
                path = self.save_lora(self.run_dir / f"{self.lora_name}-interrupted.safetensors")
                self._log(f"interrupted: the LoRA trained so far is in {path}")
            raise
        if self.run_dir is not None and self.dist.is_main:
            if not cfg.checkpoint_every or self.epoch % cfg.checkpoint_every:
                self.save_checkpoint()
            self.save_lora(self.run_dir / f"{self.lora_name}.safetensors")
        return self.history

    def has_trained(self) -> bool:
        """True once at least one optimizer step has changed the adapter."""
        return bool(self.optimizer.state)

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": "fdfo-checkpoint-1",
            "epoch": self.epoch,
            "images_seen": self.images_seen,
            "adapter": {k: v.detach().cpu().clone() for k, v in self.backend.adapter_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "config": json.loads(self.config.to_json()),
            "fingerprint": dict(self.backend.fingerprint()),
            "reward": self.reward_spec,
            "reward_state": self.reward.state_dict() if hasattr(self.reward, "state_dict") else None,
            "history": json.dumps(self.history),
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path | None:
        if not self.dist.is_main:
            return None
        if path is None:
            if self.run_dir is None:
                return None
            path = self.run_dir / "checkpoints" / checkpoint_name(self.epoch)
        return save_checkpoint(path, self.checkpoint_state())

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint file or from the newest checkpoint of a run folder."""
        state = load_checkpoint(path)
        if state.get("format") != "fdfo-checkpoint-1":
            raise TrainingError(f"{path} is not an FDFO checkpoint")
        mine = dict(self.backend.fingerprint())
        theirs = dict(state["fingerprint"])
        if mine != theirs:
            diff = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
            raise TrainingError(
                f"checkpoint {path} was trained on another model or adapter layout: "
                + "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
                + ". Resume with the same model and LoRA settings, or start a new run."
            )
        now = json.loads(self.config.to_json())
        changed = {k for k in set(now) | set(state["config"]) if now.get(k) != state["config"].get(k)} - RESUMABLE_CHANGES
        if changed:
            raise TrainingError(
                f"checkpoint {path} was trained with a different config: "
                + ", ".join(f"{k}={state['config'].get(k)!r} (now {now.get(k)!r})" for k in sorted(changed))
                + ". Resume with the run's own config.json (only "
                + ", ".join(sorted(RESUMABLE_CHANGES)) + " may change)."
            )
        self.backend.load_adapter_state_dict(state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if state.get("reward_state") is not None and hasattr(self.reward, "load_state_dict"):
            self.reward.load_state_dict(state["reward_state"])
        self.epoch = int(state["epoch"])
        self.images_seen = int(state["images_seen"])
        self.history = json.loads(state.get("history", "[]"))
        self._log(f"resumed from {path} at epoch {self.epoch}")

    def lora_metadata(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "base_model_family": self.backend.family,
            "reward": self.reward_spec,
            "cfg_scale": cfg.cfg_scale,
            "epochs": self.epoch,
            "images_seen": self.images_seen,
            "lora_rank": cfg.lora_rank,
            "lora_alpha": cfg.lora_alpha,
            "config": cfg.to_dict(),
            # What `fdfo sample --lora` needs beyond the config to sample as the LoRA was trained.
            **{k: getattr(self.backend, k) for k in ("max_sequence_length", "flux_guidance")
               if getattr(self.backend, k, None) is not None and (k != "flux_guidance" or self.backend.family == "flux")},
            "fingerprint": dict(self.backend.fingerprint()),
            "trainer": "fdfo",
        }

    def save_lora(self, path: str | Path) -> Path:
        return save_lora(path, self.backend.lora_file_tensors(), self.lora_metadata())


def format_metrics(m: dict[str, Any], total_epochs: int) -> str:
    return (
        f"epoch {m['epoch']}/{total_epochs}  reward {m['reward_mean']:.4f} +- {m['reward_std']:.4f}  "
        f"|dR| {m['mean_abs_dR']:.4f}  clip {m['clip_fraction']:.3f}  ratio {m['ratio_mean']:.4f} "
        f"[{m['ratio_min']:.3f}, {m['ratio_max']:.3f}]  grad {m['grad_norm']:.3g}  "
        f"pairs {m['pairs']}{' (dropped ' + str(m['pairs_dropped']) + ')' if m['pairs_dropped'] else ''}  "
        f"{m['time_epoch']:.1f}s"
    )


def resume_point(run_dir: str | Path) -> Path | None:
    return latest_checkpoint(run_dir)
