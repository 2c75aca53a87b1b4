"""nodes/fp8_rounding.py without ComfyUI: the fp8 note's figures on stand-in layers.

STAND-INS (not ComfyUI): `Op` is a layer as ComfyUI's ops look to the pack (a `weight_function`
list, in / out features, a weight stored in fp8, optionally v0.3.64's scaled-fp8 `scale_weight`);
`comfy.float.stochastic_rounding` / `comfy.model_patcher.string_to_seed` are replaced by recording
stand-ins where a test needs them. The emulation against ComfyUI's real merge is checked inside
ComfyUI (tests/comfy_scripts/nodes_in_comfyui.py, `fp8_rounding_note_is_the_loaders_merge`).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from comfy_scripts.nodepack import submodule

fr = submodule("nodes.fp8_rounding")


class Op(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, scale: float | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.weight_function, self.bias_function = [], []
        self.out_features, self.in_features = weight.shape
        if scale is not None:
            self.scale_weight = torch.tensor(scale)


class Adapter:
    def __init__(self, delta: torch.Tensor):
        self._delta = delta

    def delta(self):
        return self._delta


@pytest.fixture(autouse=True)
def no_comfy(monkeypatch):
    for name in ("comfy.float", "comfy.model_patcher"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def model_with(weight, delta, scale=None):
    model = torch.nn.Module()
    model.block = Op(weight, scale)
    return model, {"block": Adapter(delta)}


def test_noise_of_round_to_nearest_against_the_change():
    torch.manual_seed(0)
    w = torch.randn(16, 16).to(torch.float8_e4m3fn)
    delta = torch.randn(16, 16) * 1e-3  # far under an fp8 step (about 1/16 of |w|)
    model, adapters = model_with(w, delta)
    r = fr.loader_rounding(adapters, model)
    merged = w.float() + delta
    expected = float((merged.to(torch.float8_e4m3fn).float() - merged).norm() / delta.norm())
    assert not r.stochastic and r.layers == r.targets == 1 and r.dtype == "float8_e4m3fn"
    assert r.noise_to_change == pytest.approx(expected, rel=1e-5)
    assert r.noise_to_change > 0.9 and r.below_half_step > 0.9  # nearest rounding undoes the change: noise ~ |dW|
    big = fr.loader_rounding({"block": Adapter(w.float() * 3)}, model)
    assert big.noise_to_change < 0.1 and big.below_half_step < 0.1
    note = fr.rounding_note(r)
    assert note.startswith("fp8 weights (float8_e4m3fn, 1 of 1 LoRA layers)") and f"{r.noise_to_change:.2f}x" in note


def test_scaled_fp8_rounds_on_the_layers_grid():
    """A scaled-fp8 layer (W = s W_raw): the merge is rounded as (W + dW) / s and measured in W's units."""
    torch.manual_seed(1)
    s = 0.004
    raw = torch.randn(8, 8).to(torch.float8_e4m3fn)
    delta = torch.randn(8, 8) * s * 0.5
    model, adapters = model_with(raw, delta, scale=s)
    r = fr.loader_rounding(adapters, model)
    merged = (raw.float() * s + delta) / s
    expected = float(((merged.to(torch.float8_e4m3fn).float() - merged) * s).norm() / delta.norm())
    assert r.noise_to_change == pytest.approx(expected, rel=1e-4)


def test_the_loaders_own_stochastic_rounding_and_seeds_are_used(monkeypatch):
    seen = []

    def stochastic_rounding(value, dtype, seed=0):
        seen.append((dtype, seed))
        return value.to(dtype)

    monkeypatch.setitem(sys.modules, "comfy.float", types.SimpleNamespace(stochastic_rounding=stochastic_rounding))
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", types.SimpleNamespace(string_to_seed=lambda key: len(key)))
    model, adapters = model_with(torch.randn(4, 4).to(torch.float8_e4m3fn), torch.randn(4, 4) * 1e-2)
    r = fr.loader_rounding(adapters, model)
    assert r.stochastic and seen == [(torch.float8_e4m3fn, len("diffusion_model.block.weight"))]


def test_no_note_without_fp8_targets():
    model, adapters = model_with(torch.randn(4, 4), torch.randn(4, 4))
    assert fr.loader_rounding(adapters, model) is None and fr.rounding_note(None) is None
    assert fr.backend_rounding_note(types.SimpleNamespace(adapters={}, base=None)) is None
    assert fr.backend_rounding_note(object()) is None
    fp8_model, fp8_adapters = model_with(torch.randn(4, 4).to(torch.float8_e4m3fn), torch.randn(4, 4) * 1e-2)
    backend = types.SimpleNamespace(adapters=fp8_adapters, base=types.SimpleNamespace(diffusion_model=fp8_model))
    assert fr.backend_rounding_note(backend).startswith("fp8 weights")
