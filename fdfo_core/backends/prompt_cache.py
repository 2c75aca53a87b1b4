"""A least-recently-used cache of per-prompt conditioning, bounded by the bytes its tensors hold.

A backend that encodes each prompt once and keeps the result (the ComfyUI backend does: its text
encoders may live on another device and reloading them per epoch is slow) must not grow with the
prompt list. One SD3 / SD3.5 entry is about 154 x 4096 float32 T5+CLIP tokens (2.5 MB), one Flux
entry 256 x 4096 (4.2 MB); the published recipe walks ~25k prompts, which would be 60-100 GB
unbounded. The bound is in bytes, measured from each entry's real tensors (the storages they keep
alive, each counted once), not a number of entries, because entry sizes differ by model family
and prompt length.

No ComfyUI import: the class is plain Python + torch, so it is unit-tested without ComfyUI.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, Iterable, TypeVar

import torch

#: 2 GiB: a few hundred SD3.5 / Flux prompts, more than one epoch of the published recipe
#: (432 pairs), and small enough to sit beside ComfyUI on a 32 GB machine.
DEFAULT_PROMPT_CACHE_BYTES = 2 * 1024**3
MB = 1024**2

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _tensors(obj: Any, depth: int = 0) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth > 6:
        return
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            yield from _tensors(v, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from _tensors(vars(obj), depth + 1)


def tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors inside `obj` (nested dicts, lists, tuples, dataclasses): the size
    of each distinct storage they keep alive, so a small view of a large tensor counts as the large
    tensor and two views of one storage count once."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in _tensors(obj):
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def compact(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t` on the CPU in `dtype` (floating tensors only), in a storage of its own size: a cached
    view must not keep its parent's larger storage alive."""
    t = t.detach()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    t = t.cpu()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        t = t.contiguous().clone()
    return t


class PromptCache(Generic[K, V]):
    """LRU map key -> entry whose entries' tensors hold at most `max_bytes` (None: unbounded).

    `put` evicts the least recently used entries until the new one fits; an entry larger than the
    whole bound is returned to the caller but not kept. `get` marks an entry as used.
    """

    def __init__(self, max_bytes: int | None = DEFAULT_PROMPT_CACHE_BYTES,
                 size_of: Callable[[Any], int] = tensor_bytes):
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None (unbounded), got {max_bytes}")
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0
        self.peak_bytes = 0
        self.evictions = 0
        self.misses = 0
        self._reported = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        item = self._entries.get(key)
        if item is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V) -> V:
        size = int(self.size_of(value))
        if key in self._entries:
            self.bytes -= self._entries.pop(key)[1]
        if self.max_bytes is not None:
            if size > self.max_bytes:
                return value
            while self._entries and self.bytes + size > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped
                self.evictions += 1
        self._entries[key] = (value, size)
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return value

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def describe(self) -> str:
        bound = "unbounded" if self.max_bytes is None else f"bound {self.max_bytes / MB:.0f} MB"
        return f"{len(self)} prompts, {self.bytes / MB:.1f} MB ({bound})"

    def first_eviction_note(self) -> str | None:
        """Once, after the first eviction: what the cache holds (for the epoch log line)."""
        if self._reported or not self.evictions:
            return None
        self._reported = True
        return (f"prompt cache full: {self.describe()}; the least recently used prompts are dropped and "
                "re-encoded when needed")
