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

from comfy_scripts.results import script_results

REPO = Path(__file__).resolve().parents[1]
COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
IDS = [c.id for c in CASES]

#: Training a few epochs per family takes 5-40 s each on CI's CPUs: the default suite trains the
#: first family only; FDFO_SLOW=1 trains every family (run it when a family or the trainer changes).
RUN_SLOW = os.environ.get("FDFO_SLOW") == "1"
SLOW = [pytest.mark.slow, pytest.mark.skipif(not RUN_SLOW, reason="slow per-family check: set FDFO_SLOW=1 to run it")]

#: Loading from a folder and gradient checkpointing, per case: in the default suite for the cases
#: without a ComfyUI half or whose ComfyUI half needs a newer ComfyUI than v0.3.64 (whose gradients
#: nothing else checks where only that one is installed), every case with FDFO_SLOW=1.
def extra_ids(cases):
    return [c.id if c.comfy is None or c.comfy_since else pytest.param(c.id, marks=SLOW) for c in cases]


def test_every_registered_family_has_a_case():
    covered = {c.family for c in CASES}
    assert {f.name for f in all_families()} <= covered
    for f in all_families():
        assert any(c.train for c in CASES if c.family == f.name), f"no training case for {f.name}"


@pytest.mark.parametrize("case_id", IDS)
def test_family_matches_the_diffusers_pipeline(case_id, tmp_path, one_thread):
    r = H.check_matches_pipeline(CASES_BY_ID[case_id], tmp_path)
    r.pop("images")
    print(r)
    assert r["spread"] > 1e-3  # the images are not flat
    assert r["max_diff"] < 1e-4


@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.cfg_kwargs is not None])
def test_cfg_matches_the_pipelines_cfg(case_id, tmp_path, one_thread):
    """True CFG (cfg_scale 3, empty negative prompt) against the pipeline's, with its own scale
    convention (Z-Image: guidance_scale = cfg_scale - 1)."""
    case = CASES_BY_ID[case_id]
    r = H.check_matches_pipeline(case, tmp_path, cfg_scale=3.0)
    backend = H.make_backend(case, tmp_path, add_adapter=False)
    plain = H.generate_images(backend, H.PROMPTS[:2], [11, 12], 4, case.size, case.size)
    cfg_effect = float((r.pop("images") - plain).abs().max())
    print(r, cfg_effect)
    assert r["max_diff"] < 1e-4 and r["spread"] > 1e-3 and cfg_effect > 1e-2


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


@pytest.mark.parametrize("case_id", extra_ids(c for c in CASES if c.folder_round_trip))
def test_saved_model_folder_loads_with_the_same_velocity(case_id, tmp_path, one_thread):
    case = CASES_BY_ID[case_id]
    r = H.check_saved_folder_loads(case, tmp_path)
    assert r["family"] == case.family and r["diff"] < 1e-6, r


@pytest.mark.parametrize("case_id", extra_ids(CASES))
def test_gradient_checkpointing_gives_the_same_gradients(case_id, tmp_path, one_thread):
    r = H.check_gradient_checkpointing(CASES_BY_ID[case_id], tmp_path)
    assert r["norm"] > 0 and r["diff"] < 1e-5, r


@pytest.mark.parametrize("case_id", IDS)
def test_velocity_runs_in_bf16(case_id, tmp_path, one_thread):
    """CUDA runs the transformer in bf16: timestep, ids, masks and guidance must suit it. (Loose
    bound: with these random weights, rounding t to bf16 before the timestep embedding, as the Flux
    pipelines do, moves the velocity by up to ~20 %; a wrong dtype path fails or is off by ~100 %.)"""
    r = H.check_bf16_velocity(CASES_BY_ID[case_id], tmp_path)
    assert r["finite"] and r["diff"] < 0.5, r


#: One case per family in the default suite (the first), every case with FDFO_SLOW=1.
ONE_PER_FAMILY = [c.id if c is next(d for d in CASES if d.family == c.family) else pytest.param(c.id, marks=SLOW)
                  for c in CASES]


