"""FDFO Trainer: RL post-training of the connected flow model toward a reward, as one node.

The node is thin: it checks its inputs, plans the run folder, and hands off to
`fdfo_core.methods.FDFOTrainer` with the ComfyUI backend (`comfy_backend.ComfyBackend`). Progress,
previews and Cancel reach the loop through its callbacks. Files:
- `ComfyUI/models/loras/<name>.safetensors`: the LoRA (ComfyUI keys, alpha, FDFO metadata), listed by
  the stock LoRA loaders; `<name>-best.safetensors`: the LoRA of the epoch with the best held-out
  criterion (guardrails, fdfo_core/run/guardrails.py); `<name>-interrupted.safetensors` after a Cancel or an error;
- `ComfyUI/output/fdfo/<name>/`: run.json (what defines the run), prompts.json, config.json,
  metrics.jsonl, checkpoints/, samples/, reward_curve.png. A run with resume on continues from its
  newest checkpoint when the run is defined the same way (fdfo_core.run.definition): a changed
  setting other than epochs and memory settings is refused with the list of differences, unless
  allow_run_changes is on (then the change is recorded as a branch in run.json).
Every file goes through fdfo_core.files.storage: a full or read-only folder stops the run with one
message (what failed, the last checkpoint, where the LoRA went, how to resume) as the node's error.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..fdfo_core.files import storage
from ..fdfo_core.run.checkpoints import latest_checkpoint
from ..fdfo_core.config import FDFOConfig
from ..fdfo_core.backends.prompt_cache import MB
from ..fdfo_core.run.definition import FrontEnd
from ..fdfo_core.run.resume import ResumedRun
from ..fdfo_core.files.storage import StorageError
from ..fdfo_core.run.hooks import Callbacks, TrainingError
from ..fdfo_core.methods.fdfo import refuse_groups_with_pairwise
from ..fdfo_core.methods import FDFOTrainer
from .common import CATEGORY, PROMPTS, REWARD, check_interrupt, describe, log, pil_to_image
from .live_feedback import epoch_line, save_temp_png
from .memory_choice import choose_comfy_memory
from .sampler_nodes import clean_prompts
from .trainer_views import REWARD_CURVE_SIZE, TrainerViews, live_panel
from .training_options import (ALL_SETTINGS, TRAINER_SETTINGS, TRAINING_OPTIONS, config_from_settings, input_spec,
                               resolve_settings, setting)

RUNS_SUBFOLDER = "fdfo"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def check_lora_name(name: str) -> str:
    name = (name or "").strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not _NAME.fullmatch(name) or ".." in name:
        raise TrainingError(
            f"lora_name {name!r}: use a plain file name of letters, digits, '_', '-' and '.' (no folders); "
            "the LoRA is saved as ComfyUI/models/loras/<lora_name>.safetensors"
        )
    return name


def plan_run(runs_root: Path, loras_dir: Path, name: str, resume: bool) -> tuple[Path, bool]:
    """(run folder, whether to resume it).

    Runs of one name are `<name>`, `<name>-2`, `<name>-3`, ... With resume, the newest of them
    continues if it has a checkpoint; otherwise a new run gets the first suffix whose folder and
    LoRA file do not exist yet, so an earlier LoRA is never overwritten.
    """
    pattern = re.compile(re.escape(name) + r"(?:-(\d+))?")
    existing = {}
    if runs_root.is_dir():
        for d in runs_root.iterdir():
            m = pattern.fullmatch(d.name)
            if m and d.is_dir():
                existing[int(m.group(1) or 1)] = d
    if resume and existing:
        newest = existing[max(existing)]
        if latest_checkpoint(newest) is not None:
            return newest, True
    i = 1
    while True:
        run = name if i == 1 else f"{name}-{i}"
        if not (runs_root / run).exists() and not published_names(loras_dir, run):
            return runs_root / run, False
        i += 1


def published_names(loras_dir: Path, run: str) -> list[str]:
    """The files a run named `run` puts into ComfyUI's LoRA folder that exist there now: its LoRA,
    its best, interrupted and earlier-criterion best LoRAs (a new run takes a name none of them has)."""
    from ..fdfo_core.run.guardrails import best_lora_name, retired_best_lora_name

    names = [f"{run}.safetensors", best_lora_name(run), f"{run}-interrupted.safetensors"]
    found = [n for n in names if (loras_dir / n).exists()]
    if loras_dir.is_dir():
        found += sorted(p.name for p in loras_dir.glob(retired_best_lora_name(run, 0).replace("epoch0", "epoch*")))
    return found


#: The widgets and optional inputs of the Trainer before the FDFO Training Options node existed
#: (saved workflows list widget values by position): the deprecated `FDFOTrainer` keeps exactly them.
LEGACY_REQUIRED = ("epochs", "pairs_per_epoch", "seed", "steps", "cfg", "churn", "churn_strength", "width", "height",
                   "learning_rate", "lora_rank", "lora_alpha", "clip_range", "optimizer_steps_per_epoch",
                   "checkpoint_every", "lora_name", "resume")
LEGACY_OPTIONAL = ("negative_prompt", "scheduler", "flux_guidance", "preview_prompts", "preview_count", "preview_every",
                   "reward_normalization", "kl_weight", "steps_per_sample", "sample_batch_size", "train_batch_size",
                   "decode_batch_size", "gradient_checkpointing", "precision", "storage_device", "full_load",
                   "allow_run_changes", "max_bad_pair_fraction")

def config_from_inputs(values: dict[str, Any]) -> FDFOConfig:
    """An FDFOConfig from the trainer's settings (any subset; the rest take their defaults)."""
    return config_from_settings(resolve_settings(values))


