"""Every registered model family through the same checks (tests/family_cases.py lists the cases).

CPU, random weights, nothing downloaded. Per case:
- the family's latent layout, time grid, prompt encoding, velocity call and decoding reproduce
  the diffusers pipeline's own sampling (same seeds): a wrong timestep scale, position ids,
  guidance or packing fails here;
- the LoRA file round-trips into a fresh pipeline (diffusers' loader and an explicit merge
  W + B A) with identical velocities; the LoRA map read both ways agrees;
- one case per family trains a few FDFO epochs and held-out brightness rises.
With COMFYUI_ROOT (and COMFYUI_PYTHON): the ComfyUI half (tests/comfy_scripts/families_in_comfyui.py)
builds each case's transformer in ComfyUI from the diffusers weights with ComfyUI's own converter,
and checks the base velocity, a manual merge W + (alpha / r) up down of our file into ComfyUI's
weights (a deliberately wrong key map must fail it), the stock LoraLoaderModelOnly with no
"lora key not loaded" line, a LoRA trained by the ComfyUI backend in diffusers, and the Trainer
node's hot MODEL against its file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import family_harness as H
from family_cases import CASES, CASES_BY_ID
from fdfo_core.families import all_families, get_family

REPO = Path(__file__).resolve().parents[1]
COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
IDS = [c.id for c in CASES]


def test_every_registered_family_has_a_case():
    covered = {c.family for c in CASES}
    assert {f.name for f in all_families()} <= covered
    for f in all_families():
        assert any(c.train for c in CASES if c.family == f.name), f"no training case for {f.name}"


@pytest.mark.parametrize("case_id", IDS)
def test_family_matches_the_diffusers_pipeline(case_id, tmp_path, one_thread):
    r = H.check_matches_pipeline(CASES_BY_ID[case_id], tmp_path)
    print(r)
    assert r["spread"] > 1e-3  # the images are not flat
    assert r["max_diff"] < 1e-4


@pytest.mark.parametrize("case_id", IDS)
def test_lora_file_round_trips_with_identical_velocities(case_id, tmp_path, one_thread):
    case = CASES_BY_ID[case_id]
    r = H.check_lora_round_trip(case, tmp_path)
    print({k: v for k, v in r.items() if k != "keys"})
    assert r["family"] == case.family
    assert all(k.startswith("diffusion_model.") for k in r["keys"]) and r["alphas"] * 3 == len(r["keys"])
    assert r["lora_effect"] > 1e-2  # the LoRA matters
    assert r["loaded_vs_hot"] < 1e-5 and r["merged_vs_hot"] < 1e-4  # merged: other rounding


@pytest.mark.parametrize("case_id", IDS)
def test_lora_map_reads_the_same_both_ways(case_id, tmp_path, one_thread):
    r = H.check_both_directions_agree(CASES_BY_ID[case_id], tmp_path)
    assert r["parts"] > 0 and not r["diffusers_only"] and not r["comfy_only"], r


@pytest.mark.parametrize("case_id", IDS)
def test_image_size_rule_is_the_models_token_grid(case_id, tmp_path, one_thread):
    """Sizes are multiples of VAE downscale x latent patch (2x2 latent tokens for the 8x-VAE
    families here, whatever the diffusers config's patch_size says: Flux's is 1; 1x1 tokens of
    HunyuanImage's 32x VAE)."""
    case = CASES_BY_ID[case_id]
    backend = H.make_backend(case, tmp_path, add_adapter=False)
    rule, m, f = backend.image_size_rule(), case.size_multiple, case.vae_scale
    assert rule.multiple == m and rule.allows(4 * m) and not rule.allows(4 * m + m // 2), rule
    assert rule.allows(6 * m) and rule.allows(5 * m) and backend.latent_shape(6 * m, 5 * m)[1:] == (6 * m // f, 5 * m // f)


@pytest.mark.parametrize("case_id", [pytest.param(c.id, marks=pytest.mark.slow) if c.slow_training else c.id
                                     for c in CASES if c.train])
def test_family_trains_and_held_out_reward_rises(case_id, tmp_path, one_thread):
    r = H.check_training(CASES_BY_ID[case_id], tmp_path)
    print(r)
    assert r["gain"] > 0 and r["t_stat"] > 3, r


# --- ComfyUI -----------------------------------------------------------------------------------------

COMFY_CASES = [c.id for c in CASES if c.comfy is not None]
COMFY_CHECKS = ["recognised", "base_velocity", "manual_merge", "wrong_map_fails", "stock_loader", "comfy_lora",
                "gradient", "trainer_node"]


@pytest.fixture(scope="module")
def comfy_results(tmp_path_factory):
    if not COMFYUI_ROOT:
        pytest.skip("set COMFYUI_ROOT (and COMFYUI_PYTHON) to run the families in ComfyUI")
    work = tmp_path_factory.mktemp("families_comfy")
    # FDFO_COMFY_CASES="wan21,lumina2" runs only those cases' ComfyUI half (the others then fail as not run).
    only = [c for c in os.environ.get("FDFO_COMFY_CASES", "").split(",") if c]
    cases = [c for c in COMFY_CASES if not only or c in only]
    for case_id in cases:
        H.prepare_comfy_inputs(CASES_BY_ID[case_id], work / case_id)
    env = dict(os.environ)
    env.setdefault("FDFO_TEST_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", env["FDFO_TEST_THREADS"])
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    proc = subprocess.run([python, str(REPO / "tests" / "comfy_scripts" / "families_in_comfyui.py"), COMFYUI_ROOT,
                           str(work), *cases], cwd=str(work), env=env, capture_output=True, text=True, timeout=1800)
    found = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            found[(r["case"], r["check"])] = r
    if not found:
        pytest.fail(f"the ComfyUI script printed no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return work, found


@pytest.mark.comfyui
@pytest.mark.parametrize("check", COMFY_CHECKS)
@pytest.mark.parametrize("case_id", COMFY_CASES)
def test_family_in_comfyui(comfy_results, case_id, check):
    _, found = comfy_results
    r = found.get((case_id, check)) or found.get((case_id, "setup"))  # a failed setup reports its error
    assert r is not None, f"{case_id}/{check} did not run"
    print(json.dumps(r, indent=1)[:3000])
    assert r["ok"], json.dumps(r, indent=1)[:5000]


@pytest.mark.comfyui
@pytest.mark.parametrize("case_id", COMFY_CASES)
def test_lora_trained_in_comfyui_gives_the_same_velocity_in_diffusers(comfy_results, case_id):
    work, found = comfy_results
    assert found.get((case_id, "comfy_lora"), {}).get("ok"), "the ComfyUI backend wrote no LoRA"
    r = H.check_comfy_lora_in_diffusers(CASES_BY_ID[case_id], work / case_id)
    print(r)
    assert r["lora_effect"] > 1e-2 and r["diff"] < 1e-4, r


def test_wan_key_converter_is_the_inverse_of_diffusers_own(tmp_path):
    """The ComfyUI half builds Wan from diffusers weights renamed by `wan_diffusers_to_comfy` (ComfyUI
    has no converter for diffusers Wan keys): diffusers' single-file converter (original / ComfyUI
    names -> diffusers) must give back every tensor under its own name."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from family_cases import wan_diffusers_to_comfy
    from tiny_pipelines import tiny_wan_pipeline

    sd = tiny_wan_pipeline(tmp_path, 0, num_layers=1).transformer.state_dict()
    comfy = wan_diffusers_to_comfy(sd)
    assert "head.modulation" in comfy and "blocks.0.self_attn.q.weight" in comfy and "blocks.0.norm3.weight" in comfy
    back = convert_wan_transformer_to_diffusers(dict(comfy))
    assert sorted(back) == sorted(sd)
    assert all(back[k] is sd[k] for k in sd)


def test_lumina2_key_converter_is_the_inverse_of_diffusers_own(tmp_path):
    """As for Wan: diffusers' `convert_lumina2_to_diffusers` gives back every tensor of the tiny
    Lumina 2 under its own name. (Its split of the fused qkv hard-codes the true widths, 2304 / 768 /
    768, so the fused tensors are checked here as [q; k; v] row blocks instead.)"""
    from diffusers.loaders.single_file_utils import convert_lumina2_to_diffusers
    from family_cases import lumina2_diffusers_to_comfy
    from tiny_pipelines import tiny_lumina2_pipeline

    sd = tiny_lumina2_pipeline(tmp_path, 0).transformer.state_dict()
    comfy = lumina2_diffusers_to_comfy(sd)
    fused = {k: comfy.pop(k) for k in [k for k in comfy if k.endswith(".attention.qkv.weight")]}
    back = convert_lumina2_to_diffusers(dict(comfy))
    unfused = {k: v for k, v in sd.items() if not any(f".attn.to_{p}." in k for p in "qkv")}
    assert sorted(back) == sorted(unfused)
    assert all(torch.equal(back[k], sd[k]) for k in unfused)
    assert len(fused) == 3  # layers, noise_refiner, context_refiner
    for key, qkv in fused.items():
        prefix = key.replace(".attention.qkv.weight", ".attn.")
        assert torch.equal(qkv, torch.cat([sd[prefix + f"to_{p}.weight"] for p in "qkv"]))


def test_family_names_are_stable():
    # Written into every LoRA file and checkpoint: renaming one orphans users' files.
    assert get_family("sd3").name == "sd3" and get_family("flux").name == "flux"


# --- refusals: the model is named, the reason given, the supported families listed (from the registry)


@pytest.mark.parametrize("cls_name, scheduler, reason", [
    ("StableDiffusionPipeline", "PNDMScheduler", "diffusion model"),
    ("StableDiffusionXLPipeline", "EulerDiscreteScheduler", "diffusion model"),
    ("FluxFillPipeline", "FlowMatchEulerDiscreteScheduler", "needs an input image and a mask"),
    ("FluxControlPipeline", "FlowMatchEulerDiscreteScheduler", "needs a control image"),
    ("StableDiffusion3Img2ImgPipeline", "FlowMatchEulerDiscreteScheduler", "needs an input image"),
    ("FluxPipeline", "EulerDiscreteScheduler", "not a flow-matching scheduler"),
    ("SomeFuturePipeline", "FlowMatchEulerDiscreteScheduler", "does not support"),
])
def test_unsupported_pipelines_are_refused_with_the_supported_families(cls_name, scheduler, reason, tmp_path):
    from fdfo_core.backend import BackendError
    from fdfo_core.backends.diffusers_backend import check_supported

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls_name, "scheduler": ["diffusers", scheduler]}))
    with pytest.raises(BackendError) as e:
        check_supported(folder)
    msg = str(e.value)
    assert cls_name in msg and reason in msg, msg
    if "scheduler" not in reason:  # a supported pipeline with a wrong scheduler needs no list
        for f in all_families():
            assert f.title in msg and all(p in msg for p in f.diffusers_pipelines), msg


def test_every_family_pipeline_is_accepted(tmp_path):
    from fdfo_core.backends.diffusers_backend import check_supported

    for f in all_families():
        for cls_name in f.diffusers_pipelines:
            folder = tmp_path / cls_name
            folder.mkdir()
            (folder / "model_index.json").write_text(json.dumps(
                {"_class_name": cls_name, "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
            assert check_supported(folder) == f.name


def test_one_preset_per_family():
    from fdfo_core.config import PRESETS, load_config

    for f in all_families():
        name = f.preset_name or f.name
        assert name in PRESETS
        load_config(name)  # valid on its own