@pytest.mark.parametrize("case_id", ONE_PER_FAMILY)
def test_memory_modes_run_on_every_family(case_id, tmp_path, one_thread):
    """fp8 base weights (what --vram picks by itself on a 24 GB card) with offload and states on
    the CPU, and fp8 under gradient checkpointing, one velocity + LoRA gradient each (issue 27: fp8 crashed
    on Wan 2.1 and Z-Image with "mat1 and mat2 must have the same dtype", their embedders cast to
    fp8 against the model class's own skip list). fp8 rounds each weight by up to 2^-4: the
    velocity of these random models (std 1 / sqrt(fan_in), deep for their width) moves by up to
    ~15 % of its norm."""
    r = H.check_memory_modes(CASES_BY_ID[case_id], tmp_path)
    print(r)
    assert r["fp8_finite"] and r["fp8_grad_norm"] > 0 and r["lora_targets_in_fp8"] and r["lora_targets_fp8_count"], r
    assert 0.0 < r["fp8_diff"] < 0.3, r
    assert r["declared_in_fp8"] == [], r
    assert r["checkpointing_on"] and r["fp8_ckpt_diff"] < 1e-5, r


@pytest.mark.parametrize("case_id", IDS)
def test_image_size_rule_is_the_models_token_grid(case_id, tmp_path, one_thread):
    """Sizes are multiples of VAE downscale x latent patch (2x2 latent tokens for the 8x-VAE
    families here, whatever the diffusers config's patch_size says: Flux's is 1); Flux.2's latent is
    already patched (16 px cells); Wan 2.2 TI2V's VAE downscales 16x (2x2 tokens: 32 px);
    HunyuanImage's 32x (1x1 tokens)."""
    case = CASES_BY_ID[case_id]
    backend = H.make_backend(case, tmp_path, add_adapter=False)
    rule, m, cell = backend.image_size_rule(), case.size_multiple, case.latent_cell
    assert rule.multiple == m and rule.allows(4 * m) and not rule.allows(4 * m + m // 2), rule
    assert rule.allows(6 * m) and rule.allows(5 * m) and backend.latent_shape(6 * m, 5 * m)[1:] == (6 * m // cell, 5 * m // cell)


TRAIN_CASES = [c.id if c.family == CASES[0].family else pytest.param(c.id, marks=SLOW) for c in CASES if c.train]


@pytest.mark.parametrize("case_id", TRAIN_CASES)
def test_family_trains_and_held_out_reward_rises(case_id, tmp_path, one_thread):
    r = H.check_training(CASES_BY_ID[case_id], tmp_path)
    print(r)
    assert r["gain"] > 0 and r["t_stat"] > 3, r


# --- family quirks the shared checks cannot see -----------------------------------------------------


def test_chroma_velocity_does_not_depend_on_prompt_padding(tmp_path, one_thread):
    """Chroma attends to a prompt's tokens and one padding token, however far prompts are padded
    (diffusers' pipeline passes a float mask that masks nothing); rows of different lengths in one
    batch give what each gives alone."""
    import torch

    from fdfo_core.families import FamilyOptions

    backend = H.make_backend(CASES_BY_ID["chroma"], tmp_path, add_adapter=False)
    family, pipe = backend.model_family, backend.pipe
    prompts = ["a red circle", "two blue squares in a row", "x"]
    x, t = torch.randn(3, 16, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.9, 0.5, 0.2])
    with torch.no_grad():
        v = {}
        for length in (32, 48):
            options = family.options(FamilyOptions(max_sequence_length=length))
            cond = family.diffusers_encode_prompts(pipe, prompts, torch.device("cpu"), options)
            # one token per letter, BOS, EOS and one padding token
            assert cond["prompt_mask"].sum(dim=1).tolist() == [len(p.replace(" ", "")) + 3 for p in prompts]
            v[length] = family.diffusers_velocity(pipe, x, t, cond, options)
        alone = torch.cat([family.diffusers_velocity(pipe, x[i:i + 1], t[i:i + 1], {k: c[i:i + 1] for k, c in cond.items()},
                                                     options) for i in range(3)])
        masked_nothing = pipe.transformer(  # what the float mask amounts to: every padding token attended
            hidden_states=H.pack_2x2(x[:1]), timestep=t[:1], encoder_hidden_states=cond["prompt_embeds"][:1],
            txt_ids=torch.zeros(48, 3), img_ids=H.flux_img_ids(8, 8), return_dict=False)[0]
    assert (v[32] - v[48]).abs().max() < 1e-5 and (v[48] - alone).abs().max() < 1e-5
    assert (H.unpack_2x2(masked_nothing, 8, 8) - v[48][:1]).abs().max() > 1e-3


def test_hidream_routed_experts_pass_gradients(tmp_path, one_thread):
    """diffusers runs HiDream's routed experts under no_grad in eval mode; the family runs them on
    their differentiable path, with the same velocity."""
    import torch

    backend = H.make_backend(CASES_BY_ID["hidream"], tmp_path)
    H.perturb_lora(backend)
    x, t, cond = H.probe(backend)
    moe = [m for m in backend.transformer.modules() if type(m).__name__ == "MOEFeedForwardSwiGLU"]
    assert moe and all(m.training for m in moe) and not backend.transformer.training

    def grads():
        for p in backend.trainable_parameters():
            p.grad = None
        v = backend.velocity(x, t, cond)
        v.square().sum().backward()
        return v.detach(), torch.cat([p.grad.flatten() for p in backend.trainable_parameters()])

    v, g = grads()
    for m in moe:
        m.training = False  # diffusers' inference path
    v_eval, g_eval = grads()
    assert (v - v_eval).abs().max() < 1e-4 * v.abs().max()
    assert (g - g_eval).abs().max() > 1e-2 * g.abs().max()  # the inference path loses gradient


def test_hidream_with_its_unipc_flow_scheduler(tmp_path, one_thread):
    """HiDream pipelines may ship UniPC in flow mode (the pipeline handles it): accepted, its own grid
    is the time grid; UniPC in diffusion mode is refused by name."""
    from diffusers import UniPCMultistepScheduler

    from fdfo_core.backends.interface import BackendError
    from fdfo_core.backends.diffusers_backend import check_supported

    case = CASES_BY_ID["hidream"]
    flow = UniPCMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")

    def with_scheduler(scheduler):
        def build(tmp, seed):
            pipe = case.pipeline(tmp, seed)
            pipe.scheduler = scheduler
            return pipe
        return build

    backend = H.make_backend(case, tmp_path, add_adapter=False, pipeline=with_scheduler(flow))
    sigmas = backend.sigmas(6, 64, 64)
    fresh = UniPCMultistepScheduler.from_config(flow.config)
    fresh.set_timesteps(6)
    assert torch.allclose(sigmas, fresh.sigmas.float()) and float(sigmas[0]) > 0.9 and float(sigmas[-1]) == 0.0
    with pytest.raises(BackendError, match="not in flow mode"):
        H.make_backend(case, tmp_path, add_adapter=False, pipeline=with_scheduler(UniPCMultistepScheduler()))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "HiDreamImagePipeline", "scheduler": ["diffusers", "UniPCMultistepScheduler"]}))
    assert check_supported(folder) == "hidream"


