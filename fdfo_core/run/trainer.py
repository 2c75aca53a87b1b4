"""The run loop around any training method (ALGORITHM.md, "The epoch loop"), shared by the CLI and
the ComfyUI nodes: epochs, the optimizer step, decode-and-score under the failure policy
(fdfo_core/rewards/failure_policy.py), checkpoints as named state parts, the run folder and its
records, the rescue of the LoRA on a failure, and the hooks of the guardrails (held-out evaluation,
best LoRA, early stop) and of the front end (`Callbacks`: progress, cancel, log).

A method is a subclass of `RunLoop` in fdfo_core/methods/ (FDFO: methods/fdfo.py) that implements
`train_epoch`; `RunLoop`'s docstring lists what a method implements and what it may call.
Every random draw is seeded from (seed, epoch, index), never from a running RNG, so a resumed run
replays exactly and a 2-rank run samples the same as a 1-process run.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..files import storage
from ..backends.interface import BackendError, FlowBackend
from ..rewards.failure_policy import RewardFailures, score_call, too_many_bad
from .checkpoints import FORMAT as CHECKPOINT_FORMAT
from .checkpoints import (checkpoint_files, checkpoint_name, checkpoint_run_id, latest_checkpoint, load_checkpoint,
                          save_checkpoint)
from ..flow.conditioning import Cond
from ..config import FDFOConfig
from .distributed import DistContext
from .guardrails import Guardrails, criterion_changes, retire_best_lora
from .preflight import expected_bytes, space_warnings
from ..flow.image_sizes import check_backend_size
from ..backends.modelspec import prompts_summary, save_lora_with_spec
from ..files.prompts import clean_prompt
from ..rewards.base import Reward, RewardError, error_text, is_fatal
from .definition import RESUMABLE_CHANGES as RESUMABLE_CHANGES  # re-exported: what a resume may change
from .definition import (FrontEnd, RunDefinition, RunRecords, definition_of, differences, new_run_id, refusal_message,
                         reward_fields)
from ..flow.paired_sampler import guided
from ..flow.seeds import derive_seed as derive_seed  # re-exported: the run's seeds
from ..flow.seeds import epoch_prompt_indices as epoch_prompt_indices
from ..flow.seeds import generator as generator
from .stats import ItemStats, format_metrics  # (also imported from here)
from ..files.storage import StorageError
from .hooks import Callbacks, RunChangeRefused, TrainingError, TrainingInterrupted  # (also imported from here)
from .run_time import RunTimeEstimate, format_duration, measure_run_time


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. The adapter itself always stays fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ValueError(f"unknown precision {precision!r}")


class RunLoop:
    """The run around a training method: everything but the method's epoch.

    A method (a subclass, one per module in fdfo_core/methods/) implements:

    - `train_epoch() -> dict`: one epoch of `self.epoch` (the completed-epoch counter): sample,
      score, update; it returns `finish_epoch(...)`'s metrics (which also advances the counters).
    - optionally `method_state() -> dict` and `load_method_state(state, where)`: the method's own
      named parts of a checkpoint (e.g. DiffusionNFT's sampling policy); `state` is the whole
      checkpoint dict. A method without state of its own leaves both alone.

    Its protected API, what a method may call beyond the public attributes (`backend`, `reward`,
    `reward_spec`, `prompts`, `config`, `device`, `storage`, `amp`, `params`, `optimizer`,
    `scaler`, `dist`, `run_dir`, `callbacks`, `epoch`, `lora_name`):

    - `log(msg)`, `progress(phase, done, total)`, `cancel_point()`: the front end's hooks;
    - `autocast()`: the run's mixed-precision context; `velocity_fn(uncond)`: the backend's
      velocity under cancel, autocast and CFG (`uncond`: the negative prompt's conditioning, None
      without CFG); `negative_cond()`: that conditioning for the run's config;
    - `to_device(a)`: a micro-batch to the training device; `optimizer_step() -> grad norm`:
      all-reduce, unscale, clip, step (call it after the step's backward passes);
    - the failure policy for unscorable images, over an epoch's `RewardFailures`:
      `score_call(scorer, images, prompts, failures)`, `failed_call(error, n, failures)`,
      `record_scores(scores, failures)`, `check_bad_share(bad, total, unit, failures)`;
    - `finish_epoch(times, rewards, stats, pairs, dropped, mean_abs_dr, with_kl, failures, ...)`.

    Phases pass what they compute on as return values (no attribute set outside `__init__`). Front
    ends call `train`, `resume`, `start_run`, `save_lora`; guardrails see `run.guardrails.RunView`.
    """

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
        #: The run's identity (run.json's "run_id"; `start_run` sets it): written into every
        #: checkpoint and LoRA file, and every pick, so no record of one run passes for another's.
        self.run_id: str | None = None
        # A checkpoint of this run (resumed in its own folder, whose run.json was lost): its id;
        # a checkpoint of another folder's run continued here: {"run_id", "checkpoint"} (a fork).
        self._run_id_from_checkpoint: str | None = None
        self._forked_from: dict[str, Any] | None = None

    # --- the front end's hooks -------------------------------------------------------------------

    def log(self, msg: str) -> None:
        """Write one line to the run's log (the front end's `Callbacks.log`; main rank only).
        Public for what observes the run (guardrails, the methods)."""
        if self.callbacks.log is not None and self.dist.is_main:
            self.callbacks.log(msg)

    def progress(self, phase: str, done: int, total: int) -> None:
        """Report progress of `phase` ("sample", "reward", "train", "eval"): `done` of `total`."""
        if self.callbacks.on_progress is not None:
            self.callbacks.on_progress(phase, done, total)

    def cancel_point(self) -> None:
        """Raise (TrainingInterrupted) here when the user cancelled; call it before each model call."""
        if self.callbacks.check_cancel is not None:
            self.callbacks.check_cancel()

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
        base_done = self.guardrails is not None and self.guardrails.base is not None
        try:
            self.time_estimate = measure_run_time(self.backend, self.prompts[0], cfg, self.device, self.autocast,
                                                  self.epoch, base_done)
        except (RuntimeError, ValueError, TypeError, AttributeError) as e:  # no estimate; training goes on
            self.log(f"no time estimate ({type(e).__name__}: {e})")
            return None
        return self.time_estimate

    # --- the protected API of the methods: model calls ------------------------------------------------

    def autocast(self):
        """The run's autocast context (a no-op for fp32)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def velocity_fn(self, uncond: Cond | None):
        """velocity(x [B, C, h, w], t [B], cond) -> fp32 [B, C, h, w]: the backend's velocity under the
        cancel point and autocast, with classifier-free guidance at `config.cfg_scale` against
        `uncond` (the negative prompt's conditioning; None: no CFG)."""
        def velocity(x, t, cond):
            self.cancel_point()
            with self.autocast():
                return self.backend.velocity(x, t, cond).float()

        return guided(velocity, self.config.cfg_scale, uncond)

    def negative_cond(self) -> Cond | None:
        """The negative prompt's conditioning for CFG, None when `cfg_scale` is 1 (no CFG)."""
        cfg = self.config
        return self.backend.encode_prompts([cfg.negative_prompt]) if cfg.cfg_scale != 1.0 else None

    def to_device(self, a: torch.Tensor) -> torch.Tensor:
        """A micro-batch to the training device; from the host through pinned memory without
        blocking on a GPU (the step loop does not wait for the previous micro-batch)."""
        if self.device.type == "cuda" and a.device.type == "cpu":
            return a.pin_memory().to(self.device, non_blocking=True)
        return a.to(self.device)

    def optimizer_step(self) -> float:
        """One update from the gradients accumulated since the last: all-reduce over ranks, unscale,
        clip to `max_grad_norm`, AdamW step, zero. Returns the gradient norm before clipping."""
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

    # --- the protected API: the failure policy for unscorable images ---------------------------------

    def score_call(self, scorer, images: torch.Tensor, prompts: Sequence[str], failures: RewardFailures) -> torch.Tensor:
        """One reward call under the bad-reward policy (fdfo_core/rewards/failure_policy.py): float64 [N],
        NaN for images without a usable reward, recorded in the epoch's `failures`."""
        scores = score_call(scorer, images, prompts, failures, self.reward_spec, strict=not self._reward_worked)
        self._reward_worked = self._reward_worked or bool(torch.isfinite(scores).any())
        return scores

    def failed_call(self, error: Exception, n: int, failures: RewardFailures) -> torch.Tensor:
        """The policy for a reward call of the method's own that raised (e.g. a differentiable one):
        fatal errors and a reward that never worked stop the run; otherwise the call's `n` images
        get NaN (float64 [n]), recorded in `failures`."""
        if is_fatal(error):
            raise error
        if not self._reward_worked:
            if isinstance(error, RewardError):
                raise error
            raise RewardError(f"reward {self.reward_spec!r} failed: {error_text(error)}") from error
        r = torch.full((n,), float("nan"), dtype=torch.float64)
        failures.add_call(r, [(n, error_text(error))])
        return r

    def record_scores(self, scores: torch.Tensor, failures: RewardFailures) -> None:
        """Record the scores [N] of a reward call of the method's own in `failures`."""
        failures.add_call(scores)
        self._reward_worked = self._reward_worked or bool(torch.isfinite(scores).any())

    def check_bad_share(self, bad: int, total: int, unit: str, failures: RewardFailures, certain: bool = False) -> None:
        """Stop the run when more than max_bad_pair_fraction of the epoch's `unit`s are lost."""
        limit = self.config.max_bad_pair_fraction
        if bad > limit * total:
            raise TrainingError(too_many_bad(self.epoch + 1, bad, total, unit, limit, self.reward_spec,
                                             failures, certain=certain))

    # --- one epoch: the method's ----------------------------------------------------------------------

    def train_epoch(self) -> dict[str, Any]:
        """One epoch of the method (see the class docstring); returns `finish_epoch`'s metrics."""
        raise NotImplementedError(f"{type(self).__name__} does not implement train_epoch")

    def finish_epoch(self, times, rewards: torch.Tensor, stats: ItemStats, pairs: int, dropped: int,
                     mean_abs_dr: float, with_kl: bool, failures: RewardFailures, declined: int = 0,
                     pair_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Advance the counters and record the epoch's metrics (every method ends its epoch here).

        times: (start, sampled, scored, trained) perf_counter stamps; rewards: every finite
        reward scored this epoch (all ranks), before any normalisation; failures: the epoch's
        unscorable images; declined, pair_metrics: from a pairwise reward (pairs skipped or left
        unpicked on purpose, and its own metrics).
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
            **failures.metrics(),
            "bad_pair_fraction": dropped / total if total else 0.0,
            **stats.metrics(with_kl),
            "time_sample": t1 - t0,
            "time_reward": t2 - t1,
            "time_train": t3 - t2,
            "time_epoch": t3 - t0,
        }
        if declined or pair_metrics:  # a pairwise reward (human picks)
            metrics["pairs_declined"] = declined
            metrics["bad_pair_fraction"] = (dropped - declined) / total if total else 0.0
            metrics.update(pair_metrics or {})
        self.history.append(metrics)
        return metrics

    # --- checkpoints: the method's named state parts ----------------------------------------------------

    def method_state(self) -> dict[str, Any]:
        """The method's own parts of a checkpoint, by name (merged into the checkpoint dict)."""
        return {}

    def load_method_state(self, state: Mapping[str, Any], where: Path) -> None:
        """Restore the method's parts from a checkpoint dict `state` read from `where`."""

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
                self.log(estimate.line())
            if guard is not None and self.epoch < cfg.epochs:
                guard.start(self)
            first_epoch, started = self.epoch, time.perf_counter()
            while self.epoch < cfg.epochs and not (guard is not None and guard.stop_reason):
                metrics = self.train_epoch()
                pace = (time.perf_counter() - started) / max(1, self.epoch - first_epoch)
                left = f"  about {format_duration(pace * (cfg.epochs - self.epoch))} left" if self.epoch < cfg.epochs else ""
                self.log(format_metrics(metrics, cfg.epochs) + left)
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
            self.log(guard.summary(self.lora_name, self.history))
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
            if self.run_id is None:  # no run folder: an identity of this session's LoRA files
                # (other ranks write no record: the checkpoint's id, if any)
                self.run_id = self._run_id_from_checkpoint or (new_run_id() if self.run_dir is None else None)
            return
        for what, folder in self.front_end.output_dirs.items():  # first: a failed check leaves no run folder
            storage.check_writable(folder, what)
        storage.check_writable(self.run_dir, "run folder")
        if self._resumed_from is None:
            self._check_new_run_folder()
        storage.remove_stale_temps(self.run_dir)  # left by a killed process
        for warning in space_warnings(self.expected_bytes(), self.run_dir, self.front_end.output_dirs):
            self.log(warning)
        session = {"frontend": self.front_end.name, "start_epoch": self.epoch,
                   "resumed_from": str(self._resumed_from) if self._resumed_from is not None else None,
                   **({"forked_from": self._forked_from} if self._forked_from else {}),
                   **self.front_end.session}
        records = RunRecords(self.run_dir)
        records.write(self.definition, self.config.to_json(), session, branch=self._branch,
                      run_id=self._run_id_from_checkpoint)
        self.run_id = records.run_id()
        if self._forked_from:
            self.log(f"{self._forked_from['checkpoint']} belongs to run {self._forked_from['run_id']} of another folder: "
                     f"it continues here as a new run {self.run_id} (its picks, checkpoints and LoRA files carry the new id)")
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
        """What the rest of the run will write (`run.preflight.expected_bytes`)."""
        return expected_bytes(self.params, self.backend.lora_file_tensors(), self.definition, self.config, self.epoch,
                              self.front_end.extra_bytes)

    def has_trained(self) -> bool:
        """True once at least one optimizer step has changed the adapter."""
        return bool(self.optimizer.state)

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "run_id": self.run_id,
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
            **self.method_state(),
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
            self.log(f"{path} has no checkpoint yet: the run starts again from epoch 0")
            return
        state = load_checkpoint(ckpt)
        recorded = definition_of(state)
        if recorded is None:
            raise TrainingError(f"{ckpt} is not an FDFO checkpoint")
        self._check_run_identity(ckpt, state.get("run_id"))
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
            changed = criterion_changes(self.guardrails, self._branch)
            try:
                if changed:
                    raise ValueError(f"the best LoRA of {ckpt} was chosen by another {self.guardrails.criterion_label} "
                                     f"({changed})")
                self.guardrails.load_state_dict(state["guardrails"], where=ckpt)
            except ValueError as e:
                if not allow_change:
                    raise TrainingError(str(e)) from e
                kept = (retire_best_lora(self.run_dir, self.lora_name, self.epoch)
                        if self.run_dir is not None and self.dist.is_main else None)
                self.log(f"{e}; with the change allowed, the held-out evaluation starts again from here "
                         "(the base model is evaluated anew and the best LoRA is chosen among the epochs to come"
                         + (f"; the best LoRA so far is kept as {kept.name})" if kept else ")"))
        self.load_method_state(state, ckpt)
        self.last_checkpoint = self._resumed_from = ckpt
        self.log(f"resumed from {ckpt} at epoch {self.epoch}")

    def _check_run_identity(self, ckpt: Path, ckpt_run: Any) -> None:
        """Refuse a checkpoint of another run than the run folder's (run.json's run_id): one copied
        between folders, or `--resume` of one run's checkpoint into another run's folder, would
        continue the wrong weights and overwrite that run's checkpoints. A checkpoint from its own
        folder whose run.json is gone keeps its run id; one from another folder continued in a
        folder without a run record is a fork: a new run id, its origin recorded in run.json.
        Checkpoints written before run ids existed carry none and are not checked."""
        if not isinstance(ckpt_run, str) or not ckpt_run or self.run_dir is None:
            self._run_id_from_checkpoint = ckpt_run if isinstance(ckpt_run, str) and ckpt_run else None
            return
        folder_run = RunRecords(self.run_dir).run_id()
        home = ckpt.resolve().parent
        own = home in (self.run_dir.resolve(), (self.run_dir / "checkpoints").resolve())
        if folder_run is not None and folder_run != ckpt_run:
            mine = [p for p in checkpoint_files(self.run_dir) if p.resolve() != ckpt.resolve() and checkpoint_run_id(p) == folder_run]
            where = (f"its newest own checkpoint is {mine[-1]}; move {ckpt.name} out of the folder to resume from there"
                     if own and mine else f"keep {ckpt.name} in its own run folder")
            raise TrainingError(
                f"checkpoint {ckpt} was written by run {ckpt_run}, but {self.run_dir} holds run {folder_run} (run.json): "
                f"{'it was copied here from another run' if own else 'it belongs to another run folder'}, and continuing it "
                f"would overwrite this run's checkpoints with another run's weights. To continue run {folder_run}: {where}. "
                f"To continue run {ckpt_run}: resume its own folder. To start a new run from its weights: resume it into a "
                f"new, empty run folder.")
        if own or folder_run == ckpt_run:
            self._run_id_from_checkpoint = ckpt_run
        else:
            self._forked_from = {"run_id": ckpt_run, "checkpoint": str(ckpt)}

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
        self.log(f"continuing {source} with changes, recorded as a new branch of the run"
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
            self.log(f"interrupted: the LoRA trained so far is in {self.rescued_lora}{where}")
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
            # The run it came from, wherever the file is copied: a LoRA names its run and epoch.
            "run_id": self.run_id,
            "epoch": self.epoch,
            "trainer": "fdfo",
            "prompts_summary": prompts_summary(self.prompts),
        }

    def save_lora(self, path: str | Path, extra_metadata: dict[str, Any] | None = None, what: str = "LoRA file",
                  preview: Any = None) -> Path:
        """Write the LoRA with its `fdfo.*` and SAI model-spec metadata (fdfo_core/backends/modelspec.py), and
        `<name>.preview.png` beside it from `preview` (a PIL image), else the front end's latest
        preview (`self.preview_image`); both atomically."""
        image = preview if preview is not None else self.preview_image
        return save_lora_with_spec(path, self.backend, {**self.lora_metadata(), **(extra_metadata or {})},
                                   reward=self.reward_spec, prompts=self.prompts, config=self.config,
                                   epoch=self.epoch, images_seen=self.images_seen, preview=image, what=what)


def fallback_dirs() -> list[Path]:
    """Where a LoRA goes when its usual folder cannot be written: the temp folder, then home."""
    return [Path(tempfile.gettempdir()) / "fdfo-rescue", Path.home() / "fdfo-rescue"]


def resume_point(run_dir: str | Path) -> Path | None:
    return latest_checkpoint(run_dir)