def _comfy_dirs() -> tuple[Path, Path]:
    import folder_paths

    runs = Path(folder_paths.get_output_directory()) / RUNS_SUBFOLDER
    loras = Path(folder_paths.get_folder_paths("loras")[0])
    return runs, loras


def publish_lora(src: Path, loras_dir: Path, run_id: str | None) -> Path:
    """Copy a LoRA file of run `run_id`, and its `<name>.preview.png` when there is one, into
    ComfyUI's LoRA folder (atomic; StorageError when it cannot). A file of that name trained by
    another run or tool is never overwritten: the copy takes its own name
    (`lora_files.publish_target`), logged as a warning."""
    from ..fdfo_core.backends.lora_files import publish_target
    from ..fdfo_core.backends.modelspec import preview_path

    target, note = publish_target(loras_dir, src.name, run_id, own_copy=src)
    if note:
        log.warning("FDFO: %s", note)
    out = storage.copy_file(src, target, "LoRA file in ComfyUI's LoRA folder")
    if preview_path(src).exists():
        storage.copy_file(preview_path(src), preview_path(out), "LoRA preview image in ComfyUI's LoRA folder")
    return out


# --- one queue of the Trainer: resolve -> build -> run (with live views) -> publish ------------------


@dataclass
class NodeRunPlan:
    """What one queue of the Trainer runs, resolved from its inputs and, resumed, from the run."""

    cfg: FDFOConfig
    name: str  # the lora_name input
    run_dir: Path  # ComfyUI/output/fdfo/<name>[-k]
    loras_dir: Path  # ComfyUI's LoRA folder
    resumed: ResumedRun | None
    prompts: list
    preview_prompts: list
    preview_every: int
    eval_prompts: list | None
    lora_output: str  # "last" or "best"
    allow_change: bool

    @property
    def run_name(self) -> str:
        return self.run_dir.name

    @property
    def resume_hint(self) -> str:
        return f"queue the FDFO Trainer again with resume on and lora_name '{self.name}'"


