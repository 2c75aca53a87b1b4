"""Variants and refusals of the Wan, Lumina 2 and HunyuanImage families beyond the shared harness
(tests/test_families.py): Wan's shipped UniPC flow scheduler, Wan 2.2 A14B's two experts, HunyuanImage's
glyph (ByT5) text and its distilled MeanFlow model, the ComfyUI refusals of image-conditioned variants."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import family_harness as H
from family_cases import CASES_BY_ID
from fdfo_core.backends.interface import BackendError
from fdfo_core.families import FamilyError, get_family
from fdfo_core.backends.generation import generate_images


def _index(folder, cls_name, scheduler):
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls_name, "scheduler": ["diffusers", scheduler]}))
    return folder


def test_wan_with_its_shipped_unipc_scheduler_is_accepted(tmp_path):
    from fdfo_core.backends.diffusers_backend import check_supported

    assert check_supported(_index(tmp_path / "wan", "WanPipeline", "UniPCMultistepScheduler")) == "wan"
    for other in ("QwenImagePipeline", "FluxPipeline"):  # another family's pipeline with UniPC is not a flow model
        with pytest.raises(BackendError, match="not a flow-matching scheduler"):
            check_supported(_index(tmp_path / other, other, "UniPCMultistepScheduler"))


def test_wan_samples_on_the_unipc_flow_grid(tmp_path, one_thread):
    """The time grid is the UniPC flow scheduler's own (what WanPipeline sets); a UniPC scheduler
    that is not in flow mode is refused with what to do."""
    from diffusers import UniPCMultistepScheduler

    case = CASES_BY_ID["wan21"]
    pipe = case.pipeline(tmp_path, 0)
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    backend = H.make_backend(case, tmp_path, add_adapter=False, pipeline=lambda tmp, seed: pipe)
    reference = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    reference.set_timesteps(10)
    assert torch.allclose(backend.sigmas(10, 64, 64), reference.sigmas.float())
    pipe.scheduler = UniPCMultistepScheduler()  # eps prediction, no flow sigmas
    with pytest.raises(BackendError, match="not in flow mode"):
        H.make_backend(case, tmp_path, add_adapter=False, pipeline=lambda tmp, seed: pipe)


def test_wan22_a14b_two_experts_are_refused(tmp_path):
    case = CASES_BY_ID["wan21"]
    pipe = case.pipeline(tmp_path, 0)
    pipe.register_modules(transformer_2=case.pipeline(tmp_path, 1).transformer)
    pipe.register_to_config(boundary_ratio=0.875)
    with pytest.raises(BackendError, match="two expert transformers"):
        H.make_backend(case, tmp_path, add_adapter=False, pipeline=lambda tmp, seed: pipe)


def test_hunyuan_image_glyph_text_matches_the_pipeline(tmp_path, one_thread):
    """Quoted text goes through ByT5 (the glyph tokens join the prompt's): our sampling equals the
    pipeline's for a batch with and without glyph text (the padding trim keeps every valid token)."""
    backend = H.make_backend(CASES_BY_ID["hunyuan-image"], tmp_path, add_adapter=False)
    prompts, seeds = ['a sign that says "open"', "a red circle"], [3, 4]
    cond = backend.encode_prompts(prompts)
    assert int(cond["glyph_mask"][0].sum()) > 0 and int(cond["glyph_mask"][1].sum()) == 0
    ours = generate_images(backend, prompts, seeds, 3, 128, 128)
    with torch.no_grad():
        theirs = backend.pipe(prompt=prompts, num_inference_steps=3, height=128, width=128, output_type="pt",
                              generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    assert float((ours - theirs.clamp(0, 1)).abs().max()) < 1e-4
    with torch.no_grad():  # the glyph text matters
        x = torch.randn(1, *backend.latent_shape(128, 128), generator=torch.Generator().manual_seed(0))
        t = torch.tensor([0.7])
        quoted = backend.velocity(x, t, backend.encode_prompts(['a sign that says "open"']))
        other = backend.velocity(x, t, backend.encode_prompts(['a sign that says "shut"']))
    assert float((quoted - other).abs().max()) > 1e-3


def test_hunyuan_image_distilled_meanflow_is_refused(tmp_path):
    from diffusers import HunyuanImageTransformer2DModel

    case = CASES_BY_ID["hunyuan-image"]
    pipe = case.pipeline(tmp_path, 0)
    pipe.register_modules(transformer=HunyuanImageTransformer2DModel(
        in_channels=64, out_channels=64, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, text_embed_dim=32, rope_axes_dim=(8, 8), use_meanflow=True, guidance_embeds=True))
    assert pipe.transformer.config.use_meanflow
    with pytest.raises(BackendError, match="MeanFlow"):
        H.make_backend(case, tmp_path, add_adapter=False, pipeline=lambda tmp, seed: pipe)


def test_comfy_refusals_of_image_conditioned_variants():
    """ComfyUI side (duck-typed MODEL.model): a Wan image-to-video / control model (extra input
    channels) and HunyuanImage-2.1-Distilled (time_r_in) are refused; the text-to-image ones pass."""
    def wan(in_channels, latent_channels):
        patch = SimpleNamespace(weight=torch.zeros(8, in_channels, 1, 2, 2))
        return SimpleNamespace(diffusion_model=SimpleNamespace(patch_embedding=patch),
                               latent_format=SimpleNamespace(latent_channels=latent_channels))

    family = get_family("wan")
    family.comfy_check(wan(16, 16))
    family.comfy_check(wan(48, 48))  # Wan 2.2 TI2V-5B
    with pytest.raises(FamilyError, match="image-to-video"):
        family.comfy_check(wan(36, 16))  # Wan 2.1 I2V
    hunyuan = get_family("hunyuan_image")
    params = SimpleNamespace(guidance_embed=False)
    hunyuan.comfy_check(SimpleNamespace(diffusion_model=SimpleNamespace(time_r_in=None, params=params)))
    with pytest.raises(FamilyError, match="MeanFlow"):
        hunyuan.comfy_check(SimpleNamespace(diffusion_model=SimpleNamespace(time_r_in=object(), params=params)))
