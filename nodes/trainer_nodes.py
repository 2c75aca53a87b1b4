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
import time
from pathlib import Path
from typing import Any

import torch

from ..fdfo_core.files import storage
from ..fdfo_core.run.checkpoints import latest_checkpoint
from ..fdfo_core.config import FDFOConfig
from ..fdfo_core.backends.prompt_cache import MB
from ..fdfo_core.run.definition import FrontEnd, recorded_definition
from ..fdfo_core.files.storage import StorageError
from ..fdfo_core.methods.fdfo import refuse_groups_with_pairwise
from ..fdfo_core.run.trainer import Callbacks, TrainingError
from ..fdfo_core.methods import FDFOTrainer
from .common import CATEGORY, PROMPTS, REWARD, NodeProgress, check_interrupt, describe, log, pil_to_image
from .live_feedback import EpochClock, LivePush, epoch_line, save_temp_png
from .memory_choice import choose_comfy_memory
from .sampler_nodes import clean_prompts
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


class EpochProgress:
    """Maps the trainer's (phase, done, total) callbacks onto one ComfyUI progress bar over the run.

    Phases are weighted by their model work (one unit = one image through the model; a training
    item costs about three: forward and backward).
    """

    def __init__(self, config: FDFOConfig, start_epoch: int, node_id: str | None, preview_every: int, preview_count: int):
        self.cfg = config
        self.start = start_epoch
        cfg_mult = 2 if config.cfg_scale != 1.0 else 1
        steps = config.steps_per_sample or config.num_steps
        self.weights = {
            "sample": 2 * config.pairs_per_epoch * config.num_steps * cfg_mult,
            "reward": 2 * config.pairs_per_epoch,
            "train": 3 * 2 * config.pairs_per_epoch * steps * cfg_mult,
        }
        self.preview_units = preview_count * config.num_steps * cfg_mult if preview_every else 0
        self.epoch_units = sum(self.weights.values()) + self.preview_units
        remaining = max(0, config.epochs - start_epoch)
        self.bar = NodeProgress(max(1, remaining * self.epoch_units), node_id=node_id)
        self.epoch = start_epoch
        self._text_time = 0.0
        #: The last epoch line, kept above the current phase in the node's text.
        self.line = ""

    def _offset(self) -> int:
        return (self.epoch - self.start) * self.epoch_units

    def phase(self, name: str, done: int, total: int) -> None:
        before = 0
        for phase, w in self.weights.items():
            if phase == name:
                self.bar.update(self._offset() + before + w * done / max(total, 1))
                break
            before += w
        now = time.monotonic()
        if now - self._text_time > 1.0 or done == total:
            self._text_time = now
            now_doing = f"now: epoch {self.epoch + 1}/{self.cfg.epochs}, {self.describe(name, done, total)}"
            self.bar.text(f"{self.line}\n{now_doing}" if self.line else now_doing, log_it=False)

    def describe(self, phase: str, done: int, total: int) -> str:
        cfg = self.cfg
        if phase == "sample":  # done / total count solver steps over the epoch's sampling batches
            pairs = min(cfg.pairs_per_epoch, (done // cfg.num_steps) * cfg.sample_batch_size)
            return f"sampling pairs, {pairs}/{cfg.pairs_per_epoch} done"
        if phase == "reward":
            return f"scoring images, {done}/{total} done"
        if phase == "train":
            return f"training on (image, step) items, {done}/{total} done"
        if phase == "eval":
            return f"held-out evaluation, {done}/{total} images"
        return f"{phase} {done}/{total}"

    def epoch_done(self, epoch: int, preview=None, text: str | None = None) -> None:
        """After an epoch (or before the first): the bar, the node's live image and its epoch line."""
        self.epoch = epoch
        self.bar.update(self._offset(), preview=preview, force=True)
        if text is not None:
            self.line = text
            self.bar.text(text)


#: The widgets and optional inputs of the Trainer before the FDFO Training Options node existed
#: (saved workflows list widget values by position): the deprecated `FDFOTrainer` keeps exactly them.
LEGACY_REQUIRED = ("epochs", "pairs_per_epoch", "seed", "steps", "cfg", "churn", "churn_strength", "width", "height",
                   "learning_rate", "lora_rank", "lora_alpha", "clip_range", "optimizer_steps_per_epoch",
                   "checkpoint_every", "lora_name", "resume")
LEGACY_OPTIONAL = ("negative_prompt", "scheduler", "flux_guidance", "preview_prompts", "preview_count", "preview_every",
                   "reward_normalization", "kl_weight", "steps_per_sample", "sample_batch_size", "train_batch_size",
                   "decode_batch_size", "gradient_checkpointing", "precision", "storage_device", "full_load",
                   "allow_run_changes", "max_bad_pair_fraction")


#: Tiles of the displayed preview grids: small images are enlarged (nearest) to about PREVIEW_TILE
#: px; large ones reduced to at most COMPARISON_TILE_MAX px in the `preview` output and
#: PANEL_TILE_MAX px in the node's live image. The full-size grid is saved in the run folder.
PREVIEW_TILE = 128
COMPARISON_TILE_MAX = 192
PANEL_TILE_MAX = 128
#: The reward curve as the node shows it (the run folder's reward_curve.png too): the whole figure,
#: whose panels (training / held-out reward, judge, diversity and drift) share its height.
REWARD_CURVE_SIZE = (520, 420)
#: A long epoch line, for sizing the node's live image before a run (workflows/build_workflows.py).
LONGEST_EPOCH_LINE = "epoch 100/100 · reward 22.1234 ± 1.2345 · about 11 h 59 min left"
def preview_columns(n: int) -> int:
    """Columns of a preview grid: 4 per row, a square for 4 images, one row for fewer."""
    return 2 if n == 4 else min(4, n)


def display_grid(images: torch.Tensor, tile_max: int = COMPARISON_TILE_MAX):
    """The preview grid as shown in ComfyUI: tiles of about PREVIEW_TILE px, at most `tile_max`."""
    from ..fdfo_core.files.drawing import image_grid
    from .reward_nodes import thumbnails

    side = max(images.shape[-2:])
    scale = max(1, PREVIEW_TILE // side)
    if side * scale > tile_max:
        images, scale = thumbnails(images, tile_max), 1
    return image_grid(images, ncol=preview_columns(images.shape[0]), scale=scale)


def live_panel(grid, line: str):
    """The Trainer's live image: the epoch line above the latest preview grid."""
    from ..fdfo_core.files.drawing import with_header

    return with_header(grid, [line])


#: Wider than this side by side, the base and trained grids of the `preview` output are stacked.
COMPARISON_MAX_WIDTH = 800


def comparison_image(base, trained, title: str):
    """The `preview` output: the base model's grid and the trained one, side by side (stacked
    when side by side would be wider than COMPARISON_MAX_WIDTH)."""
    from ..fdfo_core.files.drawing import side_by_side

    return side_by_side(base, trained, titles=("base model", title), vertical=base.width * 2 + 12 > COMPARISON_MAX_WIDTH)


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
        # --- validate everything before any model is loaded ---------------------------------
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

        import comfy.sd

        from ..fdfo_core.files.drawing import reward_curve_image
        from ..fdfo_core.backends.generation import generate_images
        from ..fdfo_core.run.guardrails import best_lora_name
        from ..fdfo_core.files.drawing import image_grid, save_png, to_pil
        from ..fdfo_core.rewards import wrap_normalization
        from ..fdfo_core.run.trainer import format_metrics
        from .comfy_backend import ComfyBackend, distilled_checkpoint
        from ..fdfo_core.backends.lora_files import publish_target

        family, distilled = distilled_checkpoint(model, graph, unique_id)
        if distilled is not None:  # warn; the steps / CFG the user left at their defaults follow the model
            defaults = {o.config: o.to_config(o.default) if o.to_config else o.default for o in ALL_SETTINGS if o.config}
            cfg = cfg.replace(**distilled.adapted(dataclasses.asdict(cfg), defaults)).validate()
            log.warning("FDFO: %s", distilled.warning(family.title, dataclasses.asdict(cfg)))
        if float(values["vram_gb"] or 0) > 0:
            cfg, message = choose_comfy_memory(model, cfg, float(values["vram_gb"]))
            log.info("FDFO: %s", message)
        backend = ComfyBackend(
            model, clip, vae, cfg, scheduler=values["scheduler"], flux_guidance=values["flux_guidance"],
            full_load=values["full_load"], check_cancel=check_interrupt,
            prompt_cache_bytes=int(values["prompt_cache_mb"]) * MB,
        )
        runs_root, loras_dir = _comfy_dirs()
        run_dir, resuming = plan_run(runs_root, loras_dir, name, bool(values["resume"]))
        run_name = run_dir.name
        if values["reward_normalization"] == "per_prompt":
            reward = wrap_normalization(reward, "per_prompt")
        reward_spec = reward.describe() if hasattr(reward, "describe") else type(reward).__name__

        grids: dict[str, Any] = {}
        state: dict[str, Any] = {"line": None}
        push_curve = LivePush(graph, unique_id, self.RETURN_NAMES.index("reward_curve"), "reward_curve")
        push_preview = LivePush(graph, unique_id, self.RETURN_NAMES.index("preview"), "preview")

        def preview(trainer, use_adapter: bool, save_as: Path | None = None):
            images = generate_images(
                backend, preview_prompts, list(range(len(preview_prompts))), cfg.num_steps, cfg.height, cfg.width,
                cfg.cfg_scale, cfg.negative_prompt, batch_size=cfg.sample_batch_size, amp=trainer.amp,
                use_adapter=use_adapter, check_cancel=check_interrupt,
            )
            if use_adapter and images.ndim == 4 and images.shape[1] == 3:  # becomes <lora>.preview.png
                trainer.preview_image = to_pil(images[0])
            if save_as is not None:  # full size in the run folder
                save_png(image_grid(images, ncol=preview_columns(len(preview_prompts))), save_as, "preview grid",
                         make_folder=True)
            return display_grid(images), display_grid(images, PANEL_TILE_MAX)

        def comparison(epoch: int):
            base = grids.get("base") or grids["trained"]
            trained = grids.get("trained") or base
            return comparison_image(base[0], trained[0], f"{run_name} (epoch {epoch})")

        def on_epoch_end(trainer, metrics):
            epoch = metrics["epoch"]
            cache = getattr(backend, "prompt_cache", None)
            note = cache.first_eviction_note() if cache is not None else None
            if note:  # once, right after the epoch line that first dropped a prompt
                log_line(note)
            curve = reward_curve_image(trainer.history, title=f"{run_name}: reward during training", size=REWARD_CURVE_SIZE,
                                       guardrails=trainer.guardrails)
            save_png(curve, run_dir / "reward_curve.png", "reward curve")
            push_curve(curve)
            grid = None
            if preview_every and (epoch % preview_every == 0 or epoch == cfg.epochs):
                grid = preview(trainer, use_adapter=True, save_as=run_dir / "samples" / f"epoch-{epoch:05d}.png")
                grids["trained"] = grid
                push_preview(comparison(epoch))
            state["line"] = line = epoch_line(metrics, cfg.epochs, clock.seconds_left(epoch))
            shown = grids.get("trained", grids.get("base"))
            progress.epoch_done(epoch, preview=live_panel(shown[1], line) if shown is not None else None, text=line)

        def log_line(message: str) -> None:  # the trainer's full epoch metrics and notes: the console
            log.info("FDFO: %s", message)

        recorded = recorded_definition(run_dir) if resuming else None
        if recorded is not None and recorded.preview_prompts and values.get("preview_prompts") is None:
            preview_prompts = list(recorded.preview_prompts)  # not connected: the run's own previews
        if recorded is not None and recorded.eval_prompts and eval_prompts is None:
            eval_prompts = list(recorded.eval_prompts)  # not connected: the run's own held-out prompts
        resume_hint = f"queue the FDFO Trainer again with resume on and lora_name '{name}'"
        front_end = FrontEnd(
            name="comfyui", resume_hint=resume_hint,
            new_run_hint=f"turn 'resume' off to start a new run ({name}-2, ...)",
            restore_hint="set those inputs back to the run's values",
            allow_change_hint="turn on 'allow_run_changes' (in FDFO Training Options; an input of the old one-node Trainer)",
            session={"lora": f"{run_name}.safetensors", "preview_every": preview_every},
            output_dirs={"ComfyUI LoRA folder": loras_dir},
            extra_bytes=(cfg.epochs // max(preview_every, 1) + 2) * 1_000_000 if preview_every else cfg.epochs * 100_000,
        )

        with backend.session(train=True):
            trainer = FDFOTrainer(
                backend, reward, prompts, cfg, run_dir=run_dir, reward_spec=reward_spec, lora_name=run_name,
                callbacks=Callbacks(on_epoch_end=on_epoch_end, check_cancel=check_interrupt, log=log_line),
                definition={"preview_prompts": preview_prompts}, front_end=front_end,
                eval_prompts=eval_prompts, judge=judge,
            )
            if resuming:
                trainer.resume(run_dir, allow_change=bool(values.get("allow_run_changes", False)))
            state["progress"] = progress = EpochProgress(cfg, trainer.epoch, unique_id, preview_every, len(preview_prompts))
            clock = EpochClock(trainer.epoch, cfg.epochs)
            trainer.callbacks.on_progress = progress.phase
            trainer.start_run()  # the run and LoRA folders writable, space enough, the run recorded
            start = (f"{'resuming' if resuming else 'starting'} {run_name} at epoch {trainer.epoch}/{cfg.epochs}: "
                     f"{len(prompts)} prompts, reward {reward_spec}, {cfg.pairs_per_epoch} pairs x {cfg.num_steps} steps per epoch")
            estimate = trainer.estimate_time()  # before the first epoch: the expected time (an estimate)
            if estimate is not None:
                start += "\n" + estimate.line()
            progress.bar.text(start)
            if preview_every:
                grids["base"] = preview(trainer, use_adapter=False)
                if trainer.history:  # resumed: the grid of the epoch reached so far
                    grids["trained"] = preview(trainer, use_adapter=True)
                    push_preview(comparison(trainer.epoch))
                label = f"epoch {trainer.epoch}/{cfg.epochs} · {'resumed' if trainer.history else 'base model, before training'}"
                progress.epoch_done(trainer.epoch, preview=live_panel((grids.get("trained") or grids["base"])[1], label), text=start)
            if trainer.history:
                push_curve(reward_curve_image(trainer.history, title=f"{run_name}: reward during training", size=REWARD_CURVE_SIZE,
                                              guardrails=trainer.guardrails))
            clock.start()
            try:
                trainer.train()
            except BaseException as exc:
                # The trainer saved the LoRA trained so far (the run folder, or a fallback folder
                # when that failed); put a copy where the LoRA loaders find it, and the best one.
                note = self._publish_interrupted(trainer, run_dir, loras_dir)
                self._publish_best(trainer, run_dir, loras_dir)
                if isinstance(exc, StorageError) and note:
                    raise StorageError(f"{exc}\n{note}", path=exc.path, reason=exc.reason, errno_=exc.errno) from None
                raise
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
                    f"fix the folder and {resume_hint} (nothing is trained again).",
                    path=e.path, reason=e.reason, errno_=e.errno) from None
            guard = trainer.guardrails
            best_path = self._publish_best(trainer, run_dir, loras_dir)
            shown_epoch = trainer.epoch
            output_note = f"Output: the last LoRA {lora_path.name}."
            if lora_output == "best" and best_path is not None and guard.best_adapter is not None:
                backend.load_adapter_state_dict(guard.best_adapter)
                lora_sd = backend.lora_file_tensors()
                lora_path = best_path
                shown_epoch = guard.best_lora_epoch
                grids.pop("trained", None)  # the previews show the LoRA given out
                output_note = f"Output: the best LoRA {best_path.name} (epoch {guard.best_lora_epoch})."
            elif lora_output == "best":
                why = ("held-out evaluation is off (eval_every 0)" if guard is None else
                       "none was evaluated yet" if guard.best_lora_epoch is None else
                       f"{best_lora_name(run_name)} could not be copied into {loras_dir}")
                output_note = f"Output: the last LoRA {lora_path.name}; no best LoRA to give: {why}."
            if preview_every and "trained" not in grids:
                grids["trained"] = preview(trainer, use_adapter=True)
            history = list(trainer.history)
            last = format_metrics(history[-1], cfg.epochs) if history else "no epochs run"
            guard_text = guard.summary(run_name, history) if guard is not None else ""

        model_out, _ = comfy.sd.load_lora_for_models(model, None, lora_sd, 1.0, 0)
        curve = pil_to_image(reward_curve_image(history, title=f"{run_name}: reward during training", size=REWARD_CURVE_SIZE,
                                                guardrails=guard))
        preview_image = pil_to_image(comparison(shown_epoch)) if grids else torch.zeros(1, 64, 64, 3)
        summary = (f"LoRA {lora_path.name} ({trainer.epoch}/{cfg.epochs} epochs) in {lora_path.parent}; run folder "
                   f"{run_dir}. Last epoch: {last}")
        if kept_note:
            summary += f"\n{kept_note}"
        if guard_text:
            summary += f"\n{guard_text}"
        summary += f"\n{output_note}"
        log.info("FDFO: %s", summary)
        ui: dict[str, Any] = {"text": [summary]}
        line = state["line"] or (epoch_line(history[-1], cfg.epochs, 0.0) if history else f"{run_name}: no epochs run")
        stopped = f"\n{guard.stop_message(run_name)}" if guard is not None and guard.stop_reason else ""
        progress.bar.text(f"{line}{stopped}\nLoRA: {lora_path.name} (models/loras)")
        record = save_temp_png(live_panel(grids["trained"][1], line), "trainer") if "trained" in grids else None
        if record is not None:  # the node keeps showing the last epoch line and grid
            ui["images"] = [record]
        return {"ui": ui, "result": (model_out, lora_sd, curve, preview_image, lora_path.name)}

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
