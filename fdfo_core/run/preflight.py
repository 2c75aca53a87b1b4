"""Before a run writes anything: what it will write, and whether its disks can take that."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..config import FDFOConfig
from ..files import storage


def expected_bytes(params: Sequence[torch.Tensor], lora_tensors: Mapping[str, torch.Tensor], definition: Any,
                   config: FDFOConfig, epoch: int, extra: int) -> dict[str, int]:
    """What the rest of the run will write: checkpoint and LoRA file sizes (from the adapter
    parameters `params` and the LoRA file's tensors), how many checkpoints remain after the
    completed `epoch`, the metrics log, and `extra` bytes of the front end (previews)."""
    cfg = config
    adapter = sum(p.numel() * p.element_size() for p in params)
    # adapter + two AdamW moments, the definition (prompts included) and the metrics so far
    checkpoint = 3 * adapter + len(json.dumps(definition.to_dict())) + 2048 * cfg.epochs + 64 * 1024
    lora = sum(t.numel() * 4 for t in lora_tensors.values()) + 64 * 1024
    every = cfg.checkpoint_every
    remaining = range(epoch + 1, cfg.epochs + 1)
    checkpoints = sum(1 for e in remaining if every and e % every == 0)
    if cfg.epochs > epoch and (not every or cfg.epochs % every):
        checkpoints += 1  # the final one
    return {"checkpoint": checkpoint, "checkpoints": checkpoints, "lora": lora,
            "metrics": 2048 * len(remaining), "extra": extra}


def space_warnings(size: Mapping[str, int], run_dir: Path, output_dirs: Mapping[str, Path]) -> list[str]:
    """Log lines for the disks that cannot take what `expected_bytes` (`size`) says the run will
    write: the run folder's, and each other output folder's (a LoRA copy); empty when all fit."""
    h = storage.human_bytes
    need = size["checkpoints"] * size["checkpoint"] + 2 * size["lora"] + size["metrics"] + size["extra"]
    items = (f"{size['checkpoints']} checkpoint(s) of {h(size['checkpoint'])}, the LoRA of {h(size['lora'])} "
             f"and a spare copy, logs and previews")
    out = []
    run_dev = _device_of(run_dir)
    others = []
    for what, folder in output_dirs.items():
        if run_dev is not None and _device_of(folder) == run_dev:
            need += size["lora"]
        else:
            others.append(folder)
    warning = storage.space_warning(run_dir, need, items)
    if warning:
        out.append(warning)
    for folder in others:
        warning = storage.space_warning(folder, 2 * size["lora"], f"the LoRA of {h(size['lora'])} and a spare copy")
        if warning:
            out.append(warning)
    return out


def _device_of(path: Path) -> int | None:
    folder = storage._existing_ancestor(Path(path))
    try:
        return os.stat(folder).st_dev if folder is not None else None
    except OSError:
        return None
