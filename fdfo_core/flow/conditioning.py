"""Prompt conditioning as a flat dict of batch-first tensors.

Backends return whatever their velocity model needs (SD3: token embeddings and pooled
embeddings; Flux: the same with T5 tokens); the core only selects, concatenates and moves rows,
so it never needs to know what the tensors mean.
"""

from __future__ import annotations

from typing import Sequence

import torch

Cond = dict[str, torch.Tensor]


def cond_batch_size(cond: Cond) -> int:
    sizes = {v.shape[0] for v in cond.values()}
    if len(sizes) != 1:
        raise ValueError(f"conditioning tensors disagree on the batch size: { {k: tuple(v.shape) for k, v in cond.items()} }")
    return sizes.pop()


def cond_select(cond: Cond, index: torch.Tensor | Sequence[int]) -> Cond:
    """Rows `index` of every tensor (index may repeat rows)."""
    index = torch.as_tensor(index, dtype=torch.long)
    return {k: v[index.to(v.device)] for k, v in cond.items()}


def cond_cat(conds: Sequence[Cond]) -> Cond:
    keys = conds[0].keys()
    return {k: torch.cat([c[k] for c in conds]) for k in keys}


def cond_to(cond: Cond, device: torch.device | str) -> Cond:
    return {k: v.to(device, non_blocking=True) for k, v in cond.items()}


def cond_expand(cond: Cond, n: int) -> Cond:
    """Repeat a batch-1 conditioning n times (the unconditional prompt for CFG)."""
    if cond_batch_size(cond) != 1:
        raise ValueError("cond_expand expects a conditioning of batch size 1")
    return {k: v.expand(n, *v.shape[1:]) for k, v in cond.items()}
