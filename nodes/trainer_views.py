"""What the FDFO Trainer shows while it runs (`trainer_nodes`): its progress bar over the whole run
(`EpochProgress`), the preview grids of the base model and the LoRA, the live panel (the epoch
line above the latest grid), the `preview` output (base vs trained) and the reward curve pushed to
the display nodes wired to its outputs (`TrainerViews`). The sizes here are what the example
workflows reserve (workflows/workflow_blocks.py reads them)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..fdfo_core.config import FDFOConfig
from .common import NodeProgress, check_interrupt, log
from .live_feedback import EpochClock, LivePush, epoch_line



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
    from .scoring_nodes import thumbnails

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



class TrainerViews:
    """What the Trainer shows while it runs: preview grids of the base model and the LoRA (saved
    full size in the run folder), the reward curve and base-vs-trained pushed to the display nodes
    wired to its outputs, the progress bar with its epoch line and the time left. `plan`: the run
    (`trainer_nodes.NodeRunPlan`); `node`: the Trainer node (its output names)."""

    def __init__(self, node, backend, plan, graph, unique_id):
        self.backend, self.plan, self.unique_id = backend, plan, unique_id
        #: "base" / "trained": (grid for the `preview` output, grid for the live panel)
        self.grids: dict[str, Any] = {}
        #: the last epoch line
        self.line: str | None = None
        self.push_curve = LivePush(graph, unique_id, node.RETURN_NAMES.index("reward_curve"), "reward_curve")
        self.push_preview = LivePush(graph, unique_id, node.RETURN_NAMES.index("preview"), "preview")
        self.progress: EpochProgress | None = None
        self.clock: EpochClock | None = None

    def start(self, trainer) -> EpochProgress:
        """The progress bar and clock from the trainer's epoch (after a resume); the bar follows
        the trainer's phases."""
        plan = self.plan
        self.progress = EpochProgress(plan.cfg, trainer.epoch, self.unique_id, plan.preview_every,
                                      len(plan.preview_prompts))
        self.clock = EpochClock(trainer.epoch, plan.cfg.epochs)
        trainer.callbacks.on_progress = self.progress.phase
        return self.progress

    def preview(self, trainer, use_adapter: bool, save_as: Path | None = None):
        """The preview prompts and seeds sampled with (or without) the LoRA: (comparison grid,
        panel grid); the first image becomes the LoRA's preview; `save_as` keeps the full grid."""
        from ..fdfo_core.backends.generation import generate_images
        from ..fdfo_core.files.drawing import image_grid, save_png, to_pil

        cfg, prompts = self.plan.cfg, self.plan.preview_prompts
        images = generate_images(
            self.backend, prompts, list(range(len(prompts))), cfg.num_steps, cfg.height, cfg.width,
            cfg.cfg_scale, cfg.negative_prompt, batch_size=cfg.sample_batch_size, amp=trainer.amp,
            use_adapter=use_adapter, check_cancel=check_interrupt,
        )
        if use_adapter and images.ndim == 4 and images.shape[1] == 3:  # becomes <lora>.preview.png
            trainer.preview_image = to_pil(images[0])
        if save_as is not None:  # full size in the run folder
            save_png(image_grid(images, ncol=preview_columns(len(prompts))), save_as, "preview grid", make_folder=True)
        return display_grid(images), display_grid(images, PANEL_TILE_MAX)

    def comparison(self, epoch: int):
        """The `preview` output: base vs trained grids."""
        base = self.grids.get("base") or self.grids["trained"]
        trained = self.grids.get("trained") or base
        return comparison_image(base[0], trained[0], f"{self.plan.run_name} (epoch {epoch})")

    def on_epoch_end(self, trainer, metrics) -> None:
        """The trainer's epoch callback: the prompt cache's note, the reward curve (run folder and
        display nodes), the preview grid on its cadence, the epoch line and the bar."""
        from ..fdfo_core.files.drawing import reward_curve_image, save_png

        plan, cfg = self.plan, self.plan.cfg
        epoch = metrics["epoch"]
        cache = getattr(self.backend, "prompt_cache", None)
        note = cache.first_eviction_note() if cache is not None else None
        if note:  # once, right after the epoch line that first dropped a prompt
            self.log_line(note)
        curve = reward_curve_image(trainer.history, title=f"{plan.run_name}: reward during training",
                                   size=REWARD_CURVE_SIZE, guardrails=trainer.guardrails)
        save_png(curve, plan.run_dir / "reward_curve.png", "reward curve")
        self.push_curve(curve)
        if plan.preview_every and (epoch % plan.preview_every == 0 or epoch == cfg.epochs):
            self.grids["trained"] = self.preview(trainer, use_adapter=True,
                                                 save_as=plan.run_dir / "samples" / f"epoch-{epoch:05d}.png")
            self.push_preview(self.comparison(epoch))
        self.line = line = epoch_line(metrics, cfg.epochs, self.clock.seconds_left(epoch))
        shown = self.grids.get("trained", self.grids.get("base"))
        self.progress.epoch_done(epoch, preview=live_panel(shown[1], line) if shown is not None else None, text=line)

    @staticmethod
    def log_line(message: str) -> None:
        """The trainer's full epoch metrics and notes: the console."""
        log.info("FDFO: %s", message)
