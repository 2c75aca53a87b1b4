"""Atomic checkpoint files: nothing already trained is lost to a crash mid-write.

A checkpoint holds everything an exact resume needs: adapter and optimizer state, the grad
scaler, the RNG state, the completed-epoch counter, the resolved config and the model
fingerprint. Files are written to a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) then rename tmp_path to path (same filesystem, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint-*.pt in {path}; pass a checkpoint file or a run folder that has one")
        path = found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # weights_only: a checkpoint is data, never code.
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint-{epoch:05d}.pt"


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    folder = Path(folder)
    for sub in (folder / "checkpoints", folder):
        found = sorted(sub.glob("checkpoint-*.pt"))
        if found:
            return found[-1]
    return None
