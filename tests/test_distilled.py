"""Distilled checkpoints (issue 26 item 4): each family knows its few-step / guidance-distilled
checkpoints (`Family.distilled`); training one warns in both front ends (the CLI and the Trainer
node), names the base model to train instead, and adapts the steps / CFG the user left alone."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from fdfo_core.families import DistilledCheckpoint, all_families, get_family
from fdfo_core.families.base import DISTILLED_WHY

#: (family, a name / config that marks a distilled checkpoint, its base model's that must not)
RECOGNISED = [
    ("z_image", dict(name="Tongyi-MAI/Z-Image-Turbo"), dict(name="Tongyi-MAI/Z-Image")),
    ("z_image", dict(name="z_image_turbo_bf16.safetensors"), dict(name="z_image_bf16.safetensors")),
    ("sd3", dict(name="stabilityai/stable-diffusion-3.5-large-turbo"), dict(name="stabilityai/stable-diffusion-3.5-large")),
    ("flux", dict(name="black-forest-labs/FLUX.1-schnell"), dict(name="black-forest-labs/FLUX.1-dev")),
    ("flux", dict(transformer_config={"guidance_embeds": False}), dict(transformer_config={"guidance_embeds": True})),
    ("flux", dict(comfy_config="FluxSchnell"), dict(comfy_config="Flux")),
    ("hidream", dict(name="HiDream-ai/HiDream-I1-Fast"), dict(name="HiDream-ai/HiDream-I1-Full")),
    ("hidream", dict(name="hidream_i1_dev_bf16.safetensors"), dict(name="hidream_i1_full_fp8.safetensors")),
    ("krea2", dict(pipeline_config={"is_distilled": True}), dict(name="krea/Krea-2", pipeline_config={})),
    ("kandinsky5_image", dict(name="kandinskylab/Kandinsky-5.0-T2I-Lite-distilled16steps"),
     dict(name="kandinskylab/Kandinsky-5.0-T2I-Lite-sft")),
    ("flux2_klein", dict(pipeline_config={"_class_name": "Flux2KleinPipeline", "is_distilled": True}),
     dict(name="black-forest-labs/FLUX.2-klein-base-4B",
          pipeline_config={"_class_name": "Flux2KleinPipeline", "is_distilled": False})),
]


@pytest.mark.parametrize("family, distilled, base", RECOGNISED)
def test_distilled_checkpoints_are_recognised_and_their_bases_are_not(family, distilled, base):
    f = get_family(family)
    found = f.distilled_checkpoint(**distilled)
    assert found is not None and found in f.distilled
    assert f.distilled_checkpoint(**base) is None


@pytest.mark.parametrize("family", sorted({f.name for f in all_families() if f.distilled}))
def test_the_warning_names_the_reason_the_base_model_and_the_settings(family):
    f = get_family(family)
    for d in f.distilled:
        assert isinstance(d, DistilledCheckpoint) and d.base_model and d.settings
        assert d.settings.get("cfg_scale") == 1.0  # distilled models sample without CFG
        text = d.warning(f.title, {"num_steps": 99, "cfg_scale": 4.0})
        assert d.title in text and d.base_model in text and DISTILLED_WHY in text and f.title in text
        assert "cfg_scale 1.0" in text and "this run has" in text and "cfg_scale 4.0" in text
        assert d.warning(f.title, dict(d.settings)).endswith("this run does.")
        if "num_steps" in d.settings:  # (a checkpoint whose grid is its own keeps the run's steps)
            assert f"num_steps {d.settings['num_steps']}" in text and "num_steps 99" in text
            assert d.settings["num_steps"] <= (f.preset.get("num_steps") or 40)  # the preset is the base model's


def test_what_the_user_chose_is_kept_and_the_rest_follows_the_model():
    d = get_family("z_image").distilled[0]
    defaults = {"num_steps": 40, "cfg_scale": 1.0}
    assert d.adapted({"num_steps": 40, "cfg_scale": 1.0}, defaults) == {"num_steps": 9}
    assert d.adapted({"num_steps": 12, "cfg_scale": 1.0}, defaults) == {}  # chosen: kept (and named in the warning)


@pytest.mark.parametrize("family", ["sd3", "flux", "flux2_klein", "z_image", "hidream"])
def test_existing_families_declare_their_distilled_checkpoints(family):
    assert get_family(family).distilled


# --- the CLI -------------------------------------------------------------------------------------------


def test_cli_warns_and_samples_a_turbo_folder_as_distilled(tiny_sd3_dir, tmp_path, capsys):
    """`fdfo train --model <...large-turbo>`: the warning on stderr, 4 steps and no CFG where the
    user gave none."""
    from fdfo_core.cli.main import main
    from fdfo_core.cli.train import distilled_checkpoint

    turbo = tmp_path / "stable-diffusion-3.5-large-turbo"
    shutil.copytree(tiny_sd3_dir, turbo)
    assert distilled_checkpoint(turbo, get_family("sd3")) is get_family("sd3").distilled[0]
    assert distilled_checkpoint(tiny_sd3_dir, get_family("sd3")) is None
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    common = ["train", "--model", str(turbo), "--prompts", str(prompts), "--reward", "brightness", "--preset", "toy",
              "--epochs", "1", "--pairs-per-epoch", "2", "--sample-batch-size", "2", "--lora-rank", "2",
              "--eval-every", "0", "--no-progress", "--preview-count", "1", "--height", "16", "--width", "16"]
    assert main([*common, "--run-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "Stable Diffusion 3.5 Large Turbo" in err and "stabilityai/stable-diffusion-3.5-large)" in err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["num_steps"] == 4 and cfg["cfg_scale"] == 1.0


def test_cli_config_layers_the_distilled_settings_under_toml_and_flags(tmp_path):
    from fdfo_core.cli.train import new_run_config

    d = get_family("z_image").distilled[0]
    assert new_run_config("z-image", None, {}).num_steps == 50  # the base model's preset
    cfg = new_run_config("z-image", None, {}, d)
    assert (cfg.num_steps, cfg.cfg_scale, cfg.height) == (9, 1.0, 1024)
    assert new_run_config("z-image", None, {"num_steps": 6}, d).num_steps == 6  # a flag wins
    toml = tmp_path / "run.toml"
    toml.write_text("num_steps = 12\n")
    assert new_run_config("z-image", toml, {}, d).num_steps == 12  # and a TOML file


# --- the Trainer node ------------------------------------------------------------------------------------


@pytest.fixture
def comfy(monkeypatch, tmp_path, one_thread):
    from fake_comfy import install

    return install(monkeypatch, tmp_path / "comfy")


def test_trainer_node_warns_and_follows_the_distilled_steps(comfy, caplog):
    from comfy_scripts.nodepack import submodule

    family = get_family("z_image")
    comfy.distilled = (family, family.distilled[0])
    default_steps = next(o.default for o in submodule("nodes.training_options").TRAINER_SETTINGS if o.name == "steps")
    with caplog.at_level(logging.WARNING, logger="fdfo"):
        comfy.train(epochs=1, steps=default_steps)
    assert any("Z-Image-Turbo" in r.getMessage() and "Tongyi-MAI/Z-Image" in r.getMessage() for r in caplog.records)
    assert json.loads((comfy.run_dir() / "config.json").read_text())["num_steps"] == 9
    caplog.clear()
    comfy.distilled = (family, None)
    with caplog.at_level(logging.WARNING, logger="fdfo"):
        comfy.train(epochs=1, steps=5, lora_name="base")
    assert not any("distilled" in r.getMessage() for r in caplog.records)
    assert json.loads((comfy.run_dir("base") / "config.json").read_text())["num_steps"] == 5


def test_model_file_name_is_read_from_the_workflow_graph():
    """The Trainer node reads the checkpoint's file name from the queued workflow (its hidden PROMPT
    input): through a LoRA loader to Load Diffusion Model / Load Checkpoint."""
    import ast
    from pathlib import Path

    # nodes/comfy_models.py imports ComfyUI; its pure graph helper is compiled on its own here.
    source = (Path(__file__).resolve().parents[1] / "nodes" / "comfy_models.py").read_text()
    tree = ast.parse(source)
    wanted = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name == "model_file_name")
              or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "_MODEL_FILE_INPUTS" for t in n.targets))]
    namespace: dict = {"Mapping": dict, "Any": object}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "comfy_models.py", "exec"), namespace)
    model_file_name = namespace["model_file_name"]
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "x.safetensors"}},
        "7": {"class_type": "FDFOTrainer", "inputs": {"model": ["2", 0]}},
        "8": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_large_turbo.safetensors"}},
        "9": {"class_type": "FDFOTrainer", "inputs": {"model": ["8", 0]}},
        "10": {"class_type": "FDFOTrainer", "inputs": {"model": ["11", 0]}},
        "11": {"class_type": "Loop", "inputs": {"model": ["11", 0]}},
    }
    assert model_file_name(graph, "7") == "z_image_turbo_bf16.safetensors"
    assert model_file_name(graph, 9) == "sd3.5_large_turbo.safetensors"
    assert model_file_name(graph, "10") == "" and model_file_name(None, "7") == ""
    assert get_family("z_image").distilled_checkpoint(model_file_name(graph, "7")) is not None
    assert get_family("sd3").distilled_checkpoint(model_file_name(graph, "9")) is not None
