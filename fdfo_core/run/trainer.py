"""The FDFO training loop (ALGORITHM.md, "The epoch loop"), shared by the CLI and the ComfyUI nodes.

One epoch:
  1. sample `pairs_per_epoch` pairs (each rank its contiguous share), recording x_t and v per step;
  2. decode both branches and score them; pairs with a non-finite or missing reward are dropped
     and counted, and the run stops when too many are (fdfo_core/rewards/failure_policy.py: the policy);
  3. turn every (sample, step) into a training item, shuffle all items of all ranks with one
     permutation, and split them into `optimizer_steps_per_epoch` updates (gradient accumulation,
     clipping, AdamW).
Every random draw is seeded from (seed, epoch, global pair index), never from a running RNG, so
a resumed run replays exactly and a 2-rank run samples the same pairs as a 1-process run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..files import faults, storage
from ..backends.interface import BackendError, FlowBackend
from ..rewards.failure_policy import RewardFailures, dropped_line, score_call, too_many_bad
from .checkpoints import FORMAT as CHECKPOINT_FORMAT
from .checkpoints import checkpoint_name, latest_checkpoint, load_checkpoint, save_checkpoint
from ..flow.conditioning import Cond, cond_select, cond_to
from ..config import FDFOConfig
from .distributed import DistContext, shard_range
from .guardrails import Guardrails, best_lora_name, retired_best_lora_name
from ..flow.image_sizes import check_backend_size
from ..backends.lora_files import save_lora
from ..backends.modelspec import prompts_summary
from ..flow.objective import fdfo_loss, pair_deltas
from ..rewards.pairwise import PairContext, is_pairwise
from ..files.prompts import clean_prompt
from ..rewards.base import Reward, RewardError
from .definition import RESUMABLE_CHANGES as RESUMABLE_CHANGES  # re-exported: what a resume may change
from .definition import FrontEnd, RunDefinition, RunRecords, definition_of, differences, refusal_message, reward_fields
from ..flow.paired_sampler import ChurnSettings, guided, sample_pairs
from ..flow.seeds import derive_seed as derive_seed  # re-exported: the run's seeds
from ..flow.seeds import epoch_prompt_indices as epoch_prompt_indices
from ..flow.seeds import generator as generator
from ..files.storage import StorageError
from .run_time import RunTimeEstimate, estimate_run, format_duration, probe_forward_seconds


class TrainingInterrupted(RuntimeError):
    """Raised through the loop when the user cancels (Ctrl-C, ComfyUI's Cancel)."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


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
    trust region binds is the first thing to look at when a run misbehaves. Sums stay on the
    training device (float64) until the epoch ends, so the step loop never waits for the GPU.
    """

    T_BINS = 4

    def __init__(self) -> None:
        self._sums: torch.Tensor | None = None  # loss, ratio, clipped, kl (float64, on the device)
        self._min: torch.Tensor | None = None
        self._max: torch.Tensor | None = None
        self._bins: torch.Tensor | None = None  # [2, T_BINS]: items, clipped
        self.items = 0
        self.grad_norms: list[float] = []
        self._reduced: tuple[list[float], float, float, torch.Tensor] | None = None

    def add(self, loss: torch.Tensor, ratio: torch.Tensor, clipped: torch.Tensor, kl: torch.Tensor | None = None,
            t: torch.Tensor | None = None) -> None:
        device = ratio.device
        if self._sums is None:
            self._sums = torch.zeros(4, dtype=torch.float64, device=device)
            self._min = torch.full((), math.inf, dtype=torch.float64, device=device)
            self._max = torch.full((), -math.inf, dtype=torch.float64, device=device)
            self._bins = torch.zeros(2, self.T_BINS, dtype=torch.float64, device=device)
        r = ratio.detach().double()
        c = clipped.detach().double()
        k = kl.detach().double().sum() if kl is not None else torch.zeros((), dtype=torch.float64, device=device)
        self._sums += torch.stack([loss.detach().double().sum(), r.sum(), c.sum(), k.to(device)])
        self._min = torch.minimum(self._min, r.min())
        self._max = torch.maximum(self._max, r.max())
        if t is not None:
            b = (t.detach().float().to(device) * self.T_BINS).long().clamp(0, self.T_BINS - 1)
            self._bins[0] += torch.bincount(b, minlength=self.T_BINS).double()
            self._bins[1] += torch.bincount(b, weights=c, minlength=self.T_BINS)
        self.items += int(ratio.numel())

    def _values(self) -> tuple[list[float], float, float, torch.Tensor]:
        if self._reduced is not None:
            return self._reduced
        if self._sums is None:
            return [0.0] * 4, math.inf, -math.inf, torch.zeros(2, self.T_BINS, dtype=torch.float64)
        return self._sums.cpu().tolist(), float(self._min), float(self._max), self._bins.cpu()

    def reduce(self, dist: DistContext) -> None:
        """Sum over ranks (min / max for the ratio range)."""
        sums, lo, hi, bins = self._values()
        if dist.active:
            counts = torch.tensor([*sums, float(self.items)], dtype=torch.float64)
            bins = bins.clone()
            dist.all_reduce_([counts, bins])
            *sums, items = counts.tolist()
            self.items = int(items)
            lo = min(dist.all_gather_object(lo))
            hi = max(dist.all_gather_object(hi))
        self._reduced = (list(sums), lo, hi, bins)

    def metrics(self, with_kl: bool) -> dict[str, Any]:
        (loss, ratio_sum, clipped, kl), lo, hi, bins = self._values()
        n = max(self.items, 1)
        return {
            "loss": loss / n, "ratio_mean": ratio_sum / n if self.items else math.nan,
            "ratio_min": lo if self.items else math.nan,
            "ratio_max": hi if self.items else math.nan, "clip_fraction": clipped / n,
            "grad_norm": sum(self.grad_norms) / max(1, len(self.grad_norms)),
            "kl": kl / n if with_kl else None, "items": self.items,
            # bins of t: [0, .25), [.25, .5), [.5, .75), [.75, 1]; None where no item fell
            "clip_fraction_by_t": [float(c / i) if i else None for c, i in zip(bins[1].tolist(), bins[0].tolist())],
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
        definition: Mapping[str, Any] | None = None,
        front_end: FrontEnd | None = None,
        eval_prompts: Sequence[str] | None = None,
        judge: Reward | None = None,
    ):
        """definition: RunDefinition fields only the front end knows (preview_prompts,
        model_settings, model_source, a canonical reward spec, later features' settings); the
        trainer fills in the model fingerprint, prompts, reward and config itself.
        front_end: the words, session record and extra output folders of the front end."""
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
        #: The latest preview of the trained model (a PIL image; the front end sets it), saved as
        #: `<name>.preview.png` beside each LoRA file.
        self.preview_image: Any = None
        self.time_estimate: RunTimeEstimate | None = None  # `estimate_time`, once per session
        self._estimated = False
        self.history: list[dict[str, Any]] = []
        # Until the reward has scored one image, a failing call is a setup problem and stops the run.
        self._reward_worked = False
        self._failures = RewardFailures()
        self.front_end = front_end or FrontEnd()
        # Held-out evaluation, best LoRA and early stop (guardrails.py); None when eval_every is 0.
        try:
            self.guardrails = (Guardrails(config, reward, prompts, eval_prompts, judge, device=self.device)
                               if config.eval_every else None)
        except ValueError as e:  # settings the evaluation cannot serve (e.g. early stop with human picks, no judge)
            raise TrainingError(str(e)) from None
        definition = dict(definition or {})
        # The held-out prompts and the judge's options define what the best-LoRA criterion means.
        # Held-out prompts spread over the training prompts follow from those and are not compared
        # again; with the evaluation off there is nothing to compare (turning it off may be resumed).
        guard = self.guardrails
        guard_fields: dict[str, Any] = {}
        if guard is not None and guard.prompts_held_out:
            guard_fields["eval_prompts"] = list(guard.held.prompts)
        if guard is not None and guard.judge is not None:
            guard_fields["judge_options"] = reward_fields(guard.judge)["reward_options"]
        self.definition = RunDefinition(
            model=dict(backend.fingerprint()), prompts=list(prompts), config=config.to_dict(),
            **reward_fields(reward), **guard_fields,
            missing=frozenset() if "eval_prompts" in guard_fields else frozenset({"eval_prompts"}),
        ).replace(**definition)
        self.last_checkpoint: Path | None = None  # the newest complete checkpoint of this run
        self.rescued_lora: Path | None = None  # where the LoRA went after a failure or interrupt
        self._rescue_errors: list[str] = []
        self._resumed_from: Path | None = None
        self._branch: dict[str, Any] | None = None
        self._started = False

    # --- small helpers ---------------------------------------------------------------------------

    def _log(self, msg: str) -> None:
        if self.callbacks.log is not None and self.dist.is_main:
            self.callbacks.log(msg)

    def log(self, msg: str) -> None:
        """Write one line to the run's log (the front end's `Callbacks.log`; main rank only).
        Public for what observes the run (guardrails, the methods' shared helpers)."""
        self._log(msg)

    def progress(self, phase: str, done: int, total: int) -> None:
        """Report progress of `phase` ("sample", "reward", "train", "eval"): `done` of `total`."""
        self._progress(phase, done, total)

    def _cancel_point(self) -> None:
        if self.callbacks.check_cancel is not None:
            self.callbacks.check_cancel()

    def _progress(self, phase: str, done: int, total: int) -> None:
        if self.callbacks.on_progress is not None:
            self.callbacks.on_progress(phase, done, total)

    def estimate_time(self) -> RunTimeEstimate | None:
        """The remaining run's expected time (fdfo_core/run/run_time.py: the passes the settings make,
        priced by timing one velocity call of this model on this device), computed once per
        session; None when there is nothing left to run or the timing call failed (logged)."""
        if self._estimated:
            return self.time_estimate
        self._estimated = True
        cfg = self.config
        if self.epoch >= cfg.epochs:
            return None
        from ..backends.memory import parameter_count, tokens_per_image, transformer_module

        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):  # training's random state stays as it was
                cond = self.backend.encode_prompts([self.prompts[0]])
                shape = tuple(self.backend.latent_shape(cfg.height, cfg.width))

                def velocity(x, t, c):
                    with self._autocast():
                        return self.backend.velocity(x, t, c)

                seconds = probe_forward_seconds(velocity, cond, shape, max(1, cfg.sample_batch_size), self.device,
                                                cond_select)
            module = transformer_module(self.backend)
            params = parameter_count(module) if module is not None else None
            tokens = tokens_per_image(self.backend, shape, cond)
        except (RuntimeError, ValueError, TypeError, AttributeError) as e:  # no estimate; training goes on
            self._log(f"no time estimate ({type(e).__name__}: {e})")
            return None
        base_done = self.guardrails is not None and self.guardrails.base is not None
        self.time_estimate = estimate_run(cfg, seconds, self.epoch, base_done, params, tokens)
        return self.time_estimate

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
        # One buffer each for states and velocities, rows [a..., b...]: written in place per batch
        # (no concatenation at the end, which would hold them twice). Pinned host memory when
        # they are kept off an accelerator, so the per-step copies do not wait on pageable memory.
        shape = (2 * n, cfg.num_steps, *latent_shape)
        pin = self.storage.type == "cpu" and self.device.type == "cuda"
        all_states = torch.empty(shape, device=self.storage, pin_memory=pin)
        all_velocities = torch.empty(shape, device=self.storage, pin_memory=pin)
        final = torch.empty((2 * n, *latent_shape))
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
            all_states[start:stop], all_states[n + start:n + stop] = roll.states[:b], roll.states[b:]
            all_velocities[start:stop], all_velocities[n + start:n + stop] = roll.velocities[:b], roll.velocities[b:]
            final[start:stop], final[n + start:n + stop] = roll.final[:b].cpu(), roll.final[b:].cpu()
            del roll
            steps_done += cfg.num_steps
            faults.kill_point("sample", epoch + 1)  # crash tests only (fdfo_core.files.faults)
        return EpochRollouts(
            pair_ids=torch.arange(lo, hi), prompt_ids=prompt_idx, prompt_rows=rows, cond=cond,
            states=all_states, velocities=all_velocities, final=final, sigmas=sigmas,
        )

    # --- phase 2: decode and score ---------------------------------------------------------------

    def _score_call(self, scorer, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """One reward call under the bad-reward policy (fdfo_core/rewards/failure_policy.py): float64 [N],
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
        if is_pairwise(self.reward) or is_pairwise(getattr(self.reward, "inner", None)):
            return self._score_pairs(roll)
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

    @torch.no_grad()
    def _score_pairs(self, roll: EpochRollouts) -> torch.Tensor:
        """Decode every pair and hand them to a pairwise reward (`fdfo_core.rewards.pairwise`), which gives
        R_left - R_right per pair; image rewards are +delta / 2 and -delta / 2 (rows a..., b...),
        NaN for a pair without a score. Pairs it declined (skipped, unpicked) are counted apart
        from failures."""
        if hasattr(self.reward, "normalize") and hasattr(self.reward, "inner"):
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
            self._cancel_point()
            stop = min(total, start + cfg.decode_batch_size)
            with self._autocast():
                images.append(self.backend.decode(roll.final[start:stop].to(self.device)).float().clamp(0, 1).cpu())
            self._progress("reward", stop, total)
        images = torch.cat(images)
        pair_ids = roll.pair_ids.tolist()
        context = PairContext(
            epoch=self.epoch, pair_ids=pair_ids, seeds=[derive_seed(cfg.seed, "pair", self.epoch, p) for p in pair_ids],
            run_dir=self.run_dir, run_id=RunRecords(self.run_dir).run_id() if self.run_dir is not None else None,
            check_cancel=self.callbacks.check_cancel, log=self._log)
        self._failures = RewardFailures()
        out = self.reward.score_pairs(images[:n], images[n:], [self.prompts[i] for i in roll.prompt_ids.tolist()], context)
        delta = torch.as_tensor(out.delta, dtype=torch.float64).reshape(-1)
        if delta.shape[0] != n:
            raise RewardError(f"reward {self.reward_spec!r} returned {delta.shape[0]} pair scores for {n} pairs")
        self._declined = int(torch.as_tensor(out.declined).sum())
        self._pair_metrics = dict(out.metrics)
        roll.raw_rewards = roll.rewards = torch.cat([delta / 2, -delta / 2])
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
                x = self._to_device(roll.states[row, step])
                v_rec = self._to_device(roll.velocities[row, step])
                t = self._to_device(roll.sigmas[step])
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
            faults.kill_point("train", epoch + 1)  # crash tests only (fdfo_core.files.faults)
        return stats

    def _to_device(self, a: torch.Tensor) -> torch.Tensor:
        """A micro-batch to the training device; from the host through pinned memory without
        blocking on a GPU (the step loop does not wait for the previous micro-batch)."""
        if self.device.type == "cuda" and a.device.type == "cpu":
            return a.pin_memory().to(self.device, non_blocking=True)
        return a.to(self.device)

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
        self._declined, self._pair_metrics = 0, {}
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
        declined = self._declined  # skipped or unpicked on purpose (a pairwise reward): not failures
        if valid_global.numel() == 0 and declined >= dropped:
            self._log(f"epoch {epoch + 1}: no pair has a reward difference (all {dropped} skipped or unpicked); the "
                      "model is unchanged this epoch")
            t3 = time.perf_counter()
            return self._finish_epoch((t0, t1, t2, t3), raw_rewards, ItemStats(), pairs=0, dropped=dropped,
                                      mean_abs_dr=0.0, with_kl=cfg.kl_weight > 0)
        if valid_global.numel() == 0:
            detail = self._failures.summary()
            raise TrainingError(
                f"every one of the {cfg.pairs_per_epoch} pairs of epoch {epoch + 1} got a NaN or infinite reward "
                f"(or none) from {self.reward_spec!r}" + (f" ({detail})" if detail else "")
                + "; check the reward (weights loaded? server up? images in [0, 1]?) before training"
            )
        self._check_bad_share(dropped - declined, cfg.pairs_per_epoch - declined, "pairs")
        if dropped > declined:
            self._log(dropped_line(epoch + 1, dropped, cfg.pairs_per_epoch, "pairs", cfg.max_bad_pair_fraction,
                                   self._failures))
        self._reward_std = max(float(all_rewards.std()) if all_rewards.numel() > 1 else 1.0, 1e-8)
        # Non-finite rewards would poison the finite differences of their own pair only; zero
        # them so the arithmetic stays finite (those pairs are not among the training items).
        roll.rewards = torch.where(torch.isfinite(roll.rewards), roll.rewards, torch.zeros_like(roll.rewards))

        mean_abs_dr = self._mean_abs_dr(gathered)
        if mean_abs_dr == 0.0:
            # FDFO learns from R_left - R_right only: equal rewards give no update (ALGORITHM.md).
            self._log(f"warning: epoch {epoch + 1}: every one of the {valid_global.numel()} pairs has a zero reward "
                      f"difference (both images of each pair scored alike by {self.reward_spec!r}), so this epoch "
                      "does not change the LoRA. A constant or saturated reward, a reward that ignores the image, "
                      "or only 'same' picks? Check the reward before training on.")
        stats = self.train_on(roll, epoch, valid_global)
        t3 = time.perf_counter()
        stats.reduce(self.dist)
        return self._finish_epoch((t0, t1, t2, t3), raw_rewards, stats, pairs=valid_global.numel(), dropped=dropped,
                                  mean_abs_dr=mean_abs_dr, with_kl=cfg.kl_weight > 0)

    def _finish_epoch(self, times, rewards: torch.Tensor, stats: ItemStats, pairs: int, dropped: int,
                      mean_abs_dr: float, with_kl: bool) -> dict[str, Any]:
        """Advance the counters and record the epoch's metrics (shared with the baselines).

        times: (start, sampled, scored, trained) perf_counter stamps; rewards: every finite
        reward scored this epoch (all ranks), before any normalisation.
        """
        t0, t1, t2, t3 = times
        rewards = rewards.double()
        empty = rewards.numel() == 0  # an epoch whose pairs were all skipped
        total = pairs + dropped
        self.epoch += 1
        self.images_seen += rewards.numel()
        metrics = {
            "epoch": self.epoch,
            "images_seen": self.images_seen,
            "reward_mean": float(rewards.mean()) if not empty else math.nan,
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "reward_min": float(rewards.min()) if not empty else math.nan,
            "reward_max": float(rewards.max()) if not empty else math.nan,
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
        declined = getattr(self, "_declined", 0)
        if declined or getattr(self, "_pair_metrics", None):  # a pairwise reward (human picks)
            metrics["pairs_declined"] = declined
            metrics["bad_pair_fraction"] = (dropped - declined) / total if total else 0.0
            metrics.update(self._pair_metrics)
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
        """Run until `config.epochs` epochs are complete.

        Before the first epoch the run folder is checked and the run recorded (`start_run`).
        On any interruption or error the LoRA trained so far is written to the run folder (as
        `<name>-interrupted.safetensors`; to a fallback folder when the run folder cannot take
        it) before the exception propagates; completed checkpoints are never touched. A failed
        write stops training with one StorageError that says what could not be written and why,
        the last complete checkpoint, where the LoRA went and how to resume.
        """
        cfg = self.config
        writes = self.run_dir is not None and self.dist.is_main
        self.start_run()
        guard = self.guardrails
        try:
            estimate = self.estimate_time()
            if estimate is not None:
                self._log(estimate.line())
            if guard is not None and self.epoch < cfg.epochs:
                guard.start(self)
            first_epoch, started = self.epoch, time.perf_counter()
            while self.epoch < cfg.epochs and not (guard is not None and guard.stop_reason):
                metrics = self.train_epoch()
                pace = (time.perf_counter() - started) / max(1, self.epoch - first_epoch)
                left = f"  about {format_duration(pace * (cfg.epochs - self.epoch))} left" if self.epoch < cfg.epochs else ""
                self._log(format_metrics(metrics, cfg.epochs) + left)
                if guard is not None:
                    guard.after_epoch(self, metrics)
                if writes:
                    storage.append_line(self.run_dir / "metrics.jsonl", json.dumps(metrics), "metrics log")
                if cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.callbacks.on_epoch_end is not None:
                    self.callbacks.on_epoch_end(self, metrics)
            if writes:
                if not cfg.checkpoint_every or self.epoch % cfg.checkpoint_every:
                    self.save_checkpoint()
                self.save_lora(self.run_dir / f"{self.lora_name}.safetensors")
        except BaseException as exc:
            if writes and self.has_trained():
                self._rescue_lora(finished=self.epoch >= cfg.epochs)
            if isinstance(exc, StorageError):
                raise self._storage_failure(exc) from None
            raise
        if guard is not None:
            self._log(guard.summary(self.lora_name, self.history))
        return self.history

    def start_run(self) -> None:
        """Check the run folder and record the run before the first epoch; idempotent (train()
        calls it; a front end calls it earlier when it writes files before training).

        Checks: the run folder (and the front end's other output folders) can be created and
        written; free space against the checkpoints and LoRA files the run will write (a warning
        in the log when they will not fit); a new run does not reuse another run's folder.
        Records: run.json (the definition, plus this session and any branch), prompts.json,
        config.json; metrics.jsonl is rewritten to the epochs the run resumes from (a killed run
        may have logged epochs after its last checkpoint). Only rank 0 writes.
        """
        if self._started:
            return
        self._started = True
        if self.run_dir is None or not self.dist.is_main:
            return
        for what, folder in self.front_end.output_dirs.items():  # first: a failed check leaves no run folder
            storage.check_writable(folder, what)
        storage.check_writable(self.run_dir, "run folder")
        if self._resumed_from is None:
            self._check_new_run_folder()
        storage.remove_stale_temps(self.run_dir)  # left by a killed process
        for warning in self._space_warnings():
            self._log(warning)
        session = {"frontend": self.front_end.name, "start_epoch": self.epoch,
                   "resumed_from": str(self._resumed_from) if self._resumed_from is not None else None,
                   **self.front_end.session}
        RunRecords(self.run_dir).write(self.definition, self.config.to_json(), session, branch=self._branch)
        storage.write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.history),
                           "metrics log")

    def _check_new_run_folder(self) -> None:
        """A new run must not write into a folder that holds another run (or this run's checkpoints)."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is not None:
            raise TrainingError(
                f"{self.run_dir} already holds a run (its newest checkpoint is {ckpt.name}); a new run there would mix "
                f"the two. To continue that run: {self.front_end.resume_hint}. Otherwise: {self.front_end.new_run_hint}."
            )
        try:
            recorded = RunRecords(self.run_dir).definition()
        except FileNotFoundError:
            recorded = None
        diffs = differences(recorded, self.definition) if recorded is not None else []
        if diffs:
            raise TrainingError(
                f"{self.run_dir} holds the record of another run (run.json, no checkpoint yet) that differs in "
                + ", ".join(d.name for d in diffs) + f"; {self.front_end.new_run_hint}."
            )

    def expected_bytes(self) -> dict[str, int]:
        """What the rest of the run will write: checkpoint and LoRA file sizes (from the adapter
        parameters) and how many checkpoints remain."""
        cfg = self.config
        adapter = sum(p.numel() * p.element_size() for p in self.params)
        # adapter + two AdamW moments, the definition (prompts included) and the metrics so far
        checkpoint = 3 * adapter + len(json.dumps(self.definition.to_dict())) + 2048 * cfg.epochs + 64 * 1024
        lora = sum(t.numel() * 4 for t in self.backend.lora_file_tensors().values()) + 64 * 1024
        every = cfg.checkpoint_every
        remaining = range(self.epoch + 1, cfg.epochs + 1)
        checkpoints = sum(1 for e in remaining if every and e % every == 0)
        if cfg.epochs > self.epoch and (not every or cfg.epochs % every):
            checkpoints += 1  # the final one
        return {"checkpoint": checkpoint, "checkpoints": checkpoints, "lora": lora,
                "metrics": 2048 * len(remaining), "extra": self.front_end.extra_bytes}

    def _space_warnings(self) -> list[str]:
        size = self.expected_bytes()
        h = storage.human_bytes
        need = size["checkpoints"] * size["checkpoint"] + 2 * size["lora"] + size["metrics"] + size["extra"]
        items = (f"{size['checkpoints']} checkpoint(s) of {h(size['checkpoint'])}, the LoRA of {h(size['lora'])} "
                 f"and a spare copy, logs and previews")
        out = []
        run_dev = _device_of(self.run_dir)
        others = []
        for what, folder in self.front_end.output_dirs.items():
            if run_dev is not None and _device_of(folder) == run_dev:
                need += size["lora"]
            else:
                others.append(folder)
        warning = storage.space_warning(self.run_dir, need, items)
        if warning:
            out.append(warning)
        for folder in others:
            warning = storage.space_warning(folder, 2 * size["lora"], f"the LoRA of {h(size['lora'])} and a spare copy")
            if warning:
                out.append(warning)
        return out

    def has_trained(self) -> bool:
        """True once at least one optimizer step has changed the adapter."""
        return bool(self.optimizer.state)

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "images_seen": self.images_seen,
            "adapter": {k: v.detach().cpu().clone() for k, v in self.backend.adapter_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "definition": json.dumps(self.definition.to_dict()),
            "config": json.loads(self.config.to_json()),
            "fingerprint": dict(self.backend.fingerprint()),
            "reward": self.reward_spec,
            "reward_state": self.reward.state_dict() if hasattr(self.reward, "state_dict") else None,
            "history": json.dumps(self.history),
            "guardrails": self.guardrails.state_dict() if self.guardrails is not None else None,
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path | None:
        if not self.dist.is_main:
            return None
        if path is None:
            if self.run_dir is None:
                return None
            path = self.run_dir / "checkpoints" / checkpoint_name(self.epoch)
        saved = save_checkpoint(path, self.checkpoint_state())
        self.last_checkpoint = saved
        return saved

    def resume(self, path: str | Path, allow_change: bool = False) -> None:
        """Continue from a checkpoint file or from the newest checkpoint of a run folder.

        The trainer's definition (model, prompts, reward, options, normalisation, preview
        prompts, seed and every hyperparameter) is compared with the checkpoint's: a difference
        outside RESUMABLE_CHANGES raises RunChangeRefused listing each one, unless
        `allow_change`, which records the changes as a new branch in run.json. A run folder
        with a run record but no checkpoint yet (stopped during its first epochs) starts again
        from epoch 0 under the same rule.
        """
        path = Path(path)
        ckpt = latest_checkpoint(path) if path.is_dir() else path
        if ckpt is None:
            recorded = RunRecords(path).definition()
            if recorded is None:
                raise FileNotFoundError(f"no checkpoint-*.pt and no run record (run.json) in {path}; "
                                        "pass a checkpoint file or a run folder")
            self._check_definition(recorded, f"run folder {path}", allow_change, epoch=0, checkpoint=None)
            self._resumed_from = path
            self._log(f"{path} has no checkpoint yet: the run starts again from epoch 0")
            return
        state = load_checkpoint(ckpt)
        recorded = definition_of(state)
        if recorded is None:
            raise TrainingError(f"{ckpt} is not an FDFO checkpoint")
        self._check_definition(recorded, f"checkpoint {ckpt}", allow_change, epoch=int(state["epoch"]), checkpoint=ckpt)
        try:
            self.backend.load_adapter_state_dict(state["adapter"])
        except BackendError as e:
            raise TrainingError(
                f"checkpoint {ckpt} cannot be loaded into this model: {e}. Its LoRA has another layout (another model "
                f"size, LoRA rank or targets), which no change can continue; {self.front_end.new_run_hint}."
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if state.get("reward_state") is not None and hasattr(self.reward, "load_state_dict"):
            self.reward.load_state_dict(state["reward_state"])
        self.epoch = int(state["epoch"])
        self.images_seen = int(state["images_seen"])
        self.history = json.loads(state.get("history", "[]"))
        if self.guardrails is not None and state.get("guardrails") is not None:
            changed = self._criterion_changes()
            try:
                if changed:
                    raise ValueError(f"the best LoRA of {ckpt} was chosen by another {self.guardrails.criterion_label} "
                                     f"({changed})")
                self.guardrails.load_state_dict(state["guardrails"], where=ckpt)
            except ValueError as e:
                if not allow_change:
                    raise TrainingError(str(e)) from e
                kept = self._retire_best_lora(self.epoch)
                self._log(f"{e}; with the change allowed, the held-out evaluation starts again from here "
                          "(the base model is evaluated anew and the best LoRA is chosen among the epochs to come"
                          + (f"; the best LoRA so far is kept as {kept.name})" if kept else ")"))
        self.last_checkpoint = self._resumed_from = ckpt
        self._log(f"resumed from {ckpt} at epoch {self.epoch}")

    def _criterion_changes(self) -> str:
        """The recorded changes of this resume (an allowed branch) that change what the held-out
        criterion measures: the reward (spec, options, normalisation) when the criterion is the
        held-out reward, the judge when it is the judge; "" when none."""
        guard = self.guardrails
        if guard is None or not self._branch:
            return ""
        if guard.criterion == "judge":
            hits = [c for c in self._branch["changes"]
                    if c["field"] == "judge_options" or (c["field"] == "config" and c["key"] == "judge")]
        elif guard.criterion == "heldout_reward":
            hits = [c for c in self._branch["changes"] if c["field"] in ("reward", "reward_options", "reward_normalization")]
        else:
            hits = []
        return ", ".join(sorted({c["field"] + (f".{c['key']}" if c.get("key") else "") for c in hits}))

    def _retire_best_lora(self, epoch: int) -> Path | None:
        """Keep the best LoRA of a criterion that no longer holds under its own name
        (`retired_best_lora_name`), so the next best under the new criterion cannot overwrite it.
        Returns the kept file, or None when there was none (or this rank does not write)."""
        if self.run_dir is None or not self.dist.is_main:
            return None
        best = self.run_dir / best_lora_name(self.lora_name)
        if not best.exists():
            return None
        kept = self.run_dir / retired_best_lora_name(self.lora_name, epoch)
        storage.copy_file(best, kept, what="best LoRA of the earlier criterion")
        best.unlink()
        return kept

    def _check_definition(self, recorded: RunDefinition, source: str, allow_change: bool, epoch: int,
                          checkpoint: Path | None) -> None:
        if isinstance(recorded.config, dict):  # a setting added after the run was recorded compares as its default
            recorded = recorded.replace(config={**FDFOConfig().to_dict(), **recorded.config})
        if recorded.eval_prompts is None:  # recorded with the evaluation off: turning it on is allowed
            recorded = recorded.replace(missing=recorded.missing | {"eval_prompts"})
        diffs = differences(recorded, self.definition)
        if not diffs:
            return
        record = self.run_dir / "run.json" if self.run_dir is not None else None
        if not allow_change:
            raise RunChangeRefused(refusal_message(source, diffs, self.front_end, record), diffs)
        self._branch = {"epoch": epoch, "checkpoint": str(checkpoint) if checkpoint else None,
                        "changes": [d.to_dict() for d in diffs]}
        self._log(f"continuing {source} with changes, recorded as a new branch of the run"
                  + (f" in {record}" if record else "") + ": " + "; ".join(d.describe() for d in diffs))

    # --- failures: rescue the LoRA, say what happened ---------------------------------------------

    def _rescue_lora(self, finished: bool) -> None:
        """Write the LoRA trained so far: the run folder first, then fallback folders. Never raises."""
        name = f"{self.lora_name}.safetensors" if finished else f"{self.lora_name}-interrupted.safetensors"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        targets = [self.run_dir / name] + [folder / f"{self.run_dir.name}-{stamp}-{name}" for folder in fallback_dirs()]
        self._rescue_errors = []
        for target in targets:
            try:
                if target.parent != self.run_dir:
                    storage.ensure_dir(target.parent, "fallback folder", parents=True)
                self.rescued_lora = self.save_lora(target)
            except StorageError as e:
                self._rescue_errors.append(f"{target.parent}: {e.reason}")
                continue
            except Exception as e:  # the adapter itself cannot be read out: no place will help
                self._rescue_errors.append(f"{type(e).__name__}: {e}")
                return
            where = "" if target.parent == self.run_dir else " (the run folder could not take it)"
            self._log(f"interrupted: the LoRA trained so far is in {self.rescued_lora}{where}")
            return

    def _storage_failure(self, exc: StorageError) -> StorageError:
        """One message for a write that failed mid-run: what and why, the last complete
        checkpoint, where the LoRA trained so far went, and how to resume."""
        cfg = self.config
        lines = [str(exc), f"Training stopped after epoch {self.epoch} of {cfg.epochs}."]
        last = self.last_checkpoint if self.last_checkpoint is not None and self.last_checkpoint.exists() else None
        if last is not None:
            lines.append(f"Last complete checkpoint: {last}.")
        else:
            lines.append("No checkpoint was written yet, so resuming starts the run again from epoch 0.")
        if self.rescued_lora is not None:
            lines.append(f"The LoRA trained so far (epoch {self.epoch}) is in {self.rescued_lora}.")
        elif self.has_trained():
            why = "; ".join(self._rescue_errors) or "unknown reason"
            kept = "; the last checkpoint holds the LoRA of its epoch" if last is not None else ""
            lines.append(f"The LoRA trained so far could not be written anywhere ({why}): it is lost{kept}.")
        lines.append(f"To continue once that is fixed: {self.front_end.resume_hint}.")
        return StorageError("\n".join(lines), path=exc.path, reason=exc.reason, errno_=exc.errno)

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
            **(self.backend.sampling_options() if hasattr(self.backend, "sampling_options") else {}),
            "fingerprint": dict(self.backend.fingerprint()),
            "trainer": "fdfo",
            "prompts_summary": prompts_summary(self.prompts),
        }

    def save_lora(self, path: str | Path, extra_metadata: dict[str, Any] | None = None, what: str = "LoRA file",
                  preview: Any = None) -> Path:
        """Write the LoRA with its `fdfo.*` and SAI model-spec metadata (fdfo_core/backends/modelspec.py), and
        `<name>.preview.png` beside it from `preview` (a PIL image), else the front end's latest
        preview (`self.preview_image`); both atomically."""
        from ..backends.modelspec import backend_variant, modelspec_metadata, preview_path
        from ..files.drawing import save_png

        extra = dict(extra_metadata or {})
        image = preview if preview is not None else self.preview_image
        family = getattr(self.backend, "model_family", None)
        selected = (f"the best held-out {extra['selected_by']} ({extra.get('criterion_value')}) at epoch "
                    f"{extra.get('best_epoch')}" if "selected_by" in extra else None)

        def spec(tensors):
            return modelspec_metadata(
                title=Path(path).stem, family=self.backend.family, variant=backend_variant(self.backend),
                family_title=getattr(family, "title", self.backend.family), reward=self.reward_spec,
                prompts=self.prompts, config=self.config, epochs=extra.get("best_epoch", self.epoch),
                images_seen=self.images_seen, tensors=tensors, preview=image, selected=selected)

        meta = {**self.lora_metadata(), **extra}
        out = save_lora(path, self.backend.lora_file_tensors(), meta, what=what, standard_metadata=spec)
        if image is not None:
            save_png(image, preview_path(out), f"preview image of {Path(out).name}")
        return out


class RunChangeRefused(TrainingError):
    """A resume would change what defines the run; the message lists each difference and how to
    proceed. `diffs`: the `definition.Difference` list."""

    def __init__(self, message: str, diffs: Sequence[Any]):
        super().__init__(message)
        self.diffs = list(diffs)


def fallback_dirs() -> list[Path]:
    """Where a LoRA goes when its usual folder cannot be written: the temp folder, then home."""
    return [Path(tempfile.gettempdir()) / "fdfo-rescue", Path.home() / "fdfo-rescue"]


def _device_of(path: Path) -> int | None:
    folder = storage._existing_ancestor(Path(path))
    try:
        return os.stat(folder).st_dev if folder is not None else None
    except OSError:
        return None


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
