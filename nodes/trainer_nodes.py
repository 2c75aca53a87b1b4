"""FDFO Trainer: RL post-training of the connected flow model toward a reward, as one node.

The node is thin: it checks its inputs, plans the run folder, and hands off to
`fdfo_core.trainer.FDFOTrainer` with the ComfyUI backend (`comfy_backend.ComfyBackend`). Progress,
previews and Cancel reach the loop through its callbacks. Files:
- `ComfyUI/models/loras/<name>.safetensors`: the LoRA (ComfyUI keys, alpha, FDFO metadata), listed by
  the stock LoRA loaders; `<name>-interrupted.safetensors` after a Cancel or an error;
- `ComfyUI/output/fdfo/<name>/`: run.json (what defines the run), prompts.json, config.json,
  metrics.jsonl, checkpoints/, samples/, reward_curve.png. A run with resume on continues from its
  newest checkpoint when the run is defined the same way (fdfo_core.run_definition): a changed
  setting other than epochs and memory settings is refused with the list of differences, unless
  allow_run_changes is on (then the change is recorded as a branch in run.json).
Every file goes through fdfo_core.storage: a full or read-only folder stops the run with one
message (what failed, the last checkpoint, where the LoRA went, how to resume) as the node's error.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch

from ..fdfo_core import storage
from ..fdfo_core.checkpoint import latest_checkpoint
from ..fdfo_core.config import FDFOConfig
from ..fdfo_core.run_definition import FrontEnd, recorded_definition
from ..fdfo_core.storage import StorageError
from ..fdfo_core.trainer import Callbacks, FDFOTrainer, TrainingError
from .common import CATEGORY, PROMPTS, REWARD, NodeProgress, check_interrupt, log, pil_to_image
from .sampler_nodes import DEFAULTS, clean_prompts, optional_sampling_inputs, sampling_inputs

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
        if not (runs_root / run).exists() and not (loras_dir / f"{run}.safetensors").exists():
            return runs_root / run, False
        i += 1


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
            self.bar.text(f"epoch {self.epoch + 1}/{self.cfg.epochs}: {self.describe(name, done, total)}")

    def describe(self, phase: str, done: int, total: int) -> str:
        cfg = self.cfg
        if phase == "sample":  # done / total count solver steps over the epoch's sampling batches
            pairs = min(cfg.pairs_per_epoch, (done // cfg.num_steps) * cfg.sample_batch_size)
            return f"sampling pairs, {pairs}/{cfg.pairs_per_epoch} done"
        if phase == "reward":
            return f"scoring images, {done}/{total} done"
        if phase == "train":
            return f"training on (image, step) items, {done}/{total} done"
        return f"{phase} {done}/{total}"

    def epoch_done(self, epoch: int, preview=None) -> None:
        self.epoch = epoch
        self.bar.update(self._offset(), preview=preview, force=True)


def training_inputs() -> dict[str, tuple]:
    d = DEFAULTS
    return {
        "epochs": ("INT", {"default": d.epochs, "min": 0, "max": 100000, "tooltip": (
            "Total epochs of the run (about 100 for good results on SD3.5). Raising it and queueing again with resume "
            "continues the run.")}),
        "pairs_per_epoch": ("INT", {"default": d.pairs_per_epoch, "min": 1, "max": 1000000, "tooltip": (
            "Pairs sampled per epoch (432 published = 864 images).")}),
        **sampling_inputs(),
        "learning_rate": ("FLOAT", {"default": d.lr, "min": 1e-8, "max": 1.0, "step": 1e-6, "round": 1e-8, "tooltip": "AdamW learning rate (3e-5 published)."}),
        "lora_rank": ("INT", {"default": d.lora_rank, "min": 1, "max": 1024, "tooltip": "LoRA rank on every attention projection (32 published)."}),
        "lora_alpha": ("FLOAT", {"default": d.lora_alpha, "min": 0.01, "max": 4096.0, "step": 0.5, "tooltip": "LoRA alpha; the update is scaled by alpha / rank (64 published)."}),
        "clip_range": ("FLOAT", {"default": d.clip_range, "min": 1e-5, "max": 10.0, "step": 0.001, "round": 1e-5, "tooltip": (
            "Trust region of the surrogate objective (0.03 published): how far one epoch may move the model.")}),
        "optimizer_steps_per_epoch": ("INT", {"default": d.optimizer_steps_per_epoch, "min": 1, "max": 10000, "tooltip": (
            "Optimizer updates per epoch; every (image, step) item of the epoch is used once (4 published).")}),
        "checkpoint_every": ("INT", {"default": d.checkpoint_every, "min": 0, "max": 100000, "tooltip": (
            "Save a resumable checkpoint every N epochs (5 published; 0 = only at the end). Cancel keeps the last one.")}),
        "lora_name": ("STRING", {"default": "fdfo_lora", "tooltip": (
            "File name of the LoRA in ComfyUI/models/loras/ and of the run folder in output/fdfo/. A new run never "
            "overwrites an earlier LoRA: it gets a -2, -3, ... suffix.")}),
        "resume": ("BOOLEAN", {"default": True, "tooltip": (
            "Continue the newest run of this name from its last checkpoint (with the same settings; epochs may grow). "
            "Off: start a new run.")}),
    }


def optional_training_inputs() -> dict[str, tuple]:
    d = DEFAULTS
    return {
        **optional_sampling_inputs(),
        "preview_prompts": (PROMPTS, {"tooltip": "Prompts of the preview grid (default: the first training prompts)."}),
        "preview_count": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Images in the preview grid (fixed prompts and seeds)."}),
        "preview_every": ("INT", {"default": 1, "min": 0, "max": 10000, "tooltip": "Show and save a preview grid every N epochs (0 = never)."}),
        "reward_normalization": (["none", "std", "per_prompt"], {"default": "none", "tooltip": (
            "none: raw reward differences (published); std: divided by the epoch's reward spread; per_prompt: each "
            "score standardised against its prompt's scores (for rewards whose scale varies by prompt).")}),
        "kl_weight": ("FLOAT", {"default": d.kl_weight, "min": 0.0, "max": 1000.0, "step": 0.01, "tooltip": (
            "Pull toward the base model's velocity (0 published; costs one more model pass per item).")}),
        "steps_per_sample": ("INT", {"default": d.steps_per_sample, "min": 0, "max": 1000, "tooltip": (
            "Train on k random solver steps per image instead of all (0 = all, published). Faster epochs.")}),
        "sample_batch_size": ("INT", {"default": d.sample_batch_size, "min": 1, "max": 4096, "tooltip": "Pairs per sampling batch (memory only)."}),
        "train_batch_size": ("INT", {"default": d.train_batch_size, "min": 1, "max": 4096, "tooltip": "Items per forward/backward pass (memory only)."}),
        "decode_batch_size": ("INT", {"default": d.decode_batch_size, "min": 1, "max": 4096, "tooltip": "Images per VAE decode and reward call (memory only)."}),
        "gradient_checkpointing": ("BOOLEAN", {"default": d.gradient_checkpointing, "tooltip": "Recompute activations in the backward pass: less VRAM, about 30 % slower."}),
        "precision": (["auto", "bf16", "fp16", "fp32"], {"default": d.precision, "tooltip": (
            "Autocast for the model passes (the LoRA itself is always fp32). auto: bf16 on a GPU, fp32 on the CPU.")}),
        "storage_device": (["auto", "cpu"], {"default": d.storage_device, "tooltip": (
            "Where the recorded states of an epoch live. cpu saves VRAM (SD3.5/Flux at the published size need it on 24 GB cards).")}),
        "full_load": ("BOOLEAN", {"default": False, "tooltip": (
            "Load the whole model onto the GPU for training. Off: ComfyUI decides (partial loading when VRAM is short).")}),
        "allow_run_changes": ("BOOLEAN", {"default": False, "tooltip": (
            "With resume on: continue the run even though prompts, reward, seed or other settings that define it "
            "changed, and record the change as a new branch in its run.json. Off: such a change is refused with the "
            "list of differences (epochs and memory settings may always change).")}),
        "max_bad_pair_fraction": ("FLOAT", {"default": d.max_bad_pair_fraction, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": (
            "Pairs whose reward is missing, NaN or failed (a scoring server's error for some images) are dropped and "
            "counted; the run stops when more than this share of an epoch's pairs is lost (0: stop at the first; "
            "1: never while any pair is left).")}),
    }


def config_from_inputs(values: dict[str, Any]) -> FDFOConfig:
    """An FDFOConfig from the node's widget values (validated: errors name the field)."""
    v = values
    return FDFOConfig(
        epochs=v["epochs"], pairs_per_epoch=v["pairs_per_epoch"], num_steps=v["steps"], cfg_scale=v["cfg"],
        churn=v["churn"], churn_strength=v["churn_strength"], width=v["width"], height=v["height"], seed=v["seed"],
        lr=v["learning_rate"], lora_rank=v["lora_rank"], lora_alpha=v["lora_alpha"], clip_range=v["clip_range"],
        optimizer_steps_per_epoch=v["optimizer_steps_per_epoch"], checkpoint_every=v["checkpoint_every"],
        negative_prompt=v.get("negative_prompt", DEFAULTS.negative_prompt),
        reward_normalization="std" if v.get("reward_normalization") == "std" else "none",
        kl_weight=v.get("kl_weight", DEFAULTS.kl_weight), steps_per_sample=v.get("steps_per_sample", DEFAULTS.steps_per_sample),
        sample_batch_size=v.get("sample_batch_size", DEFAULTS.sample_batch_size),
        train_batch_size=v.get("train_batch_size", DEFAULTS.train_batch_size),
        decode_batch_size=v.get("decode_batch_size", DEFAULTS.decode_batch_size),
        gradient_checkpointing=v.get("gradient_checkpointing", DEFAULTS.gradient_checkpointing),
        precision=v.get("precision", DEFAULTS.precision), storage_device=v.get("storage_device", DEFAULTS.storage_device),
        max_bad_pair_fraction=v.get("max_bad_pair_fraction", DEFAULTS.max_bad_pair_fraction),
        extra={"frontend": "comfyui", "scheduler": v.get("scheduler", "simple"), "flux_guidance": v.get("flux_guidance", 3.5)},
    ).validate()


