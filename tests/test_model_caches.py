"""nodes/model_caches.py without ComfyUI, on labelled stand-ins of newer ComfyUI's model caches.

STAND-INS (not ComfyUI): `KVCachedModel` reproduces the behaviour of HiDream-O1's prefix K/V cache
as read in newer ComfyUI's `comfy/ldm/hidream_o1/model.py` (after v0.8.0, not run here): the
keys/values of the text prefix are snapshotted on a call and reused by a later call with equal
token ids (`_kv_cache_entries`), `clear_kv_cache()` drops them. `PrefixCachedModel` reproduces
Qwen-Image 2.1's (`comfy/ldm/qwen_image21/model.py`): a prefix cache used while
`prefix_cache_enabled`, freed and switched by `reset_prefix_cache(enabled)`. Both compute a toy
attention-like output from a trainable prefix projection, so a reused cache shows as a stale
output and a missing gradient, as it would in the real models.
"""

from __future__ import annotations

import pytest
import torch

from comfy_scripts.nodepack import submodule

mc = submodule("nodes.model_caches")


class _Prefixed(torch.nn.Module):
    """out = x + mean over the prefix of k(prefix), with k a Linear (the LoRA target)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(16, 8)
        self.k = torch.nn.Linear(8, 8)

    def prefix_kv(self, ids):
        return self.k(self.embed(ids))

    def reference(self, x, ids):  # no cache at all
        return x + self.prefix_kv(ids).mean(dim=1)


class KVCachedModel(_Prefixed):
    """STAND-IN for HiDream-O1's K/V cache (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._kv_cache_entries = []
        self._visual_cache = None

    def clear_kv_cache(self):
        self._kv_cache_entries = []
        self._visual_cache = None

    def forward(self, x, ids):
        hit = next((e for e in self._kv_cache_entries if torch.equal(e["input_ids"], ids)), None)
        if hit is None:
            kv = self.prefix_kv(ids)
            self._kv_cache_entries = (self._kv_cache_entries + [{"input_ids": ids.clone(), "kv": kv}])[-2:]
        else:
            kv = hit["kv"]
        return x + kv.mean(dim=1)


class PrefixCachedModel(_Prefixed):
    """STAND-IN for Qwen-Image 2.1's prefix cache (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.prefix_cache = None
        self.prefix_cache_enabled = False
        self.resets = []

    def reset_prefix_cache(self, enabled):
        self.resets.append(enabled)
        self.prefix_cache = None
        self.prefix_cache_enabled = enabled

    def forward(self, x, ids):
        if not self.prefix_cache_enabled:
            return self.reference(x, ids)
        if self.prefix_cache is None or not torch.equal(self.prefix_cache[0], ids):
            self.prefix_cache = (ids.clone(), self.prefix_kv(ids).detach())
        return x + self.prefix_cache[1].mean(dim=1)


class Wrapper(torch.nn.Module):  # ComfyUI's BaseModel holds the transformer as `diffusion_model`
    def __init__(self, inner):
        super().__init__()
        self.diffusion_model = inner


def train_step_sees_fresh_weights(model: torch.nn.Module, inner: _Prefixed) -> None:
    """Two calls with the same prompt around a weight update (a LoRA step): the second call's output
    and gradient are those of the updated weights, as computed with no cache at all."""
    x, ids = torch.randn(2, 8), torch.tensor([[1, 2, 3], [4, 5, 6]])
    inner(x, ids)  # a sampling call
    with torch.no_grad():
        inner.k.weight.add_(0.5)  # the optimizer changes the LoRA'd layer
    out = inner(x, ids)
    expected = inner.reference(x, ids)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    got = inner.k.weight.grad.clone()
    inner.k.weight.grad = None
    expected.square().sum().backward()
    torch.testing.assert_close(got, inner.k.weight.grad)
    inner.k.weight.grad = None


def test_the_stand_ins_do_cache_stale_prefixes():
    """Without the context the stand-ins reuse a prefix computed with the old weights (what the
    pack must prevent); this is what makes the tests below able to fail."""
    for inner in (KVCachedModel(), PrefixCachedModel()):
        if isinstance(inner, PrefixCachedModel):
            inner.reset_prefix_cache(True)
        with pytest.raises(AssertionError):
            train_step_sees_fresh_weights(Wrapper(inner), inner)


@pytest.mark.parametrize("kind", [KVCachedModel, PrefixCachedModel])
def test_caches_are_off_while_training_and_restored_after(kind):
    inner = kind()
    model = Wrapper(inner)
    if kind is PrefixCachedModel:
        inner.reset_prefix_cache(True)  # e.g. left on by ComfyUI's sampler
    with mc.caches_off(model) as names:
        assert names == [f"{kind.__name__}: {'kv' if kind is KVCachedModel else 'prefix'}"]
        train_step_sees_fresh_weights(model, inner)
        if kind is PrefixCachedModel:
            inner.prefix_cache_enabled = True  # switched on again mid-run: off again at the next call
            train_step_sees_fresh_weights(model, inner)
        else:
            assert inner._kv_cache_entries == []  # emptied after each call: no graph kept alive
    assert not inner._forward_hooks and not inner._forward_pre_hooks
    if kind is PrefixCachedModel:
        assert inner.prefix_cache_enabled and inner.prefix_cache is None  # as it was, emptied
    else:
        inner(torch.randn(2, 8), torch.tensor([[1, 2, 3], [4, 5, 6]]))
        assert len(inner._kv_cache_entries) == 1  # inference caching works again after


def test_caches_are_restored_on_error_and_other_models_untouched():
    inner = PrefixCachedModel()
    inner.reset_prefix_cache(True)
    with pytest.raises(RuntimeError, match="cancelled"):
        with mc.caches_off(Wrapper(inner)):
            assert not inner.prefix_cache_enabled
            raise RuntimeError("cancelled")
    assert inner.prefix_cache_enabled and not inner._forward_pre_hooks
    plain = torch.nn.Linear(2, 2)
    with mc.caches_off(plain) as names:
        assert names == [] and not plain._forward_pre_hooks
    with mc.caches_off(None) as names:
        assert names == []