# --- ComfyUI -----------------------------------------------------------------------------------------

COMFY_CASES = [c.id for c in CASES if c.comfy is not None]
COMFY_CHECKS = ["recognised", "base_velocity", "manual_merge", "wrong_map_fails", "stock_loader", "strength", "comfy_lora",
                "gradient", "trainer_node"]


def comfyui_version_at(root: str) -> tuple[int, ...] | None:
    """The version of the ComfyUI checkout at `root` (its comfyui_version.py), or None."""
    import re

    path = Path(root) / "comfyui_version.py"
    found = re.search(r'__version__\s*=\s*"([0-9.]+)"', path.read_text()) if path.exists() else None
    return tuple(int(x) for x in found.group(1).split(".")) if found else None


def skip_if_comfyui_predates(case) -> None:
    """Skip a case whose model the ComfyUI at COMFYUI_ROOT cannot load (`FamilyCase.comfy_since`)."""
    version = comfyui_version_at(COMFYUI_ROOT) if COMFYUI_ROOT else None
    if case.comfy_since and version is not None and version < tuple(int(x) for x in case.comfy_since.split(".")):
        pytest.skip(f"ComfyUI v{'.'.join(map(str, version))} predates {case.id} (ComfyUI v{case.comfy_since} and later "
                    "load it; the nodes refuse it here by name, tests/comfy_scripts/nodes_in_comfyui.py)")


