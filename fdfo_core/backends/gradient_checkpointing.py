"""Gradient checkpointing of blocks written for inference (they update tensors in place)."""

from __future__ import annotations

import torch


#: In-place tensor methods by name (besides the trailing-underscore ones).
_INPLACE_DUNDERS = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "__setitem__"})


class CopyOnInplace(torch.overrides.TorchFunctionMode):
    """While active, an in-place update of a tensor that is not a view first moves the tensor to
    fresh memory (`t.data = t.data.clone()`), so tensors saved earlier by reference keep their
    values. Used for the backward-pass recomputation of checkpointed blocks: torch's non-reentrant
    checkpoint stores what the recomputation saves as aliases, and a block that updates a saved
    tensor afterwards (`x.addcmul_(...)` after `norm(x)`) would otherwise get wrong gradients
    silently. Views are left alone (their base must see the update)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if args and isinstance(args[0], torch.Tensor) and args[0]._base is None and (
                name in _INPLACE_DUNDERS or (name.endswith("_") and not name.startswith("_") and name != "requires_grad_")):
            args[0].data = args[0].data.clone()
        return func(*args, **(kwargs or {}))
