"""What a person sees while the FDFO Trainer runs, updated every epoch.

- The epoch line ("epoch 12/40 · reward 0.6123 ± 0.0811 · about 2 min 30 s left") as the node's
  progress text and as the header of the node's live image, above the latest preview grid (the
  progress-bar preview, ComfyUI's own mechanism for images during a node's run).
- The Trainer's image outputs update before the node finishes: the PreviewImage / SaveImage
  nodes wired to `reward_curve` and `preview` get the current reward curve and base-vs-latest
  comparison each epoch, through the same "executed" message ComfyUI sends when a node finishes
  (the images go to ComfyUI's temp folder). When those nodes run at the end, their final images
  replace the live ones.

Nothing here is needed for training: without a server (tests run nodes in-process) or without
connected preview nodes, the pushes do nothing.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Mapping

from .common import log

#: Node types whose displayed images may be replaced during the run.
IMAGE_DISPLAY_NODES = ("PreviewImage", "SaveImage")
_counter = itertools.count()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def epoch_line(metrics: Mapping[str, Any], total_epochs: int, seconds_left: float | None) -> str:
    """The line a person reads: epoch k of n, reward mean +- spread (std over the epoch's images),
    the time left."""
    line = (f"epoch {metrics['epoch']}/{total_epochs} · reward {metrics['reward_mean']:.4f} "
            f"± {metrics['reward_std']:.4f}")
    if seconds_left is not None:
        line += " · done" if metrics["epoch"] >= total_epochs else f" · about {format_duration(seconds_left)} left"
    return line


class EpochClock:
    """Time left from the mean duration of the epochs run in this session."""

    def __init__(self, start_epoch: int, total_epochs: int):
        self.start_epoch = start_epoch
        self.total = total_epochs
        self.t0: float | None = None

    def start(self) -> None:
        self.t0 = time.monotonic()

    def seconds_left(self, epoch: int) -> float | None:
        done = epoch - self.start_epoch
        if self.t0 is None or done <= 0:
            return None
        return (time.monotonic() - self.t0) / done * max(0, self.total - epoch)


def linked_display_nodes(prompt: Mapping[str, Any] | None, node_id: str | None, slot: int) -> list[str]:
    """Ids of the PreviewImage / SaveImage nodes fed by output `slot` of node `node_id`."""
    if not prompt or node_id is None:
        return []
    out = []
    for nid, node in prompt.items():
        if not isinstance(node, dict) or node.get("class_type") not in IMAGE_DISPLAY_NODES:
            continue
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == slot:
                out.append(str(nid))
                break
    return out


def _server():
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def save_temp_png(image, name: str) -> dict[str, str] | None:
    """Save a PIL image in ComfyUI's temp folder; the UI record ({filename, subfolder, type}) that
    the front end loads it by (None when it cannot be written: views never stop a run). A new file
    name each time, so the browser never shows a cached one."""
    try:
        import folder_paths
    except ImportError:
        return None
    from ..fdfo_core.files.drawing import save_png

    subfolder = "fdfo_live"
    filename = f"{name}_{next(_counter):05d}.png"
    try:
        save_png(image, Path(folder_paths.get_temp_directory()) / subfolder / filename, "live view image", make_folder=True)
    except Exception as e:  # a view must never stop or fail a run (StorageError, a missing temp folder, ...)
        log.warning("FDFO: could not write the live %s image: %s", name, e)
        return None
    return {"filename": filename, "subfolder": subfolder, "type": "temp"}


class LivePush:
    """Shows images on the display nodes wired to one of the Trainer's outputs while it runs."""

    def __init__(self, prompt: Mapping[str, Any] | None, node_id: str | None, slot: int, name: str):
        self.targets = linked_display_nodes(prompt, node_id, slot)
        self.name = name

    def __call__(self, image) -> bool:
        server = _server()
        if not self.targets or server is None or getattr(server, "client_id", None) is None:
            return False
        try:
            record = save_temp_png(image, self.name)
            if record is None:
                return False
            prompt_id = getattr(server, "last_prompt_id", None)
            for nid in self.targets:
                server.send_sync("executed", {"node": nid, "display_node": nid, "output": {"images": [record]},
                                              "prompt_id": prompt_id}, server.client_id)
            return True
        except Exception as e:  # a live view must never stop training
            log.warning("FDFO: could not update the live %s view: %s", self.name, e)
            return False
