"""Toy prompt sets for training and evaluation, deterministic by seed.

Held-out prompts describe scenes that the toy model never saw in pretraining (one scene in 8,
split by a stable hash of the scene, both phrasings together; see `grammar.split_of`), so an RL
run can train on `split="train"` prompts and measure generalisation on `split="heldout"`.
"""

from __future__ import annotations

import numpy as np

from .grammar import sample_split_spec

SPLITS = ("train", "heldout")


def sample_toy_prompts(n: int, split: str = "train", seed: int = 0, p_single: float = 0.25) -> list[str]:
    """`n` random toy captions from `split` ('train' or 'heldout'); same (n, split, seed) -> same list.

    About `p_single` of them name one group ("two red circles on a blue background"), the rest
    two groups and a relation. Prompts may repeat when `n` is large.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    # Different streams for the two splits, so seed 0 of each is not the same draw filtered twice.
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return [sample_split_spec(rng, split, p_single).caption() for _ in range(n)]


def toy_prompt_sets(n_train: int = 256, n_heldout: int = 64, seed: int = 0) -> tuple[list[str], list[str]]:
    """Distinct train and held-out prompt lists (no caption in both)."""
    train = _distinct(n_train, "train", seed)
    heldout = _distinct(n_heldout, "heldout", seed)
    return train, heldout


def _distinct(n: int, split: str, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, SPLITS.index(split), 1])
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        caption = sample_split_spec(rng, split).caption()
        if caption not in seen:
            seen.add(caption)
            out.append(caption)
    return out
