"""LoRA files that LoRA managers understand: SAI model-spec keys beside the fdfo.* keys, a
`<name>.preview.png` beside the file, and the file still loads in the stock loaders."""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from fdfo_core.config import load_config
from fdfo_core.backends.modelspec import (
    ARCHITECTURES,
    base_architecture,
    preview_path,
    prompts_summary,
    published_variant,
)
from fdfo_core.run.hooks import Callbacks
from fdfo_core.methods import FDFOTrainer
from tiny_pipelines import tiny_sd3_pipeline

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
# Every key of the SAI model spec 1.0.0 (github.com/Stability-AI/ModelSpec, README): general, then image models.
SPEC_KEYS = {"sai_model_spec", "architecture", "implementation", "title", "description", "author", "date",
             "hash_sha256", "implementation_version", "license", "usage_hint", "category", "thumbnail", "merged_from",
             "resolution", "trigger_phrase", "prediction_type", "timestep_range"}
MUST = {"sai_model_spec", "architecture", "implementation", "title"}


def _header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _data_hash(path: Path) -> str:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return "0x" + hashlib.sha256(raw[8 + n:]).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modelspec")
    from fdfo_core.backends.diffusers_backend import DiffusersBackend
    from fdfo_core.rewards import build_reward

    pipe = tiny_sd3_pipeline(tmp, seed=0)
    cfg = load_config("toy", overrides=dict(epochs=2, pairs_per_epoch=4, num_steps=3, sample_batch_size=4, lora_rank=4,
                                            lora_alpha=8.0, lr=1e-2, eval_every=1, eval_prompt_count=2, eval_seeds=2))
    torch.manual_seed(0)
    backend = DiffusersBackend(pipe, cfg, max_sequence_length=8)
    trainer = FDFOTrainer(backend, build_reward("brightness"), PROMPTS, cfg, run_dir=tmp / "run", lora_name="my_lora",
                          callbacks=Callbacks(log=lambda s: None))
    trainer.preview_image = Image.new("RGB", (64, 64), (200, 30, 30))  # what a front end sets after its preview
    trainer.train()
    return tmp, trainer, pipe


def test_lora_has_the_spec_keys_beside_the_fdfo_keys(trained):
    tmp, trainer, _ = trained
    path = tmp / "run" / "my_lora.safetensors"
    meta = _header(path)
    spec = {k[len("modelspec."):]: v for k, v in meta.items() if k.startswith("modelspec.")}
    assert MUST <= set(spec) and set(spec) <= SPEC_KEYS, set(spec) - SPEC_KEYS
    assert spec["sai_model_spec"] == "1.0.0"
    assert spec["architecture"] == "stable-diffusion-3/lora"  # a tiny SD3: no published variant matches its size
    assert spec["title"] == "my_lora"
    assert spec["resolution"] == f"{trainer.config.width}x{trainer.config.height}"
    assert datetime.datetime.fromisoformat(spec["date"]).tzinfo is not None
    assert spec["hash_sha256"] == _data_hash(path)  # the tensors' bytes, header excluded
    assert "brightness" in spec["description"] and "4 prompt(s)" in spec["description"]
    assert spec["thumbnail"].startswith("data:image/jpeg;base64,")
    thumb = Image.open(io.BytesIO(base64.b64decode(spec["thumbnail"].split(",", 1)[1])))
    assert max(thumb.size) <= 256
    # The fdfo keys are still there, JSON-encoded, with the prompts' summary.
    assert meta["fdfo.base_model_family"] == "sd3"  # strings are stored as they are
    assert meta["fdfo.prompts_summary"].startswith("4 prompt(s)")
    assert "fdfo.config" in meta and "fdfo.reward" in meta


def test_preview_images_beside_the_last_and_best_loras(trained):
    tmp, trainer, _ = trained
    last = preview_path(tmp / "run" / "my_lora.safetensors")
    assert last.name == "my_lora.preview.png"
    assert Image.open(last).getpixel((0, 0)) == (200, 30, 30)  # the front end's latest preview
    best = tmp / "run" / "my_lora-best.safetensors"
    assert best.exists()
    best_preview = preview_path(best)
    assert best_preview.exists()
    # The best LoRA's preview is its epoch's first held-out image, not the last epoch's preview.
    assert Image.open(best_preview).size == (trainer.config.width, trainer.config.height)
    assert "Chosen: the best held-out" in _header(best)["modelspec.description"]
    assert not list((tmp / "run").glob("*.tmp*"))  # written atomically, nothing left over


