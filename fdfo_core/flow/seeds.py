"""Seeds of a run: every random draw of FDFO comes from a generator seeded by what it is for.

`derive_seed(seed, purpose, epoch, index...)` hashes its parts, so a draw does not depend on the
order of other draws, the process or the platform (a resumed or multi-GPU run draws the same).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from (seed, purpose, epoch, index...), stable across processes and platforms."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_prompt_indices(seed: int, epoch: int, num_prompts: int, num_pairs: int) -> torch.Tensor:
    """Which prompt each pair of an epoch uses: walks through fresh random permutations."""
    g = generator(seed, "prompts", epoch)
    reps = math.ceil(num_pairs / num_prompts)
    return torch.cat([torch.randperm(num_prompts, generator=g) for _ in range(reps)])[:num_pairs]