def resolve_node_run(model, reward, prompts, values: dict[str, Any], graph=None, unique_id=None,
                     judge=None) -> NodeRunPlan:
    """Check the Trainer's inputs and resolve its run before any model is loaded: the config (the
    settings; a distilled checkpoint's steps and CFG where left at their defaults; the memory
    settings for vram_gb), the run folder (`plan_run`: a new `<name>[-k]`, or with resume on the
    newest one with a checkpoint), and for a resumed run what is not connected (preview and held-out
    prompts) from the run itself (`run.resume`, the restore every front end shares). TrainingError
    names the input to fix."""
    if judge is not None and not callable(judge):
        raise TrainingError("the judge input must be a reward (an FDFO reward loader or Combine Rewards)")
    cfg = config_from_settings(values)
    if judge is not None:
        cfg = cfg.replace(judge=describe(judge)).validate()
    prompts = clean_prompts(prompts)
    name = check_lora_name(values["lora_name"])
    preview_prompts = clean_prompts(values.get("preview_prompts") or prompts)
    preview_every = int(values["preview_every"])
    preview_count = int(values["preview_count"])
    preview_prompts = (preview_prompts * preview_count)[:preview_count]
    if reward is None or not callable(reward):
        raise TrainingError("connect a reward (an FDFO reward loader or Combine Rewards)")
    refuse_groups_with_pairwise(reward, cfg.branches)
    eval_prompts = clean_prompts(values["eval_prompts"]) if values.get("eval_prompts") else None
    lora_output = values.get("lora_output", "last")
    if lora_output not in ("last", "best"):
        raise TrainingError(f"lora_output must be 'last' or 'best', got {lora_output!r}")

    from ..fdfo_core.run.resume import open_resumed_run, read_resume_point
    from .comfy_models import distilled_checkpoint  # imports ComfyUI: after the inputs are checked

    family, distilled = distilled_checkpoint(model, graph, unique_id)
    if distilled is not None:  # warn; the steps / CFG the user left at their defaults follow the model
        defaults = {o.config: o.to_config(o.default) if o.to_config else o.default for o in ALL_SETTINGS if o.config}
        cfg = cfg.replace(**distilled.adapted(dataclasses.asdict(cfg), defaults)).validate()
        log.warning("FDFO: %s", distilled.warning(family.title, dataclasses.asdict(cfg)))
    if float(values["vram_gb"] or 0) > 0:
        cfg, message = choose_comfy_memory(model, cfg, float(values["vram_gb"]))
        log.info("FDFO: %s", message)
    runs_root, loras_dir = _comfy_dirs()
    run_dir, resuming = plan_run(runs_root, loras_dir, name, bool(values["resume"]))
    resumed = open_resumed_run(run_dir) if resuming else None
    if resuming and resumed is None:
        read_resume_point(run_dir)  # its checkpoint records no run: raises what resuming it raises
    if resumed is not None:  # not connected: the run's own preview and held-out prompts
        connected = values.get("preview_prompts") is not None
        preview_prompts = resumed.prompts("preview_prompts", preview_prompts if connected else None) or preview_prompts
        eval_prompts = resumed.prompts("eval_prompts", eval_prompts) or eval_prompts
    return NodeRunPlan(cfg=cfg, name=name, run_dir=run_dir, loras_dir=loras_dir, resumed=resumed, prompts=prompts,
                       preview_prompts=preview_prompts, preview_every=preview_every, eval_prompts=eval_prompts,
                       lora_output=lora_output, allow_change=bool(values.get("allow_run_changes", False)))


def build_node_run(model, clip, vae, reward, plan: NodeRunPlan, values: dict[str, Any]):
    """(backend, reward): the ComfyUI backend over the connected MODEL, CLIP and VAE (checked; the
    model is cloned, loaded only in its session) and the reward, per-prompt normalised when asked."""
    from ..fdfo_core.rewards import wrap_normalization
    from .comfy_backend import ComfyBackend

    backend = ComfyBackend(
        model, clip, vae, plan.cfg, scheduler=values["scheduler"], flux_guidance=values["flux_guidance"],
        full_load=values["full_load"], check_cancel=check_interrupt,
        prompt_cache_bytes=int(values["prompt_cache_mb"]) * MB,
    )
    if values["reward_normalization"] == "per_prompt":
        reward = wrap_normalization(reward, "per_prompt")
    return backend, reward