def _comfy_dirs() -> tuple[Path, Path]:
    import folder_paths

    runs = Path(folder_paths.get_output_directory()) / RUNS_SUBFOLDER
    loras = Path(folder_paths.get_folder_paths("loras")[0])
    return runs, loras


def publish_lora(src: Path, loras_dir: Path) -> Path:
    """Copy a LoRA file into ComfyUI's LoRA folder (atomic; StorageError when it cannot)."""
    return storage.copy_file(src, loras_dir / src.name, "LoRA file in ComfyUI's LoRA folder")


class FDFOTrainerNode:
    """The node (the library class `FDFOTrainer` runs the loop)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "LORA_MODEL", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("model", "lora", "reward_curve", "preview", "lora_name")
    OUTPUT_TOOLTIPS = (
        "The input model with the trained LoRA applied (strength 1): wire it straight into a KSampler.",
        "The trained LoRA (ComfyUI keys with alpha), for Save LoRA Weights or Load LoRA Model.",
        "Mean reward of the training pairs per epoch (+- standard error).",
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
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The flow-matching model to train (SD3, SD3.5, Flux, the FDFO toy, ...). It is cloned, never changed."}),
                "clip": ("CLIP", {"tooltip": "Its text encoder(s); prompts are encoded once and cached."}),
                "vae": ("VAE", {"tooltip": "Its VAE, to decode the images the reward scores."}),
                "reward": (REWARD, {"tooltip": "What to maximise (an FDFO reward loader, or Combine Rewards)."}),
                "prompts": (PROMPTS, {"tooltip": "Training prompts; each epoch walks through them in a random order."}),
                **training_inputs(),
            },
            "optional": optional_training_inputs(),
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, vae, reward, prompts, unique_id=None, **values):
        with torch.inference_mode(False):
            return self._train(model, clip, vae, reward, prompts, unique_id, values)

    def _train(self, model, clip, vae, reward, prompts, unique_id, values):
        # --- validate everything before any model is loaded ---------------------------------
        cfg = config_from_inputs(values)
        prompts = clean_prompts(prompts)
        name = check_lora_name(values["lora_name"])
        preview_prompts = clean_prompts(values.get("preview_prompts") or prompts)
        preview_every = int(values.get("preview_every", 1))
        preview_count = int(values.get("preview_count", 4))
        preview_prompts = (preview_prompts * preview_count)[:preview_count]
        if reward is None or not callable(reward):
            raise TrainingError("connect a reward (an FDFO reward loader or Combine Rewards)")

        import comfy.sd

        from ..fdfo_core.cli import reward_curve_image
        from ..fdfo_core.generation import generate_images
        from ..fdfo_core.images import image_grid, save_png, side_by_side
        from ..fdfo_core.rewards import wrap_normalization
        from ..fdfo_core.trainer import format_metrics
        from .comfy_backend import ComfyBackend

        backend = ComfyBackend(
            model, clip, vae, cfg, scheduler=values.get("scheduler", "simple"),
            flux_guidance=values.get("flux_guidance", 3.5), full_load=values.get("full_load", False),
            check_cancel=check_interrupt,
        )
        runs_root, loras_dir = _comfy_dirs()
        run_dir, resuming = plan_run(runs_root, loras_dir, name, bool(values["resume"]))
        run_name = run_dir.name
        if values.get("reward_normalization") == "per_prompt":
            reward = wrap_normalization(reward, "per_prompt")
        reward_spec = reward.describe() if hasattr(reward, "describe") else type(reward).__name__

        grids: dict[str, Any] = {}
        state: dict[str, Any] = {}

        def preview(trainer, use_adapter: bool):
            images = generate_images(
                backend, preview_prompts, list(range(len(preview_prompts))), cfg.num_steps, cfg.height, cfg.width,
                cfg.cfg_scale, cfg.negative_prompt, batch_size=cfg.sample_batch_size, amp=trainer.amp,
                use_adapter=use_adapter, check_cancel=check_interrupt,
            )
            return image_grid(images, ncol=min(4, len(preview_prompts)), scale=max(1, 256 // max(cfg.width, cfg.height)))

        def on_epoch_end(trainer, metrics):
            epoch = metrics["epoch"]
            save_png(reward_curve_image(trainer.history), run_dir / "reward_curve.png", "reward curve")
            grid = None
            if preview_every and (epoch % preview_every == 0 or epoch == cfg.epochs):
                grid = preview(trainer, use_adapter=True)
                grids["trained"] = grid
                save_png(grid, run_dir / "samples" / f"epoch-{epoch:05d}.png", "preview grid", make_folder=True)
            state["progress"].epoch_done(epoch, preview=grid)

        def log_line(message: str) -> None:
            if "progress" in state:
                state["progress"].bar.text(message)
            else:
                log.info("FDFO: %s", message)

        recorded = recorded_definition(run_dir) if resuming else None
        if recorded is not None and recorded.preview_prompts and values.get("preview_prompts") is None:
            preview_prompts = list(recorded.preview_prompts)  # not connected: the run's own previews
        resume_hint = f"queue the FDFO Trainer again with resume on and lora_name '{name}'"
        front_end = FrontEnd(
            name="comfyui", resume_hint=resume_hint,
            new_run_hint=f"turn 'resume' off to start a new run ({name}-2, ...)",
            restore_hint="set those inputs back to the run's values",
            allow_change_hint="turn on the Trainer's 'allow_run_changes'",
            session={"lora": f"{run_name}.safetensors", "preview_every": preview_every},
            output_dirs={"ComfyUI LoRA folder": loras_dir},
            extra_bytes=(cfg.epochs // max(preview_every, 1) + 2) * 1_000_000 if preview_every else cfg.epochs * 100_000,
        )

        with backend.session(train=True):
            trainer = FDFOTrainer(
                backend, reward, prompts, cfg, run_dir=run_dir, reward_spec=reward_spec, lora_name=run_name,
                callbacks=Callbacks(on_epoch_end=on_epoch_end, check_cancel=check_interrupt, log=log_line),
                definition={"preview_prompts": preview_prompts}, front_end=front_end,
            )
            if resuming:
                trainer.resume(run_dir, allow_change=bool(values.get("allow_run_changes", False)))
            state["progress"] = progress = EpochProgress(cfg, trainer.epoch, unique_id, preview_every, len(preview_prompts))
            trainer.callbacks.on_progress = progress.phase
            trainer.start_run()  # the run and LoRA folders writable, space enough, the run recorded
            progress.bar.text(
                f"{'resuming' if resuming else 'starting'} {run_name} at epoch {trainer.epoch}/{cfg.epochs}: "
                f"{len(prompts)} prompts, reward {reward_spec}, {cfg.pairs_per_epoch} pairs x {cfg.num_steps} steps per epoch"
            )
            if preview_every:
                grids["base"] = preview(trainer, use_adapter=False)
                progress.epoch_done(trainer.epoch, preview=grids["base"])
            try:
                trainer.train()
            except BaseException as exc:
                # The trainer saved the LoRA trained so far (the run folder, or a fallback folder
                # when that failed); put a copy where the LoRA loaders find it.
                note = self._publish_interrupted(trainer, run_dir, loras_dir)
                if isinstance(exc, StorageError) and note:
                    raise StorageError(f"{exc}\n{note}", path=exc.path, reason=exc.reason, errno_=exc.errno) from None
                raise
            lora_sd = backend.lora_file_tensors()
            done = run_dir / f"{run_name}.safetensors"
            try:
                lora_path = trainer.save_lora(loras_dir / f"{run_name}.safetensors")
            except StorageError as e:
                raise StorageError(
                    f"{e}\nTraining finished ({trainer.epoch}/{cfg.epochs} epochs): the LoRA is complete in {done} and "
                    f"in the last checkpoint {trainer.last_checkpoint}. Copy {done.name} into {loras_dir} yourself, or "
                    f"fix the folder and {resume_hint} (nothing is trained again).",
                    path=e.path, reason=e.reason, errno_=e.errno) from None
            if preview_every and "trained" not in grids:
                grids["trained"] = preview(trainer, use_adapter=True)
            history = list(trainer.history)
            last = format_metrics(history[-1], cfg.epochs) if history else "no epochs run"

        model_out, _ = comfy.sd.load_lora_for_models(model, None, lora_sd, 1.0, 0)
        curve = pil_to_image(reward_curve_image(history, title=f"{run_name}: reward during training"))
        if grids:
            base = grids.get("base", grids.get("trained"))
            both = side_by_side(base, grids.get("trained", base), titles=("base model", f"{run_name} (epoch {trainer.epoch})"))
            preview_image = pil_to_image(both)
        else:
            preview_image = torch.zeros(1, 64, 64, 3)
        summary = f"LoRA {lora_path.name} ({trainer.epoch}/{cfg.epochs} epochs) in {lora_path.parent}; run folder {run_dir}. Last epoch: {last}"
        log.info("FDFO: %s", summary)
        return {"ui": {"text": [summary]},
                "result": (model_out, lora_sd, curve, preview_image, lora_path.name)}


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
            path = publish_lora(rescued, loras_dir)
        except StorageError as e:
            log.warning("FDFO: %s", e)
            return f"It could not be copied into ComfyUI's LoRA folder either ({e.reason}); use the file in {run_dir}."
        log.warning("FDFO: stopped at epoch %d; the LoRA trained so far is %s", trainer.epoch, path)
        return f"A copy for the LoRA loaders is {path}."


NODES = {"FDFOTrainer": (FDFOTrainerNode, "FDFO Trainer")}
