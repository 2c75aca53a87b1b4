"""Guardrails against reward hacking: held-out evaluation during training, the best LoRA, early stop.

The trainer calls three hooks (`start` before the first epoch, `after_epoch` after each one, and
`state_dict` / `load_state_dict` with its checkpoints); everything else lives here, so the loop
stays readable and the baselines (which share `RunLoop.train`) get the same guardrails.

- Every `eval_every` epochs, at the last epoch, and once for the base model (epoch 0, adapter
  disabled; its images are kept, also in checkpoints, for the drift figure), a `HeldOutSet` is
  sampled and scored (`evaluation.py`): held-out reward, judge, diversity across seeds, drift.
- The *criterion* is the judge's mean when a judge is set, else the held-out training reward.
  Whenever a trained LoRA sets a new best, it is written as `<lora_name>-best.safetensors` (with its
  epoch and criterion in the metadata) and kept in memory (`best_adapter`).
- Early stop (off by default): when the criterion has not improved on its best (the base model's
  included) for `early_stop_patience` evaluations, when diversity falls below
  `early_stop_min_diversity` x the base model's, or when an image statistic of the held-out images
  (files/image_stats.py: near-black / near-white share, saturation, colour entropy, edge density) moves
  more than `early_stop_max_image_shift` of its range from the base model's.

Only rank 0 samples and writes; the figures and the stop decision are broadcast to every rank.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import torch

from .evaluation import (
    Evaluation,
    HeldOutSet,
    find_image_space,
    pack_images,
    preserved_rng,
    sample_heldout,
    score_heldout,
    unpack_images,
)
from ..files import storage
from ..files.drawing import to_pil
from ..files.image_stats import STAT_NAMES, largest_shift
from ..rewards.normalize import raw_reward
from ..rewards.pairwise import is_pairwise

if TYPE_CHECKING:  # pragma: no cover
    from ..config import FDFOConfig

class RunView(Protocol):
    """What the guardrails see of a run (a `run.trainer.RunLoop` is one): its public state and the two
    reporting calls. Declared here so that the guardrails need not import the trainer."""

    epoch: int
    device: torch.device
    amp: torch.dtype | None
    backend: Any  # a FlowBackend
    dist: Any  # a DistContext
    callbacks: Any  # the front end's Callbacks (check_cancel is read)
    lora_name: str
    run_dir: Path | None

    def log(self, msg: str) -> None: ...

    def progress(self, phase: str, done: int, total: int) -> None: ...

    def save_lora(self, path: str | Path, extra_metadata: dict[str, Any] | None = None, what: str = "LoRA file",
                  preview: Any = None) -> Path: ...


#: Columns every epoch line of metrics.jsonl gets while evaluation is on (None where not measured),
#: plus `image_<statistic>` and `image_<statistic>_base` for each of image_stats.STAT_NAMES.
EVAL_COLUMNS = (
    "heldout_reward", "heldout_reward_se", "judge", "judge_se", "diversity", "drift", "time_eval", "time_eval_share",
    "heldout_reward_base", "judge_base", "diversity_base", "eval_space", "best_epoch", "best_criterion", "early_stop",
) + tuple(f"image_{k}{b}" for k in STAT_NAMES for b in ("", "_base"))
#: Short names of the image statistics in the log line.
STAT_LABELS = {"near_black": "black", "near_white": "white", "saturation": "sat", "colour_entropy": "entropy",
               "edge_density": "edges"}


def _is_image(images: torch.Tensor | None) -> bool:
    return images is not None and images.ndim == 4 and images.shape[0] > 0 and images.shape[1] in (1, 3, 4)


def best_lora_name(lora_name: str) -> str:
    return f"{lora_name}-best.safetensors"


def retired_best_lora_name(lora_name: str, epoch: int) -> str:
    """The name the best LoRA keeps when a resumed run changes its criterion (reward or judge,
    allowed as a branch at `epoch`): the evaluation starts again, and the new best gets
    `best_lora_name`."""
    return f"{lora_name}-best-until-epoch{epoch}.safetensors"


def _describe(reward: Any) -> str:
    return reward.describe() if hasattr(reward, "describe") else type(reward).__name__


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


class Guardrails:
    """Held-out evaluation, best LoRA and early stop of one training run (see the module docstring).

    `eval_prompts`: held-out prompts (None: spread over the training prompts, with seeds training
    never uses; prompts the model does not train on detect over-fitting too, so give some).
    `judge`: a built reward, or None to build `config.judge` (a reward spec) when it is set.
    """

    def __init__(
        self,
        config: "FDFOConfig",
        reward: Any,
        train_prompts: Sequence[str],
        eval_prompts: Sequence[str] | None = None,
        judge: Any = None,
        device: str | torch.device | None = None,
    ):
        if judge is None and config.judge:
            from ..rewards import build_reward

            judge = build_reward(config.judge, device=device)
        self.config = config
        self.reward = reward
        self.judge = judge
        self.judge_spec = config.judge or (judge.describe() if hasattr(judge, "describe") else None)
        self.prompts_held_out = bool(eval_prompts)
        self.held = HeldOutSet.build(eval_prompts or train_prompts, config.eval_prompt_count, config.eval_seeds)
        self.space = find_image_space(judge, reward)
        # A pairwise reward (human picks) scores no single held-out image: without a judge there is
        # nothing to pick the best LoRA by, only diversity and drift to watch.
        self.scores_images = not is_pairwise(raw_reward(reward))
        self.criterion = "judge" if judge is not None else ("heldout_reward" if self.scores_images else "none")
        if self.criterion == "none" and config.early_stop_patience:
            raise ValueError(
                f"early_stop_patience needs a score for single held-out images, and the reward "
                f"{_describe(reward)} only compares pairs: connect a judge (e.g. an aesthetic or preference reward) "
                "or set early_stop_patience to 0")
        # --- state (checkpointed) ---
        self.evaluations: list[Evaluation] = []
        self.base_images: torch.Tensor | None = None
        self.base_features: torch.Tensor | None = None
        self.best_value = -math.inf  # best criterion so far, the base model's included (for patience)
        self.best_epoch: int | None = None
        self.evals_since_best = 0
        self.best_lora_epoch: int | None = None  # best trained LoRA (epoch >= 1)
        self.best_lora_value = -math.inf
        self.best_adapter: dict[str, torch.Tensor] | None = None
        self.stop_reason: str | None = None
        self.stop_epoch: int | None = None
        self.last_images: torch.Tensor | None = None  # the latest evaluation's images (not checkpointed)

    # --- what the criterion is ------------------------------------------------------------------

    @property
    def criterion_label(self) -> str:
        if self.criterion == "none":
            return "no criterion (a pairwise reward and no judge)"
        return f"judge {self.judge_spec}" if self.judge is not None else "held-out reward"

    def criterion_of(self, ev: Evaluation) -> float:
        if self.criterion == "none":
            return math.nan
        value = ev.judge if self.judge is not None else ev.heldout_reward
        return math.nan if value is None else float(value)

    @property
    def base(self) -> Evaluation | None:
        return self.evaluations[0] if self.evaluations and self.evaluations[0].epoch == 0 else None

    # --- hooks the trainer calls ------------------------------------------------------------------

    def start(self, trainer: "RunView") -> None:
        """Before the first epoch of `train()`: evaluate the base model once per run (kept across
        resume), and keep a run that stopped early stopped while its rule still holds."""
        if trainer.dist.is_main and self.base is None:
            where = "held-out prompts" if self.prompts_held_out else "training prompts (no held-out prompts given)"
            trainer.log(
                f"held-out evaluation every {self.config.eval_every} epoch(s): {len(self.held.prompts)} {where} x "
                f"{len(self.held.seeds)} seeds; criterion: {self.criterion_label}; distances in {self.space.name} space"
            )
            ev = self._evaluate(trainer, base=True)
            self._track(trainer, ev)
            trainer.log(self._line(ev, None))
        self._sync(trainer)
        # A resumed run that stopped early stays stopped while its rule holds with today's settings.
        self.stop_reason = self._stop_rule()
        if self.stop_reason:
            self.stop_epoch = trainer.epoch
            trainer.log(f"this run stopped early at epoch {trainer.epoch}: {self.stop_reason}. "
                         "Raise early_stop_patience or early_stop_max_image_shift, lower early_stop_min_diversity, or set "
                         "them to 0 to go on.")
        else:
            self.stop_epoch = None

    def after_epoch(self, trainer: "RunView", metrics: dict[str, Any]) -> None:
        """After each epoch: evaluate when due; add the evaluation columns to `metrics` (in place)."""
        epoch = trainer.epoch
        due = epoch % self.config.eval_every == 0 or epoch >= self.config.epochs
        ev = None
        if due and trainer.dist.is_main:
            ev = self._evaluate(trainer, base=False)
            self._track(trainer, ev)
            share = ev.seconds / max(metrics.get("time_epoch", 0.0), 1e-9)
            trainer.log(self._line(ev, share))
        if due:
            self._sync(trainer)
            stop = self._stop_rule()
            if stop and not self.stop_reason:
                self.stop_reason, self.stop_epoch = stop, epoch
                trainer.log(self.stop_message(trainer.lora_name))
        metrics.update(self.columns(self.evaluations[-1] if due else None, metrics.get("time_epoch")))
        if self.stop_epoch == epoch:
            metrics["early_stop"] = self.stop_reason

    # --- evaluation -------------------------------------------------------------------------------

    def _evaluate(self, trainer: "RunView", base: bool) -> Evaluation:
        t0 = time.perf_counter()

        def progress(done: int, total: int) -> None:
            trainer.progress("eval", done, total)

        with preserved_rng(trainer.device):
            images = sample_heldout(
                trainer.backend, self.held, self.config, amp=trainer.amp, use_adapter=not base,
                check_cancel=trainer.callbacks.check_cancel, on_progress=progress,
            )
            ev, features = score_heldout(
                images, self.held, self.reward, self.judge, self.space,
                None if base else self.base_features, epoch=0 if base else trainer.epoch,
                seconds_so_far=time.perf_counter() - t0, strict=base, log=trainer.log,
            )
        if base:
            self.base_images, self.base_features = images, features
        self.last_images = images
        return ev

    def _track(self, trainer: "RunView", ev: Evaluation) -> None:
        """Record an evaluation, update the bests, and write the best LoRA when a trained one improves."""
        self.evaluations.append(ev)
        value = self.criterion_of(ev)
        if math.isnan(value) and self.criterion != "none":
            trainer.log(f"held-out evaluation at epoch {ev.epoch}: the {self.criterion_label} gave no finite score")
        if value > self.best_value:
            self.best_value, self.best_epoch, self.evals_since_best = value, ev.epoch, 0
        elif ev.epoch > 0:
            self.evals_since_best += 1
        if ev.epoch > 0 and value > self.best_lora_value:
            self.best_lora_value, self.best_lora_epoch = value, ev.epoch
            self.best_adapter = {k: v.detach().cpu().clone() for k, v in trainer.backend.adapter_state_dict().items()}
            if trainer.run_dir is not None:
                # The best LoRA's preview: its first held-out image (that epoch's own sample).
                preview = to_pil(self.last_images[0]) if _is_image(self.last_images) else None
                trainer.save_lora(trainer.run_dir / best_lora_name(trainer.lora_name), preview=preview, extra_metadata={
                    "selected_by": self.criterion_label, "criterion": self.criterion,
                    "criterion_value": value, "best_epoch": ev.epoch,
                    "base_criterion_value": self.criterion_of(self.base) if self.base else None,
                }, what="best LoRA file")

    def _sync(self, trainer: "RunView") -> None:
        """Every rank gets rank 0's figures (only rank 0 samples)."""
        if not trainer.dist.active:
            return
        state = trainer.dist.broadcast_object(self._scalars())
        self._load_scalars(state)

    # --- early stop -------------------------------------------------------------------------------

    def _stop_rule(self) -> str | None:
        cfg = self.config
        if not self.evaluations or self.evaluations[-1].epoch == 0:
            return None
        last, base = self.evaluations[-1], self.base
        if cfg.early_stop_patience and self.evals_since_best >= cfg.early_stop_patience:
            return (f"the {self.criterion_label} has not improved for {self.evals_since_best} evaluation(s) "
                    f"(best {_fmt(self.best_value)} at epoch {self.best_epoch})")
        if (cfg.early_stop_min_diversity > 0 and base is not None and base.diversity and last.diversity is not None
                and last.diversity < cfg.early_stop_min_diversity * base.diversity):
            return (f"diversity across seeds fell to {_fmt(last.diversity)}, below {cfg.early_stop_min_diversity:g} x "
                    f"the base model's {_fmt(base.diversity)} ({self.space.name} distance)")
        if cfg.early_stop_max_image_shift > 0 and base is not None and base.image_stats and last.image_stats:
            moved = largest_shift(last.image_stats, base.image_stats)
            if moved is not None and moved[1] > cfg.early_stop_max_image_shift:
                name = moved[0]
                return (f"the held-out images' {name.replace('_', ' ')} moved from the base model's "
                        f"{_fmt(base.image_stats[name])} to {_fmt(last.image_stats[name])}, {moved[1]:.3f} of its range "
                        f"(bound early_stop_max_image_shift {cfg.early_stop_max_image_shift:g})")
        return None

    def stop_message(self, lora_name: str) -> str:
        kept = (f"{best_lora_name(lora_name)} (epoch {self.best_lora_epoch}, {self.criterion_label} "
                f"{_fmt(self.best_lora_value)})" if self.best_lora_epoch is not None else "no trained LoRA")
        return (f"early stop at epoch {self.stop_epoch}: {self.stop_reason}. Kept the best LoRA {kept} "
                f"and the last one {lora_name}.safetensors (epoch {self.stop_epoch}).")

    # --- reporting --------------------------------------------------------------------------------

    def columns(self, ev: Evaluation | None, time_epoch: float | None) -> dict[str, Any]:
        base = self.base
        return {
            "heldout_reward": ev.heldout_reward if ev else None, "heldout_reward_se": ev.heldout_reward_se if ev else None,
            "judge": ev.judge if ev else None, "judge_se": ev.judge_se if ev else None,
            "diversity": ev.diversity if ev else None, "drift": ev.drift if ev else None,
            "time_eval": ev.seconds if ev else None,  # timings are time_* like the epoch's
            "time_eval_share": ev.seconds / time_epoch if ev and time_epoch else None,
            "heldout_reward_base": base.heldout_reward if base else None, "judge_base": base.judge if base else None,
            "diversity_base": base.diversity if base else None, "eval_space": self.space.name,
            "best_epoch": self.best_lora_epoch,
            "best_criterion": self.best_lora_value if self.best_lora_epoch is not None else None,
            "early_stop": None,
            **{f"image_{k}": (ev.image_stats or {}).get(k) if ev else None for k in STAT_NAMES},
            **{f"image_{k}_base": (base.image_stats or {}).get(k) if base else None for k in STAT_NAMES},
        }

    def _line(self, ev: Evaluation, share: float | None) -> str:
        base = self.base if ev.epoch else None
        ref = (lambda v: f" (base {_fmt(v)})") if base else (lambda v: "")
        parts = []
        if ev.heldout_reward is not None:  # None: a pairwise reward (human picks)
            parts.append(f"reward {_fmt(ev.heldout_reward)} +- {_fmt(ev.heldout_reward_se)}"
                         f"{ref(base.heldout_reward if base else None)}")
        if ev.judge is not None:
            parts.append(f"judge {_fmt(ev.judge)} +- {_fmt(ev.judge_se)}{ref(base.judge if base else None)}")
        if ev.diversity is not None:
            parts.append(f"diversity {_fmt(ev.diversity)}{ref(base.diversity if base else None)}")
        if ev.epoch:
            parts.append(f"drift {_fmt(ev.drift)}")
        if ev.image_stats:
            base_stats = (base.image_stats or {}) if base else {}
            parts.append("images " + " ".join(
                f"{STAT_LABELS[k]} {_fmt(ev.image_stats[k], 3)}" + (f" ({_fmt(base_stats[k], 3)})" if k in base_stats else "")
                for k in STAT_NAMES if k in ev.image_stats))
        if ev.epoch and self.best_lora_epoch is not None:
            parts.append(f"best epoch {self.best_lora_epoch}")
        cost = f"{ev.seconds:.1f} s" + (f" = {100 * share:.0f}% of an epoch" if share is not None else "")
        head = f"held-out {'base model' if ev.epoch == 0 else f'epoch {ev.epoch}'}: "
        return head + ", ".join(parts) + f" [{self.space.name}; {cost}]"

    def cost(self, history: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Seconds per evaluation and the evaluations' share of the run's time (base model included)."""
        secs = [ev.seconds for ev in self.evaluations]
        train = sum(m.get("time_epoch", 0.0) for m in history)
        return {"evaluations": len(secs), "seconds_per_evaluation": sum(secs) / max(1, len(secs)),
                "share_of_training": sum(secs) / train if train else math.nan}

    def summary(self, lora_name: str, history: Sequence[dict[str, Any]] = ()) -> str:
        """One paragraph for the end of a run: which LoRA is best, what fired, what it cost."""
        base = self.base
        last = self.evaluations[-1] if self.evaluations and self.evaluations[-1].epoch > 0 else None
        if self.criterion == "none":
            text = ("held-out evaluation: diversity and drift only (the reward compares pairs and no judge is "
                    "connected, so no best LoRA is chosen)")
        elif self.best_lora_epoch is None:
            text = "held-out evaluation: no trained LoRA evaluated yet"
        else:
            text = (f"best LoRA: {best_lora_name(lora_name)} from epoch {self.best_lora_epoch} "
                    f"({self.criterion_label} {_fmt(self.best_lora_value)}")
            if last is not None:
                text += f"; last epoch {last.epoch}: {_fmt(self.criterion_of(last))}"
            if base is not None:
                text += f"; base model: {_fmt(self.criterion_of(base))}"
            text += ")"
            if base is not None and not self.best_lora_value > self.criterion_of(base):
                text += ". No trained LoRA beat the base model on this criterion"
        if self.stop_reason:
            text += f". Early stop at epoch {self.stop_epoch}: {self.stop_reason}"
        c = self.cost(history)
        if c["evaluations"]:
            text += (f". Evaluation cost: {c['seconds_per_evaluation']:.1f} s each, {c['evaluations']} evaluations"
                     + (f" = {100 * c['share_of_training']:.1f}% of the training time" if not math.isnan(c["share_of_training"]) else ""))
        return text + "."

    # --- checkpoint state -------------------------------------------------------------------------

    def _scalars(self) -> dict[str, Any]:
        return {
            "evaluations": [ev.to_dict() for ev in self.evaluations],
            "best_value": self.best_value, "best_epoch": self.best_epoch, "evals_since_best": self.evals_since_best,
            "best_lora_value": self.best_lora_value, "best_lora_epoch": self.best_lora_epoch,
            "stop_reason": self.stop_reason, "stop_epoch": self.stop_epoch,
        }

    def _load_scalars(self, s: dict[str, Any]) -> None:
        self.evaluations = [Evaluation.from_dict(d) for d in s["evaluations"]]
        self.best_value, self.best_epoch = float(s["best_value"]), s["best_epoch"]
        self.evals_since_best = int(s["evals_since_best"])
        self.best_lora_value, self.best_lora_epoch = float(s["best_lora_value"]), s["best_lora_epoch"]
        self.stop_reason, self.stop_epoch = s["stop_reason"], s["stop_epoch"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "fdfo-guardrails-1",
            "held_prompts": list(self.held.prompts), "held_seeds": list(self.held.seeds),
            "criterion": self.criterion, "judge": self.judge_spec or "", "space": self.space.name,
            "scalars": json.dumps(self._scalars()),
            "base_images": pack_images(self.base_images) if self.base_images is not None else None,
            "best_adapter": self.best_adapter,
        }

    def load_state_dict(self, state: dict[str, Any], where: str | Path = "the checkpoint") -> None:
        """Restore a run's evaluation state. Raises ValueError when the held-out set or the
        criterion differ from the run's (its figures would not be comparable)."""
        if list(state["held_prompts"]) != list(self.held.prompts) or list(state["held_seeds"]) != list(self.held.seeds):
            raise ValueError(
                f"the held-out prompts or seeds differ from those of {where} "
                f"({len(state['held_prompts'])} prompts x {len(state['held_seeds'])} seeds, first {state['held_prompts'][:1]!r}; "
                f"now {len(self.held.prompts)} x {len(self.held.seeds)}, first {list(self.held.prompts[:1])!r}): "
                "give the run's held-out prompts (or start a new run) so its figures stay comparable"
            )
        if state["criterion"] != self.criterion:
            raise ValueError(f"{where} selected its best LoRA by {state['criterion']!r}, this run by {self.criterion!r}: "
                             "use the run's judge setting or start a new run")
        self._load_scalars(json.loads(state["scalars"]))
        self.best_adapter = state.get("best_adapter")
        self.base_images = unpack_images(state["base_images"]) if state.get("base_images") is not None else None
        self.base_features = self.space.features(self.base_images) if self.base_images is not None else None
        if self.base_images is None:  # a state saved by a rank that never sampled: evaluate the base again
            self.evaluations = [ev for ev in self.evaluations if ev.epoch > 0]


def criterion_changes(guard: Guardrails, branch: dict[str, Any] | None) -> str:
    """The recorded changes of a resume (an allowed branch: `{"changes": [...]}`) that change what
    the held-out criterion measures: the reward (spec, options, normalisation) when the criterion
    is the held-out reward, the judge when it is the judge; "" when none."""
    if guard is None or not branch:
        return ""
    if guard.criterion == "judge":
        hits = [c for c in branch["changes"]
                if c["field"] == "judge_options" or (c["field"] == "config" and c["key"] == "judge")]
    elif guard.criterion == "heldout_reward":
        hits = [c for c in branch["changes"] if c["field"] in ("reward", "reward_options", "reward_normalization")]
    else:
        hits = []
    return ", ".join(sorted({c["field"] + (f".{c['key']}" if c.get("key") else "") for c in hits}))


def retire_best_lora(run_dir: Path, lora_name: str, epoch: int) -> Path | None:
    """Keep the best LoRA of a criterion that no longer holds under its own name
    (`retired_best_lora_name`), so the next best under the new criterion cannot overwrite it.
    Returns the kept file, or None when there was none."""
    best = run_dir / best_lora_name(lora_name)
    if not best.exists():
        return None
    kept = run_dir / retired_best_lora_name(lora_name, epoch)
    storage.copy_file(best, kept, what="best LoRA of the earlier criterion")
    best.unlink()
    return kept
