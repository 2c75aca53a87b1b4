"""Small helpers shared by the FDFO nodes: type names, image conversions, progress and cancel.

Nothing here imports ComfyUI at import time; ComfyUI modules are imported inside the functions
that need them, so the node classes can be imported (and unit-tested) without ComfyUI.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch

CATEGORY = "FDFO"
#: A built reward (`fdfo_core.rewards.Reward`): images in [0, 1] + prompts -> one float per image.
REWARD = "FDFO_REWARD"
#: A list of prompt strings.
PROMPTS = "FDFO_PROMPTS"

log = logging.getLogger("fdfo")


class PromptList(list):
    """The FDFO_PROMPTS value: a plain list of non-empty prompt strings."""


def pil_to_image(pil) -> torch.Tensor:
    """PIL -> ComfyUI IMAGE [1, H, W, 3] float in [0, 1]."""
    from ..fdfo_core.files.drawing import pil_to_tensor

    return pil_to_tensor(pil).unsqueeze(0)


def image_to_nchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] -> [B, 3, H, W] float32 in [0, 1]."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"expected a batch of images [B, H, W, C], got shape {tuple(image.shape)}")
    return image[..., :3].movedim(-1, 1).float().clamp(0, 1)


def nchw_to_image(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> ComfyUI IMAGE [B, H, W, 3] float32 on the CPU."""
    return images.detach().float().cpu().movedim(1, -1).contiguous()


def torch_device(choice: str = "auto") -> torch.device:
    """"auto": ComfyUI's compute device; "cpu": the CPU."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice != "auto":
        raise ValueError(f"device must be 'auto' or 'cpu', got {choice!r}")
    import comfy.model_management

    return torch.device(comfy.model_management.get_torch_device())


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def split_prompts_for_images(prompts: Sequence[str], n_images: int) -> list[str]:
    """One prompt per image: 1 prompt for all, one per image, or blocks of equal size (a batch of
    k images per prompt, in order)."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("the prompt list is empty: give at least one prompt")
    if len(prompts) == n_images:
        return prompts
    if len(prompts) == 1:
        return prompts * n_images
    if n_images % len(prompts) == 0:
        k = n_images // len(prompts)
        return [p for p in prompts for _ in range(k)]
    raise ValueError(
        f"got {n_images} images and {len(prompts)} prompts; give one prompt, one per image, or a number of "
        f"prompts that divides the number of images (each prompt then covers consecutive images)"
    )


#: The largest side of a node's progress preview image.
PREVIEW_MAX_SIZE = 768


class NodeProgress:
    """ComfyUI progress bar (with JPEG previews) plus a status text under the node.

    `comfy.utils.ProgressBar.update_absolute` also raises when the user cancels. Updates are
    throttled; the text goes through `PromptServer.instance.send_progress_text` when a server
    exists (nodes must not assume one does: tests run them in-process).
    """

    def __init__(self, total: int, node_id: str | None = None, min_interval: float = 0.2):
        import comfy.utils

        try:
            self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        except TypeError:  # ComfyUI before node_id was an argument
            self.bar = comfy.utils.ProgressBar(total)
        self.total = max(1, int(total))
        self.node_id = node_id
        self.min_interval = min_interval
        self._last = 0.0
        self.value = 0

    def update(self, value: float, preview=None, force: bool = False, max_size: int | None = None) -> None:
        """`preview` (a PIL image) is sent as the node's image, reduced to `max_size` px (default:
        its own size up to 768; ComfyUI would otherwise enlarge a smaller image to the bound)."""
        value = int(min(max(value, 0), self.total))
        now = time.monotonic()
        if not force and preview is None and now - self._last < self.min_interval:
            return
        self._last = now
        self.value = value
        if preview is not None and max_size is None:
            max_size = min(PREVIEW_MAX_SIZE, max(preview.size)) if hasattr(preview, "size") else PREVIEW_MAX_SIZE
        self.bar.update_absolute(value, self.total, ("JPEG", preview, max_size) if preview is not None else None)

    def text(self, message: str, log_it: bool = True) -> None:
        """Show `message` under the node (it may have several lines); also log it unless told not to."""
        if log_it:
            log.info("FDFO: %s", message)
        if self.node_id is None:
            return
        try:
            from server import PromptServer
        except ImportError:
            return
        server = getattr(PromptServer, "instance", None)
        send = getattr(server, "send_progress_text", None)
        if send is not None:
            try:
                send(message, self.node_id)
            except Exception:  # a closed socket must not stop training
                pass


def reward_report(scores: Sequence[float], prompts: Sequence[str], labels: Sequence[str] | None = None) -> str:
    lines = []
    for i, (s, p) in enumerate(zip(scores, prompts)):
        tag = labels[i] if labels else f"image {i}"
        lines.append(f"{tag}: {float(s):.4f}  {p}")
    return "\n".join(lines)


def describe(value: Any) -> str:
    return getattr(value, "describe", lambda: str(value))()
