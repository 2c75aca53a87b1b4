"""Model-side caches of ComfyUI's diffusion models, off while the pack samples and trains.

Some diffusion models of newer ComfyUI (after v0.8.0; read in its code, not run here) keep state
between calls that is only right for inference with fixed weights:

- **K/V cache** (HiDream-O1, `comfy/ldm/hidream_o1/model.py`): the keys and values of the text
  prefix are computed once and reused by later calls with the same prompt (`_kv_cache_entries`,
  keyed by the token and position ids), as is the vision tower's output for the reference images;
  `clear_kv_cache()` drops both.
- **Prefix cache** (Qwen-Image 2.1, `comfy/ldm/qwen_image21/model.py`): the K/V of the text and
  reference rows, step-independent at inference, cached for a sampling run while
  `prefix_cache_enabled` is set; `reset_prefix_cache(enabled)` frees it and sets the switch.

While the pack trains, the LoRA changes the weights between calls, so a cached prefix would be
computed with an earlier LoRA (stale velocities, ratios that are not 1 at the start of an epoch),
carry no gradient to the LoRA layers that made it (a wrong gradient), and keep autograd graphs
alive between calls. `caches_off(model)` therefore, for the duration of the block:

- empties every `clear_kv_cache()` cache before and after every forward call of its module;
- switches every prefix cache off (`reset_prefix_cache(False)`, again before each call should
  anything switch it on), and restores the switch as it was (with an empty cache) on exit;

and removes its hooks on exit, also on error or cancel. Models without such caches are untouched.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

log = logging.getLogger("fdfo")


def cached_modules(model: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """(modules with a K/V cache (`clear_kv_cache()`), modules with a prefix cache
    (`reset_prefix_cache(enabled)` and `prefix_cache_enabled`)) among `model` and its submodules."""
    kv, prefix = [], []
    for module in model.modules():
        if callable(getattr(module, "clear_kv_cache", None)):
            kv.append(module)
        if callable(getattr(module, "reset_prefix_cache", None)) and hasattr(module, "prefix_cache_enabled"):
            prefix.append(module)
    return kv, prefix


def _clear(module: torch.nn.Module, *_args) -> None:
    module.clear_kv_cache()


def _prefix_off(module: torch.nn.Module, *_args) -> None:
    if module.prefix_cache_enabled or getattr(module, "prefix_cache", None) is not None:
        module.reset_prefix_cache(False)


@contextlib.contextmanager
def caches_off(model: torch.nn.Module | None) -> Iterator[list[str]]:
    """The model's own caches emptied and off for the block (see the module docstring).

    model: the diffusion model, or any module containing it (ComfyUI's BaseModel); None = nothing
    to do. Yields "ClassName: kv" / "ClassName: prefix" for each cache handled (logging, tests)."""
    if model is None or not isinstance(model, torch.nn.Module):
        yield []
        return
    kv, prefix = cached_modules(model)
    handles, restore = [], []
    names = [f"{type(m).__name__}: kv" for m in kv] + [f"{type(m).__name__}: prefix" for m in prefix]
    try:
        for module in kv:
            module.clear_kv_cache()
            handles.append(module.register_forward_pre_hook(_clear))
            handles.append(module.register_forward_hook(_clear))
        for module in prefix:
            restore.append((module, bool(module.prefix_cache_enabled)))
            module.reset_prefix_cache(False)
            handles.append(module.register_forward_pre_hook(_prefix_off))
        if names:
            log.info("FDFO: the model's own caches are off while training (%s)", ", ".join(names))
        yield names
    finally:
        for handle in handles:
            handle.remove()
        for module in kv:
            module.clear_kv_cache()
        for module, enabled in restore:
            module.reset_prefix_cache(enabled)
