"""nodes/training_mode.py without ComfyUI, on a labelled stand-in of the ComfyUI API it handles.

STAND-IN (not ComfyUI): `comfy.quant_ops.ck.apply_rope1` / `apply_rope` are a torch custom op
registered WITHOUT an autograd formula, as comfy-kitchen's are (ComfyUI v0.8.0:
"Trying to backward through comfy_kitchen.apply_rope1.default but no autograd formula was
registered"), bound into a "model module" by `from ... import apply_rope1` the way v0.8.0's
`comfy/ldm/{wan,qwen_image,...}/model.py` bind it; `comfy.model_management.in_training` is the
flag of ComfyUI after v0.8.0 (absent in v0.8.0 itself). The real kernels are exercised by the
ComfyUI-gated family suite (tests/test_families.py, gradient check on v0.8.0).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from comfy_scripts.nodepack import submodule

tm = submodule("nodes.training_mode")


def _reference_rope1(x, freqs):  # the rotation written out per pair, independent of the module's reshape
    xf = x.float()
    even, odd = xf[..., 0::2], xf[..., 1::2]
    out_even = freqs[..., 0, 0] * even + freqs[..., 0, 1] * odd
    out_odd = freqs[..., 1, 0] * even + freqs[..., 1, 1] * odd
    return torch.stack([out_even, out_odd], dim=-1).reshape(x.shape).type_as(x)


@torch.library.custom_op("fdfo_test_kitchen::apply_rope1", mutates_args=())
def _kitchen_rope1(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    return _reference_rope1(x, freqs_cis)


def _kitchen_rope(xq, xk, freqs_cis):
    return _kitchen_rope1(xq, freqs_cis), _kitchen_rope1(xk, freqs_cis)


def freqs(length: int, dim: int) -> torch.Tensor:
    angles = torch.arange(length)[:, None] * (1.0 / 10000 ** (torch.arange(dim // 2) / (dim // 2)))
    c, s = torch.cos(angles), torch.sin(angles)
    return torch.stack([c, -s, s, c], dim=-1).reshape(1, 1, length, dim // 2, 2, 2).float()


@pytest.fixture
def stand_in(monkeypatch):
    """A ComfyUI stand-in: comfy.quant_ops.ck (kitchen ops without autograd), a model module that
    imported them, and comfy.model_management with (newer ComfyUI) an `in_training` flag."""
    ck = types.SimpleNamespace(apply_rope1=_kitchen_rope1, apply_rope=_kitchen_rope)
    quant_ops = types.ModuleType("comfy.quant_ops")
    quant_ops.ck = ck
    model = types.ModuleType("fdfo_standin_model")
    model.apply_rope1 = _kitchen_rope1  # `from comfy.ldm.flux.math import apply_rope1`
    model.rope_alias = _kitchen_rope  # imported under another name
    mm = types.ModuleType("comfy.model_management")
    mm.in_training = False
    for name, module in (("comfy.quant_ops", quant_ops), ("fdfo_standin_model", model), ("comfy.model_management", mm)):
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(ck=ck, model=model, mm=mm)


def test_the_stand_in_kernel_has_no_gradient(stand_in):
    """The check below can fail: outside training mode the kernel refuses a backward pass."""
    x = torch.randn(1, 2, 5, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="autograd"):
        stand_in.model.apply_rope1(x, freqs(5, 8)).sum().backward()


def test_training_mode_differentiates_the_fused_rope_and_restores_everything(stand_in):
    x = torch.randn(2, 3, 5, 8, requires_grad=True)
    k = torch.randn(2, 3, 5, 8, requires_grad=True)
    f = freqs(5, 8)
    w = torch.randn(2, 3, 5, 8)
    with torch.no_grad():
        kernel_out = stand_in.model.apply_rope1(x, f)
    with tm.training_mode() as routed:
        assert stand_in.mm.in_training is True
        assert "fdfo_standin_model.apply_rope1" in routed and "fdfo_standin_model.rope_alias" in routed
        out = stand_in.model.apply_rope1(x, f)
        q2, k2 = stand_in.model.rope_alias(x, k, f)
        (out * w).sum().backward()
        ((q2 + k2) * w).sum().backward()
    # the eager path computes the kernel's function ...
    torch.testing.assert_close(out.detach(), kernel_out, rtol=1e-6, atol=1e-6)
    # ... and its gradient is the reference's: d/dx sum(w * R x) = R^T w, once from out, once from q2
    xr = x.detach().clone().requires_grad_(True)
    (2 * (_reference_rope1(xr, f) * w)).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-6)
    # restored: the kernel again, the flag as it was
    assert stand_in.model.apply_rope1 is _kitchen_rope1 and stand_in.model.rope_alias is _kitchen_rope
    assert stand_in.ck.apply_rope1 is _kitchen_rope1
    assert stand_in.mm.in_training is False


def test_training_mode_restores_on_error_and_nests(stand_in):
    with pytest.raises(KeyboardInterrupt):
        with tm.training_mode():
            with tm.training_mode() as inner:
                assert inner == []  # already routed by the outer block
                assert stand_in.mm.in_training is True
            assert stand_in.mm.in_training is True and stand_in.model.apply_rope1 is tm.rope1
            raise KeyboardInterrupt
    assert stand_in.model.apply_rope1 is _kitchen_rope1 and stand_in.mm.in_training is False


def test_training_mode_without_kitchen_or_flag_changes_nothing(monkeypatch):
    """ComfyUI v0.3.64: no comfy-kitchen, no flag."""
    mm = types.ModuleType("comfy.model_management")
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setitem(sys.modules, "comfy.quant_ops", types.ModuleType("comfy.quant_ops"))
    with tm.training_mode() as routed:
        assert routed == [] and not hasattr(mm, "in_training")
    assert not hasattr(mm, "in_training")