@pytest.fixture(scope="module")
def comfy_results(tmp_path_factory):
    if not COMFYUI_ROOT:
        pytest.skip("set COMFYUI_ROOT (and COMFYUI_PYTHON) to run the families in ComfyUI")
    work = tmp_path_factory.mktemp("families_comfy")
    # FDFO_COMFY_CASES="wan21,lumina2" runs only those cases' ComfyUI half (the others then fail as not run).
    only = [c for c in os.environ.get("FDFO_COMFY_CASES", "").split(",") if c]
    version = comfyui_version_at(COMFYUI_ROOT)
    cases = [c for c in COMFY_CASES if (not only or c in only) and not (
        CASES_BY_ID[c].comfy_since and version is not None
        and version < tuple(int(x) for x in CASES_BY_ID[c].comfy_since.split(".")))]
    for case_id in cases:
        H.prepare_comfy_inputs(CASES_BY_ID[case_id], work / case_id)
    env = dict(os.environ)
    env.setdefault("FDFO_TEST_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", env["FDFO_TEST_THREADS"])
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    proc = subprocess.run([python, str(REPO / "tests" / "comfy_scripts" / "families_in_comfyui.py"), COMFYUI_ROOT,
                           str(work), *cases], cwd=str(work), env=env, capture_output=True, text=True, timeout=1800)
    return work, script_results(proc, lambda r: (r["case"], r["check"]))


@pytest.mark.comfyui
@pytest.mark.parametrize("check", COMFY_CHECKS)
@pytest.mark.parametrize("case_id", COMFY_CASES)
def test_family_in_comfyui(case_id, check, request):
    skip_if_comfyui_predates(CASES_BY_ID[case_id])
    _, found = request.getfixturevalue("comfy_results")
    r = found.get((case_id, check)) or found.get((case_id, "setup"))  # a failed setup reports its error
    assert r is not None, f"{case_id}/{check} did not run"
    print(json.dumps(r, indent=1)[:3000])
    assert r["ok"], json.dumps(r, indent=1)[:5000]


@pytest.mark.comfyui
@pytest.mark.parametrize("case_id", COMFY_CASES)
def test_lora_trained_in_comfyui_gives_the_same_velocity_in_diffusers(case_id, request):
    skip_if_comfyui_predates(CASES_BY_ID[case_id])
    work, found = request.getfixturevalue("comfy_results")
    assert found.get((case_id, "comfy_lora"), {}).get("ok"), "the ComfyUI backend wrote no LoRA"
    r = H.check_comfy_lora_in_diffusers(CASES_BY_ID[case_id], work / case_id)
    print(r)
    assert r["lora_effect"] > 1e-2 and r["diff"] < 1e-4, r


@pytest.mark.comfyui
def test_untested_family_fallback_trains_a_comfyui_flow_model(tmp_path):
    """A ComfyUI flow model with no family module (a tiny AuraFlow) trains through the generic
    fallback: a warning, attention linears only, a file that loads fully and samples as the hot MODEL."""
    if not COMFYUI_ROOT:
        pytest.skip("set COMFYUI_ROOT (and COMFYUI_PYTHON) to run the families in ComfyUI")
    env = dict(os.environ)
    env.setdefault("FDFO_TEST_THREADS", "1")
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    proc = subprocess.run([python, str(REPO / "tests" / "comfy_scripts" / "families_in_comfyui.py"), COMFYUI_ROOT,
                           str(tmp_path), "generic-auraflow"], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=600)
    results = script_results(proc)
    assert results[0]["ok"], json.dumps(results[0], indent=1)[:4000]


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


def test_flux2_key_converter_is_the_inverse_of_diffusers_own(tmp_path):
    """The ComfyUI half builds Flux.2 from diffusers weights renamed by `flux2_diffusers_to_comfy`
    (ComfyUI v0.8.0 has no converter of diffusers Flux.2 keys): diffusers' single-file converter
    (BFL / ComfyUI names -> diffusers) gives back every tensor under its own name."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    from family_cases import flux2_diffusers_to_comfy
    from diffusers import Flux2Transformer2DModel

    sd = Flux2Transformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                 joint_attention_dim=48, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                 guidance_embeds=True).state_dict()
    comfy = flux2_diffusers_to_comfy(sd)
    assert {"double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "guidance_in.in_layer.weight",
            "double_stream_modulation_img.lin.weight", "final_layer.adaLN_modulation.1.weight"} <= set(comfy)
    back = convert_flux2_transformer_checkpoint_to_diffusers(dict(comfy))
    assert sorted(back) == sorted(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


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
    ("ChromaInpaintPipeline", "FlowMatchEulerDiscreteScheduler", "needs an input image and a mask"),
    ("FluxPipeline", "EulerDiscreteScheduler", "not a flow-matching scheduler"),
    ("SomeFuturePipeline", "FlowMatchEulerDiscreteScheduler", "does not support"),
])
def test_unsupported_pipelines_are_refused_with_the_supported_families(cls_name, scheduler, reason, tmp_path):
    from fdfo_core.backends.interface import BackendError
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
