"""Atomic checkpoint files: nothing already trained is lost to a crash mid-write.

A checkpoint holds everything an exact resume needs: adapter and optimizer state, the grad
scaler, the RNG state, the completed-epoch counter, the metrics so far, and the run's definition
(model fingerprint, prompts, reward, every hyperparameter: `run.definition.RunDefinition`), so
a checkpoint file alone says what it was trained on. Files are written through `storage` (a
temporary file in the same folder, fsynced and renamed into place; a failed write raises
StorageError and leaves nothing behind).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..files import storage

FORMAT = "fdfo-checkpoint-2"
#: Formats this version resumes ("-1": before the run definition was recorded).
READABLE_FORMATS = ("fdfo-checkpoint-1", FORMAT)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], what: str = "file") -> Path:
    """`storage.atomic_write` for writers that need a file *name*: write(tmp_path), fsync,
    rename. Missing folders are created; OS failures raise StorageError, leaving no temp file."""
    path = Path(path)
    storage.ensure_dir(path.parent, f"folder of the {what}", parents=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=storage.TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except Exception as e:
        err = storage.storage_error(e, path, what)
        if err is None:
            raise
        raise err from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return storage.atomic_write(path, lambda f: torch.save(state, f), "checkpoint", make_folder=True)


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint-*.pt in {path}; pass a checkpoint file or a run folder that has one")
        path = found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    # weights_only: a checkpoint is data, never code.
    return torch.load(_resolve(path), map_location="cpu", weights_only=True)


def peek_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's state without reading its tensors into memory (memory-mapped when the file
    allows; a file written without the zip container is loaded whole)."""
    path = _resolve(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file written without the zip container cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint-{epoch:05d}.pt"


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The checkpoint files of a run folder, oldest first (`checkpoints/`, else the folder itself)."""
    folder = Path(folder)
    for sub in (folder / "checkpoints", folder):
        found = sorted(sub.glob("checkpoint-*.pt"))
        if found:
            return found
    return []


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    found = checkpoint_files(folder)
    return found[-1] if found else None


def checkpoint_run_id(path: str | os.PathLike) -> str | None:
    """The run id a checkpoint was written by (run.json's "run_id"), without loading its tensors;
    None for a checkpoint written before run ids existed or a file that cannot be read."""
    try:
        value = peek_checkpoint(path).get("run_id")
    except Exception:  # an unreadable file: not this run's either way
        return None
    return value if isinstance(value, str) and value else None
