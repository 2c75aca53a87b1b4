"""The vram_gb option of FDFO Training Options (nodes/memory_choice.py): the estimate of the published model of
the same family and nearest size chooses checkpointing, storage device and micro-batches; the
loader's fp8 weights are respected; a model without an estimate and an impossible budget give
messages that say what to do."""

from __future__ import annotations

import pytest
import torch

from comfy_scripts.nodepack import import_nodepack, submodule
from fdfo_core.backends import memory as M
# The node pack imports its own copy of fdfo_core (comfyui_fdfo_nodepack.fdfo_core): use its classes.
import_nodepack()
PM = submodule("fdfo_core.backends.memory")
FDFOConfig = submodule("fdfo_core.config").FDFOConfig
TrainingError = submodule("fdfo_core.run.hooks").TrainingError


@pytest.fixture(scope="module")
def mc():
    import_nodepack()
    return submodule("nodes.memory_choice")


def fake_comfy_model(class_name: str, diffusion_model: torch.nn.Module):
    base = type(class_name, (), {})()
    base.diffusion_model = diffusion_model
    return type("ModelPatcher", (), {"model": base})()


def sd35_medium_on_meta():
    from fdfo_core.families import get_family

    m = next(p for p in get_family("sd3").published_models if p.key == "sd35-medium")
    return M.build_model(m.transformer, m.config())


def test_vram_gb_is_a_training_option_off_by_default(mc):
    spec = submodule("nodes.training_options").FDFOTrainingOptionsNode.INPUT_TYPES()["optional"]
    assert spec["vram_gb"][0] == "FLOAT" and spec["vram_gb"][1]["default"] == 0.0


def synthetic_memory(model, family, height=None, width=None, **kw):
    # The measurement itself is tested in test_memory.py (minutes for a true-width model on 2 cores).
    g = 2**30
    return PM.ModelMemory(name=model.key, transformer_params=2_470_000_000, linear_params=1_400_000_000,
                         largest_linear=20_000_000, lora_params=20_000_000, text_encoder_params=5_000_000_000,
                         vae_params=80_000_000, reward_bytes=0, latent_shape=(16, 64, 64), image_tokens=1024,
                         sample=(g // 2, g // 5), train=(g // 5, 6 * g), train_checkpointed=(g // 5, g // 2),
                         decode=(0, 2 * g // 5))


def test_vram_gb_chooses_memory_settings_for_an_sd35_medium_sized_model(mc, monkeypatch):
    monkeypatch.setattr(PM, "measure_published", synthetic_memory)
    model = fake_comfy_model("SD3", sd35_medium_on_meta())
    cfg = FDFOConfig(height=64, width=64, pairs_per_epoch=16, num_steps=4)
    roomy, message = mc.choose_comfy_memory(model, cfg, 200)
    assert "SD3.5 Medium-sized" in message and "expected peak" in message
    assert roomy.gradient_checkpointing is False and roomy.storage_device == "auto"
    assert roomy.base_weights == "auto"  # ComfyUI's loader decides the weights
    with pytest.raises(TrainingError, match="weight_dtype"):
        mc.choose_comfy_memory(model, cfg, 3)


def test_fp8_loader_weights_and_models_without_an_estimate(mc):
    lin = torch.nn.Linear(4, 4).to(torch.float8_e4m3fn)
    assert mc.comfy_weight_kind(torch.nn.Sequential(lin)) == "fp8"
    assert mc.comfy_weight_kind(torch.nn.Sequential(torch.nn.Linear(4, 4))) == "auto"
    tiny = fake_comfy_model("SD3", torch.nn.Linear(8, 8))
    with pytest.raises(TrainingError, match="no memory estimate.*memory options"):
        mc.choose_comfy_memory(tiny, FDFOConfig(), 24)
    from fdfo_core.families import get_family

    assert mc.nearest_published(get_family("flux"), 11.9e9).key in ("flux-dev", "flux-schnell")
    assert mc.nearest_published(get_family("sd3"), 8.0e9).key == "sd35-large"