def test_file_still_loads_in_diffusers_and_peft(trained, tmp_path):
    tmp, trainer, _ = trained
    from fdfo_core.backends.diffusers_backend import load_lora_into_pipeline, lora_to_diffusers_state_dict
    from safetensors.torch import save_file

    path = tmp / "run" / "my_lora.safetensors"
    load_lora_into_pipeline(tiny_sd3_pipeline(tmp_path / "a", seed=0), path)
    sd = lora_to_diffusers_state_dict(tiny_sd3_pipeline(tmp_path / "b", seed=0), path)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "peft.safetensors"))
    fresh = tiny_sd3_pipeline(tmp_path / "c", seed=0)
    fresh.load_lora_weights(str(tmp_path / "peft.safetensors"))  # diffusers + peft's own loader
    assert any("lora" in n for n, _ in fresh.transformer.named_parameters())


def test_architecture_ids_and_variants():
    from fdfo_core.families import get_family

    sd3, flux = get_family("sd3"), get_family("flux")
    assert published_variant(sd3, int(2.5e9)) == "sd35-medium"
    assert published_variant(sd3, int(8.0e9)) == "sd35-large"
    assert published_variant(sd3, int(3.8e6)) is None
    assert published_variant(flux, int(11.9e9), guidance=False) == "flux-schnell"
    assert published_variant(flux, int(11.9e9), guidance=True) == "flux-dev"
    assert base_architecture("sd3", "sd35-medium") == "stable-diffusion-3.5-medium"
    assert base_architecture("flux", "flux-dev") == "flux-1-dev"
    # Every registered family has an id, and ids never contain what the spec uses as a separator.
    from fdfo_core.families import all_families

    for fam in all_families():
        ids = list(ARCHITECTURES.get(fam.name, {}).values()) + [base_architecture(fam.name)]
        for arch in ids:
            assert "/" not in arch and "_" not in arch and arch == arch.lower() and " " not in arch, (fam.name, arch)
    assert prompts_summary(["a", "b", "a", "c", "d"], shown=2) == '4 prompt(s): "a"; "b" and 2 more'


@pytest.mark.skipif(not (os.environ.get("COMFYUI_ROOT") and os.environ.get("COMFYUI_PYTHON")),
                    reason="needs COMFYUI_ROOT and COMFYUI_PYTHON (a ComfyUI checkout and its python)")
def test_comfyui_lora_loader_reads_the_file(trained, tmp_path):
    """ComfyUI's own LoRA loading (comfy.utils.load_torch_file + comfy.lora.load_lora with the key map
    of an SD3 model) maps every tensor of the file: the metadata changes nothing for it."""
    tmp, _, _ = trained
    script = tmp_path / "load.py"
    script.write_text(
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import comfy.cli_args\n"
        "comfy.cli_args.args.cpu = True\n"
        "import comfy.utils, comfy.lora\n"
        "sd, meta = comfy.utils.load_torch_file(sys.argv[2], return_metadata=True)\n"
        "assert meta.get('modelspec.architecture') == 'stable-diffusion-3/lora', meta.get('modelspec.architecture')\n"
        "mods = {k.rsplit('.lora_', 1)[0].rsplit('.alpha', 1)[0] for k in sd}\n"
        "key_map = {m: m for m in mods}\n"
        "patches = comfy.lora.load_lora(sd, key_map, log_missing=True)\n"
        "assert len(patches) == len(mods), (len(patches), len(mods))\n"
        "print('ok', len(patches))\n")
    out = subprocess.run([os.environ["COMFYUI_PYTHON"], str(script), os.environ["COMFYUI_ROOT"],
                          str(tmp / "run" / "my_lora.safetensors")], capture_output=True, text=True, timeout=300,
                         cwd=os.environ["COMFYUI_ROOT"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