class FDFOTrainerNode:
    """The node (the library class `FDFOTrainer` runs the loop)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "LORA_MODEL", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("model", "lora", "reward_curve", "preview", "lora_name")
    OUTPUT_TOOLTIPS = (
        "The input model with the trained LoRA applied (strength 1; the last or the best one, see lora_output in FDFO "
        "Training Options): wire it straight into a KSampler.",
        "The trained LoRA (ComfyUI keys with alpha; last or best, see lora_output), for Save LoRA Weights or Load LoRA Model.",
        "Training reward per epoch (+- standard error); with held-out evaluation (on by default) also the held-out "
        "reward, the judge, diversity across seeds and drift from the base model, with the best epoch marked.",
        "The preview prompts and seeds before (base model) and after training, side by side.",
        "The LoRA's file name in models/loras/, as LoraLoaderModelOnly lists it.",
    )
    OUTPUT_NODE = True
    FUNCTION = "train"
    DESCRIPTION = (
        "Trains a LoRA that raises the reward of the model's images with FDFO (Finite Difference Flow Optimization): "
        "each epoch samples pairs of similar images, scores them, and moves the model toward the better image of each "
        "pair. Defaults are the published SD3.5 Medium recipe (100 epochs of 432 pairs; hours on a large GPU); the toy "
        "model trains in minutes on a CPU. Cancel keeps the last checkpoint and saves the LoRA trained so far."
    )

    @classmethod
    def _sockets(cls) -> dict[str, tuple]:
        return {
            "model": ("MODEL", {"tooltip": "The flow-matching model to train (SD3, SD3.5, Flux, the FDFO toy, ...). It is cloned, never changed."}),
            "clip": ("CLIP", {"tooltip": "Its text encoder(s); prompts are encoded once and cached."}),
            "vae": ("VAE", {"tooltip": "Its VAE, to decode the images the reward scores."}),
            "reward": (REWARD, {"tooltip": "What to maximise (an FDFO reward loader, or Combine Rewards)."}),
            "prompts": (PROMPTS, {"tooltip": "Training prompts; each epoch walks through them in a random order."}),
        }

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {**cls._sockets(), **input_spec(TRAINER_SETTINGS)},
            "optional": {
                "options": (TRAINING_OPTIONS, {"tooltip": (
                    "FDFO Training Options: seed, churn schedule, clip range, optimizer steps, checkpoints, previews, "
                    "reward normalisation, KL, batch sizes, precision, memory, held-out evaluation and early stop. Not "
                    "connected: the published defaults.")}),
                "judge": (REWARD, {"tooltip": (
                    "A second reward that scores the held-out images but is never trained on (e.g. HPSv2 when training "
                    "on PickScore): the best LoRA is chosen by it, and early stop watches it. Not connected: the "
                    "held-out training reward.")}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def train(self, model, clip, vae, reward, prompts, options=None, judge=None, unique_id=None, prompt=None, **values):
        settings = resolve_settings(values, options)
        with torch.inference_mode(False):
            return self._train(model, clip, vae, reward, prompts, unique_id, settings, prompt, judge=judge)

    def _train(self, model, clip, vae, reward, prompts, unique_id, values, graph=None, judge=None):
        """One queue of the Trainer: resolve the run (new or resumed) -> build the backend and
        reward -> train with the node's live views -> publish the LoRA to ComfyUI."""
        plan = resolve_node_run(model, reward, prompts, values, graph, unique_id, judge)
        backend, reward = build_node_run(model, clip, vae, reward, plan, values)
        views = TrainerViews(self, backend, plan, graph, unique_id)
        with backend.session(train=True):
            trainer = self._run_training(backend, reward, plan, views, judge)
            published = self._publish(trainer, backend, plan, views)
        return self._outputs(model, trainer, published, plan, views)

    def _run_training(self, backend, reward, plan: NodeRunPlan, views: TrainerViews, judge) -> FDFOTrainer:
        """Train inside the backend's session: the trainer with the node's callbacks, resumed
        through `run.resume.continue_run`; the run folder checked and recorded first; the base
        model's previews before the first epoch. On any failure (Cancel included) the LoRA trained
        so far and the best one are copied where the LoRA loaders find them, then it re-raises."""
        from ..fdfo_core.files.drawing import reward_curve_image
        from ..fdfo_core.run.resume import continue_run

        cfg, run_dir, run_name, preview_every = plan.cfg, plan.run_dir, plan.run_name, plan.preview_every
        reward_spec = reward.describe() if hasattr(reward, "describe") else type(reward).__name__
        front_end = FrontEnd(
            name="comfyui", resume_hint=plan.resume_hint,
            new_run_hint=f"turn 'resume' off to start a new run ({plan.name}-2, ...)",
            restore_hint="set those inputs back to the run's values",
            allow_change_hint="turn on 'allow_run_changes' (in FDFO Training Options; an input of the old one-node Trainer)",
            session={"lora": f"{run_name}.safetensors", "preview_every": preview_every},
            output_dirs={"ComfyUI LoRA folder": plan.loras_dir},
            extra_bytes=(cfg.epochs // max(preview_every, 1) + 2) * 1_000_000 if preview_every else cfg.epochs * 100_000,
        )
        trainer = FDFOTrainer(
            backend, reward, plan.prompts, cfg, run_dir=run_dir, reward_spec=reward_spec, lora_name=run_name,
            callbacks=Callbacks(on_epoch_end=views.on_epoch_end, check_cancel=check_interrupt, log=views.log_line),
            definition={"preview_prompts": plan.preview_prompts}, front_end=front_end,
            eval_prompts=plan.eval_prompts, judge=judge,
        )
        if plan.resumed is not None:
            continue_run(trainer, plan.resumed, allow_change=plan.allow_change)
        progress = views.start(trainer)
        trainer.start_run()  # the run and LoRA folders writable, space enough, the run recorded
        start = (f"{'resuming' if plan.resumed is not None else 'starting'} {run_name} at epoch {trainer.epoch}/{cfg.epochs}: "
                 f"{len(plan.prompts)} prompts, reward {reward_spec}, {cfg.pairs_per_epoch} pairs x {cfg.num_steps} steps per epoch")
        estimate = trainer.estimate_time()  # before the first epoch: the expected time (an estimate)
        if estimate is not None:
            start += "\n" + estimate.line()
        progress.bar.text(start)
        if preview_every:
            views.grids["base"] = views.preview(trainer, use_adapter=False)
            if trainer.history:  # resumed: the grid of the epoch reached so far
                views.grids["trained"] = views.preview(trainer, use_adapter=True)
                views.push_preview(views.comparison(trainer.epoch))
            label = f"epoch {trainer.epoch}/{cfg.epochs} · {'resumed' if trainer.history else 'base model, before training'}"
            progress.epoch_done(trainer.epoch, preview=live_panel((views.grids.get("trained") or views.grids["base"])[1], label),
                                text=start)
        if trainer.history:
            views.push_curve(reward_curve_image(trainer.history, title=f"{run_name}: reward during training",
                                                size=REWARD_CURVE_SIZE, guardrails=trainer.guardrails))
        views.clock.start()
        try:
            trainer.train()
        except BaseException as exc:
            # The trainer saved the LoRA trained so far (the run folder, or a fallback folder
            # when that failed); put a copy where the LoRA loaders find it, and the best one.
            note = self._publish_interrupted(trainer, run_dir, plan.loras_dir)
            self._publish_best(trainer, run_dir, plan.loras_dir)
            if isinstance(exc, StorageError) and note:
                raise StorageError(f"{exc}\n{note}", path=exc.path, reason=exc.reason, errno_=exc.errno) from None
            raise
        return trainer

    def _publish(self, trainer: FDFOTrainer, backend, plan: NodeRunPlan, views: TrainerViews) -> dict[str, Any]:
        """Inside the session, after training: the LoRA into ComfyUI's LoRA folder, the best one
        beside it, and (lora_output "best") the best adapter loaded for the outputs. Returns the
        LoRA given out (tensors, path, epoch), the history, the guardrails and the summary lines."""
        from ..fdfo_core.backends.lora_files import publish_target
        from ..fdfo_core.run.guardrails import best_lora_name
        from ..fdfo_core.run.stats import format_metrics
        from .fp8_rounding import backend_rounding_note

        cfg, run_dir, run_name, loras_dir = plan.cfg, plan.run_dir, plan.run_name, plan.loras_dir
        lora_sd = backend.lora_file_tensors()
        done = run_dir / f"{run_name}.safetensors"
        target, kept_note = publish_target(loras_dir, f"{run_name}.safetensors", trainer.run_id, own_copy=done)
        if kept_note:
            log.warning("FDFO: %s", kept_note)
        try:
            lora_path = trainer.save_lora(target)
        except StorageError as e:
            raise StorageError(
                f"{e}\nTraining finished ({trainer.epoch}/{cfg.epochs} epochs): the LoRA is complete in {done} and "
                f"in the last checkpoint {trainer.last_checkpoint}. Copy {done.name} into {loras_dir} yourself, or "
                f"fix the folder and {plan.resume_hint} (nothing is trained again).",
                path=e.path, reason=e.reason, errno_=e.errno) from None
        guard = trainer.guardrails
        best_path = self._publish_best(trainer, run_dir, loras_dir)
        shown_epoch = trainer.epoch
        output_note = f"Output: the last LoRA {lora_path.name}."
        if plan.lora_output == "best" and best_path is not None and guard.best_adapter is not None:
            backend.load_adapter_state_dict(guard.best_adapter)
            lora_sd = backend.lora_file_tensors()
            lora_path = best_path
            shown_epoch = guard.best_lora_epoch
            views.grids.pop("trained", None)  # the previews show the LoRA given out
            output_note = f"Output: the best LoRA {best_path.name} (epoch {guard.best_lora_epoch})."
        elif plan.lora_output == "best":
            why = ("held-out evaluation is off (eval_every 0)" if guard is None else
                   "none was evaluated yet" if guard.best_lora_epoch is None else
                   f"{best_lora_name(run_name)} could not be copied into {loras_dir}")
            output_note = f"Output: the last LoRA {lora_path.name}; no best LoRA to give: {why}."
        if plan.preview_every and "trained" not in views.grids:
            views.grids["trained"] = views.preview(trainer, use_adapter=True)
        # fp8 weights: what the stock loaders' rounding does to the LoRA the previews showed exactly.
        rounding = backend_rounding_note(backend)
        history = list(trainer.history)
        return {
            "lora_sd": lora_sd, "lora_path": lora_path, "shown_epoch": shown_epoch, "output_note": output_note,
            "kept_note": kept_note, "rounding": rounding, "history": history, "guard": guard,
            "last": format_metrics(history[-1], cfg.epochs) if history else "no epochs run",
            "guard_text": guard.summary(run_name, history) if guard is not None else "",
        }

    def _outputs(self, model, trainer: FDFOTrainer, published: dict[str, Any], plan: NodeRunPlan,
                 views: TrainerViews) -> dict[str, Any]:
        """The node's outputs (the model with the LoRA, the LoRA, the reward curve, base vs trained,
        the LoRA's name), its summary text and its last epoch line and grid."""
        import comfy.sd

        from ..fdfo_core.files.drawing import reward_curve_image

        cfg, run_name = plan.cfg, plan.run_name
        history, guard, lora_path = published["history"], published["guard"], published["lora_path"]
        model_out, _ = comfy.sd.load_lora_for_models(model, None, published["lora_sd"], 1.0, 0)
        curve = pil_to_image(reward_curve_image(history, title=f"{run_name}: reward during training", size=REWARD_CURVE_SIZE,
                                                guardrails=guard))
        preview_image = pil_to_image(views.comparison(published["shown_epoch"])) if views.grids else torch.zeros(1, 64, 64, 3)
        summary = (f"LoRA {lora_path.name} ({trainer.epoch}/{cfg.epochs} epochs) in {lora_path.parent}; run folder "
                   f"{plan.run_dir}. Last epoch: {published['last']}")
        if published["kept_note"]:
            summary += f"\n{published['kept_note']}"
        if published["guard_text"]:
            summary += f"\n{published['guard_text']}"
        summary += f"\n{published['output_note']}"
        if published["rounding"]:
            summary += f"\n{published['rounding']}"
        log.info("FDFO: %s", summary)
        line = views.line or (epoch_line(history[-1], cfg.epochs, 0.0) if history else f"{run_name}: no epochs run")
        stopped = f"\n{guard.stop_message(run_name)}" if guard is not None and guard.stop_reason else ""
        views.progress.bar.text(f"{line}{stopped}\nLoRA: {lora_path.name} (models/loras)")
        # The node's own output (web/fdfo_trainer.js shows it): stays on the node after the run,
        # where newer front ends remove the progress text when the job ends.
        ui: dict[str, Any] = {"text": [f"{line}{stopped}\n{summary}"]}
        grids = views.grids
        record = save_temp_png(live_panel(grids["trained"][1], line), "trainer") if "trained" in grids else None
        if record is not None:  # the node keeps showing the last epoch line and grid
            ui["images"] = [record]
        return {"ui": ui, "result": (model_out, published["lora_sd"], curve, preview_image, lora_path.name)}

    @staticmethod
    def _publish_best(trainer: FDFOTrainer, run_dir: Path, loras_dir: Path) -> Path | None:
        """Copy `<name>-best.safetensors` (the guardrails' best LoRA) into ComfyUI's LoRA folder;
        its path there, or None when there is none or it cannot be copied (logged; the run
        folder keeps it)."""
        from ..fdfo_core.run.guardrails import best_lora_name, retired_best_lora_name

        # The best LoRAs of earlier criteria (a reward or judge changed with allow_run_changes)
        # keep their own names in ComfyUI's LoRA folder too: the new best does not overwrite them.
        pattern = retired_best_lora_name(trainer.lora_name, 0).replace("epoch0", "epoch*")
        for retired in sorted(run_dir.glob(pattern)):
            try:  # a copy already there is replaced by the same bytes; another run's file is kept
                publish_lora(retired, loras_dir, trainer.run_id)
            except StorageError as e:
                log.warning("FDFO: the earlier best LoRA stays in %s: %s", retired, e)
        best = run_dir / best_lora_name(trainer.lora_name)
        if trainer.guardrails is None or not best.exists():
            return None
        try:
            return publish_lora(best, loras_dir, trainer.run_id)
        except StorageError as e:
            log.warning("FDFO: the best LoRA stays in %s: %s", best, e)
            return None

    @staticmethod
    def _publish_interrupted(trainer: FDFOTrainer, run_dir: Path, loras_dir: Path) -> str:
        """Copy the LoRA the trainer saved on the way out into ComfyUI's LoRA folder; what to add
        to the error message when that fails ("" when it worked or there was nothing to copy)."""
        rescued = trainer.rescued_lora
        if rescued is None or not rescued.exists():
            return ""
        if rescued.parent != run_dir:  # already in a fallback folder: its message says where
            return f"Copy it into {loras_dir} to load it with the LoRA loaders."
        try:
            path = publish_lora(rescued, loras_dir, trainer.run_id)
        except StorageError as e:
            log.warning("FDFO: %s", e)
            return f"It could not be copied into ComfyUI's LoRA folder either ({e.reason}); use the file in {run_dir}."
        log.warning("FDFO: stopped at epoch %d; the LoRA trained so far is %s", trainer.epoch, path)
        return f"A copy for the LoRA loaders is {path}."


class FDFOTrainerLegacyNode(FDFOTrainerNode):
    """The Trainer with every setting as a widget (before FDFO Training Options existed), kept
    under its old name so workflows saved with it load and run unchanged."""

    DEPRECATED = True
    DESCRIPTION = (
        "Deprecated: the FDFO Trainer with all its settings on one node, kept so older workflows still load and run "
        "exactly as before. New workflows: use FDFO Trainer (+ FDFO Training Options for the less common settings)."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {**cls._sockets(), **{n: setting(n).spec for n in LEGACY_REQUIRED}},
            "optional": {n: setting(n).spec for n in LEGACY_OPTIONAL},
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def train(self, model, clip, vae, reward, prompts, unique_id=None, prompt=None, **values):
        settings = resolve_settings(values)
        with torch.inference_mode(False):
            return self._train(model, clip, vae, reward, prompts, unique_id, settings, prompt)


NODES = {
    "FDFOTrainerV2": (FDFOTrainerNode, "FDFO Trainer"),
    "FDFOTrainer": (FDFOTrainerLegacyNode, "FDFO Trainer (old layout, deprecated)"),
}
