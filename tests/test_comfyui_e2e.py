"""End to end in a real ComfyUI server (needs COMFYUI_ROOT; COMFYUI_PYTHON = its interpreter).

ComfyUI starts headless on CPU on 127.0.0.1 (a free port) with this repository symlinked into the
custom_nodes/ of a temporary folder layout (tests/comfy_scripts/server.py), so the checkout is left
as it was (checked). Then, over HTTP as the frontend does it:
- /object_info lists every FDFO node with its inputs, outputs and tooltips; the example workflows
  are served as templates;
- the toy example workflow trains through POST /prompt and /history; its LoRA appears in
  models/loras with FDFO metadata, next to a run folder with checkpoints;
- the base-vs-LoRA example workflow loads it with the stock LoraLoaderModelOnly: the images differ
  from the base model's;
- POST /interrupt during training stops within a step and leaves a checkpoint and a LoRA that the
  stock loader uses;
- a non-flow model, a mismatched VAE, an empty prompt list, a failing reward, a resume with another
  seed and a runs folder that is a file give clear errors, never crash the server and never touch a
  finished checkpoint;
- the SD3.5 and Flux workflows validate except for the model files that are not installed here
  (and, for the style workflows, the user's reference folder);
- the toy style workflow trains with FDFO Reference Style Reward (a tiny CLIP standing in for
  CLIP ViT-L/14), and FDFO Preference Reward fits on a picks.jsonl in output/ and trains.

The toy trains in a short configuration (E2E_TOY: 3 epochs of 8 pairs of 8 steps, a checkpoint
every 2 epochs, the held-out evaluation once, at the end) rather than the template's 40 epochs of 32
pairs: every path the template's run takes (sampling, update, previews, checkpoints, held-out
evaluation, the saved LoRA) in a few minutes on a loaded 2-core machine. FDFO_E2E_EPOCHS sets the
number of epochs (e.g. the template's 40 for a full run).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from comfy_scripts.nodepack import REPO, import_nodepack
from comfy_scripts.server import ComfyServer, PromptRejected, error_message, output_files, was_interrupted
from comfy_scripts.toy_fixture import is_random_toy, toy_model_env

COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.slow,
    pytest.mark.skipif(not COMFYUI_ROOT, reason="set COMFYUI_ROOT (and COMFYUI_PYTHON) to run ComfyUI end to end"),
]
MODEL_FILE_INPUTS = {"ckpt_name", "clip_name", "clip_name1", "clip_name2", "clip_name3", "unet_name", "vae_name"}


def api(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


def node_of(prompt: dict, class_type: str) -> dict:
    found = [n for n in prompt.values() if n["class_type"] == class_type]
    assert len(found) == 1, f"{len(found)} {class_type} nodes"
    return found[0]


def node_id(prompt: dict, class_type: str, title: str | None = None) -> str:
    return next(k for k, n in prompt.items() if n["class_type"] == class_type and (title is None or n["_meta"]["title"] == title))


def checkout_listing(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        out.update(os.path.join(dirpath, f) for f in filenames)
    return out


def pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory):
    return toy_model_env(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(tmp_path_factory, toy_env):
    before = checkout_listing(Path(COMFYUI_ROOT))
    base = tmp_path_factory.mktemp("comfyui_base")
    srv = ComfyServer(COMFYUI_ROOT, os.environ.get("COMFYUI_PYTHON"), base, env=toy_env).start()
    yield srv
    srv.stop()
    added = checkout_listing(Path(COMFYUI_ROOT)) - before
    assert not added, f"the test left files in the ComfyUI checkout: {sorted(added)[:10]}"


TRAINER = "FDFOTrainerV2"
#: The toy run of these tests: short, but through every path of the template's run (a checkpoint on
#: the way and one at the end, previews every epoch, the held-out evaluation at the last epoch).
E2E_TOY = {"epochs": 3, "pairs_per_epoch": 8, "steps": 8, "checkpoint_every": 2, "eval_every": 3}


def set_training(prompt: dict, **changes) -> None:
    """Set Trainer settings where the workflow keeps them: on the Trainer node, or on the FDFO
    Training Options node wired to it."""
    trainer = node_of(prompt, TRAINER)["inputs"]
    options = prompt[trainer["options"][0]]["inputs"]
    for key, value in changes.items():
        target = trainer if key in trainer else options
        assert key in target, f"no Trainer setting {key!r}"
        target[key] = value


def toy_prompt(toy_env, **trainer_changes) -> dict:
    """The toy example workflow in the tests' short configuration (E2E_TOY, then `trainer_changes`),
    at a learning rate large enough to change the model visibly in a short run; with a randomly
    initialised toy (no weights in the checkout yet) the caption-alignment reward is flat, so
    brightness stands in for it."""
    prompt = api("fdfo_toy")
    if is_random_toy(toy_env):
        reward = node_of(prompt, "FDFOToyAlignmentReward")
        reward["class_type"], reward["inputs"] = "FDFOSimpleReward", {"metric": "brightness", "jpeg_quality": 95}
    node_of(prompt, TRAINER)["inputs"]["learning_rate"] = 1e-3
    node_of(prompt, "FDFOPairedSampler")["inputs"]["steps"] = E2E_TOY["steps"]
    set_training(prompt, **{**E2E_TOY, **trainer_changes})
    return prompt


# --- the server knows the nodes ------------------------------------------------------------------


def test_object_info_lists_every_node_with_its_inputs(server):
    pack = import_nodepack()
    info = server.get("/object_info")
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert key in info, f"{key} not loaded; server log:\n{server.log_tail()}"
        entry = info[key]
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            assert list(entry["input"].get(section, {})) == list(spec.get(section, {})), (key, section)
            for name, value in entry["input"].get(section, {}).items():
                assert value[1].get("tooltip"), (key, name)
        assert entry["output"] == list(cls.RETURN_TYPES)
        assert entry["output_tooltips"] == list(cls.OUTPUT_TOOLTIPS)
        assert entry["category"].startswith("FDFO")
        assert entry["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[key]
    # ComfyUI's own LORA_MODEL nodes (Save LoRA Weights is SaveLoRANode in v0.3.64, SaveLoRA in v0.8.0)
    assert "LORA_MODEL" in info[TRAINER]["output"] and info["FDFOTrainer"].get("deprecated") is True
    assert ("SaveLoRANode" in info or "SaveLoRA" in info) and "LoraModelLoader" in info


def test_example_workflows_are_served_as_templates(server):
    templates = server.get("/api/workflow_templates")
    names = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert sorted(templates.get("ComfyUI-FDFO", [])) == names
    served = server.get("/api/workflow_templates/ComfyUI-FDFO/fdfo_toy.json")
    assert served == json.loads((REPO / "example_workflows" / "fdfo_toy.json").read_text())


# --- train, load, compare ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_run(server, toy_env):
    changes = {"epochs": int(os.environ["FDFO_E2E_EPOCHS"])} if os.environ.get("FDFO_E2E_EPOCHS") else {}
    prompt = toy_prompt(toy_env, **changes)
    t0 = time.monotonic()
    entry = server.run(prompt, timeout=3600)
    seconds = time.monotonic() - t0
    print(f"\ntoy workflow: {seconds:.1f} s on CPU ({node_of(prompt, TRAINER)['inputs']['epochs']} epochs, "
          f"{'randomly initialised' if is_random_toy(toy_env) else 'pretrained'} toy weights)")
    return {"entry": entry, "seconds": seconds, "prompt": prompt}


def test_toy_workflow_trains_and_saves_the_lora(server, toy_run):
    entry = toy_run["entry"]
    assert entry["status"]["status_str"] == "success", error_message(entry) or server.log_tail()
    lora = server.base / "models" / "loras" / "fdfo_toy.safetensors"
    assert lora.exists()
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["fdfo.base_model_family"] == "sd3" and meta["fdfo.trainer"] == "fdfo"
    assert any(k.endswith(".alpha") for k in keys) and all(k.startswith("diffusion_model.") for k in keys)
    epochs = node_of(toy_run["prompt"], TRAINER)["inputs"]["epochs"]
    run = server.base / "output" / "fdfo" / "fdfo_toy"
    assert (run / "checkpoints" / f"checkpoint-{epochs:05d}.pt").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == epochs
    sampler_out = next(k for k, n in toy_run["prompt"].items()
                       if n["class_type"] == "SaveImage" and n["inputs"]["filename_prefix"] == "fdfo_toy/trained")
    trained = output_files(server.base, entry, sampler_out)
    assert len(trained) == 4 and all(p.exists() for p in trained)


def test_trained_lora_changes_the_images(server, toy_run):
    assert toy_run["entry"]["status"]["status_str"] == "success"
    prompt = api("fdfo_base_vs_lora")
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    base = output_files(server.base, entry, node_id(prompt, "SaveImage", "base images"))
    lora = output_files(server.base, entry, node_id(prompt, "SaveImage", "lora images"))
    assert len(base) == len(lora) == 4
    diffs = [float(np.abs(pixels(a) - pixels(b)).max()) for a, b in zip(base, lora)]
    print(f"\nbase vs LoRA: max pixel difference per image {diffs}")
    assert max(diffs) >= 2 / 255


def test_cancel_mid_training_leaves_a_usable_lora(server, toy_env, toy_run):
    prompt = toy_prompt(toy_env, lora_name="cancel_me", epochs=200, checkpoint_every=1, resume=False, preview_every=0)
    pid = server.queue(prompt)
    run = server.base / "output" / "fdfo" / "cancel_me"
    deadline = time.monotonic() + 600
    while not list((run / "checkpoints").glob("checkpoint-*.pt")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list((run / "checkpoints").glob("checkpoint-*.pt")), server.log_tail()
    time.sleep(1.0)  # well inside the next epoch
    t0 = time.monotonic()
    server.interrupt()
    entry = server.wait(pid, timeout=300)
    stop_seconds = time.monotonic() - t0
    print(f"\ncancel: stopped {stop_seconds:.2f} s after POST /interrupt")
    assert was_interrupted(entry), entry["status"]
    assert stop_seconds < 30
    interrupted = server.base / "models" / "loras" / "cancel_me-interrupted.safetensors"
    assert interrupted.exists() and list((run / "checkpoints").glob("checkpoint-*.pt"))
    # The stock loader uses it.
    compare = api("fdfo_base_vs_lora")
    node_of(compare, "LoraLoaderModelOnly")["inputs"]["lora_name"] = interrupted.name
    entry = server.run(compare)
    assert entry["status"]["status_str"] == "success", error_message(entry)


# --- bad input ---------------------------------------------------------------------------------------


def minimal_training(toy_env, **trainer_changes) -> dict:
    prompt = toy_prompt(toy_env, epochs=1, pairs_per_epoch=4, resume=False, preview_every=0, **trainer_changes)
    keep = {node_id(prompt, c) for c in ("FDFOToyModelLoader", "FDFOToyPrompts", TRAINER, "FDFOTrainingOptions")}
    keep.add(next(k for k, n in prompt.items() if n["class_type"] in ("FDFOToyAlignmentReward", "FDFOSimpleReward")))
    return {k: v for k, v in prompt.items() if k in keep}


def expect_error(server, prompt, *fragments):
    entry = server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry) or ""
    for fragment in fragments:
        assert fragment in message, message
    assert server.alive() and server.get("/system_stats")
    return message


def test_bad_inputs_give_clear_errors(server, toy_env, toy_run):
    finished = server.base / "output" / "fdfo" / "fdfo_toy" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in finished.glob("*.pt")}

    # SD1.5 / SDXL style (EPS) model.
    prompt = minimal_training(toy_env)
    trainer = node_of(prompt, TRAINER)
    prompt["90"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": trainer["inputs"]["model"], "sampling": "eps", "zsnr": False}}
    trainer["inputs"]["model"] = ["90", 0]
    print("\n" + expect_error(server, prompt, "not a flow model", "SD1.5", "SD3", "Flux"))

    # A 4-channel VAE (SD1.5-type TAESD) with the 16-channel toy model.
    write_taesd(server.base / "models" / "vae" / "taesd_4ch.safetensors", channels=4)
    prompt = minimal_training(toy_env)
    prompt["91"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd_4ch.safetensors"}}
    node_of(prompt, TRAINER)["inputs"]["vae"] = ["91", 0]
    print(expect_error(server, prompt, "mismatched VAE", "4-channel", "16-channel"))

    # An empty prompt list.
    prompt = minimal_training(toy_env)
    prompt["92"] = {"class_type": "FDFOPromptList", "inputs": {"text": "\n  \n# nothing\n", "file": "(none)"}}
    node_of(prompt, TRAINER)["inputs"]["prompts"] = ["92", 0]
    print(expect_error(server, prompt, "prompt list is empty"))

    # Resuming the finished toy run with another seed is refused, naming the seed.
    more = node_of(toy_run["prompt"], TRAINER)["inputs"]["epochs"] + 1
    print(expect_error(server, toy_prompt(toy_env, epochs=more, preview_every=0, seed=12345), "  - seed:",
                       "allow_run_changes"))

    # A runs folder that is a file: one clear message before any training.
    runs = server.base / "output" / "fdfo"
    moved = runs.with_name("fdfo.moved")
    runs.rename(moved)
    runs.write_text("in the way")
    try:
        print(expect_error(server, minimal_training(toy_env, lora_name="blocked"), "could not create the run folder",
                           "is a file, not a folder"))
    finally:
        runs.unlink()
        moved.rename(runs)

    # A reward that fails, while resuming the finished toy run (its reward change allowed): its
    # checkpoints stay untouched.
    prompt = toy_prompt(toy_env, epochs=more, preview_every=0, allow_run_changes=True)
    reward_id = next(k for k, n in prompt.items() if n["class_type"] in ("FDFOToyAlignmentReward", "FDFOSimpleReward"))
    from comfy_scripts.server import free_port

    prompt[reward_id] = {"class_type": "FDFORemoteReward", "inputs": {
        "url": f"http://127.0.0.1:{free_port()}/score", "timeout": 5.0, "retries": 0, "backoff": 0.0, "headers": "",
        "api_key_env": "", "image_format": "png", "jpeg_quality": 95, "micro_batch": 8}}
    print(expect_error(server, prompt, "remote"))
    after = {p.name: p.stat().st_mtime_ns for p in finished.glob("*.pt")}
    assert after == before, "a finished checkpoint was touched"

    # The server still trains afterwards.
    entry = server.run(minimal_training(toy_env, lora_name="after_errors"), timeout=600)
    assert entry["status"]["status_str"] == "success", error_message(entry)


def write_taesd(path: Path, channels: int) -> None:
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file

    from fdfo_core.toy.comfy_export import diffusers_taesd_to_comfyui

    with torch.no_grad():
        vae = AutoencoderTiny(latent_channels=channels)
    save_file({k: v.contiguous() for k, v in diffusers_taesd_to_comfyui(vae.state_dict()).items()}, str(path))


@pytest.mark.parametrize("name", ["fdfo_sd35_pickscore", "fdfo_sd35_vlm", "fdfo_flux_aesthetic",
                                  "fdfo_sd35_style_reference", "fdfo_flux_style_reference",
                                  "fdfo_qwen_image_style_reference"])
def test_big_model_workflows_validate_except_missing_model_files(server, name):
    with pytest.raises(PromptRejected) as e:
        server.queue(api(name))
    errors = e.value.reply.get("node_errors", {})
    assert errors, e.value.reply
    for node, err in errors.items():
        for item in err["errors"]:
            # The style workflows also name the user's own reference folder (ComfyUI/input/my_style).
            allowed = MODEL_FILE_INPUTS | ({"folder"} if "style" in name else set())
            assert item["type"] == "value_not_in_list" and item["extra_info"]["input_name"] in allowed, (node, item)


def test_prompts_saved_before_the_options_node_still_run(server, toy_env):
    """An API prompt saved with the old one-node Trainer (its node type is kept, deprecated) and an
    options node saved before one of its options existed both validate and train."""
    old = json.loads((REPO / "tests" / "data" / "legacy_workflows" / "fdfo_toy_before_options.api.json").read_text())
    trainer = node_of(old, "FDFOTrainer")["inputs"]
    trainer.update(epochs=1, pairs_per_epoch=4, preview_every=0, resume=False, lora_name="old_layout")
    keep = {node_id(old, c) for c in ("FDFOToyModelLoader", "FDFOToyPrompts", "FDFOTrainer", "FDFOToyAlignmentReward")}
    entry = server.run({k: v for k, v in old.items() if k in keep}, timeout=600)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert (server.base / "models" / "loras" / "old_layout.safetensors").exists()

    prompt = minimal_training(toy_env, lora_name="older_options")
    options = node_of(prompt, "FDFOTrainingOptions")["inputs"]
    del options["prompt_cache_mb"], options["interval_width"]
    entry = server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", error_message(entry)


# --- style and taste rewards -------------------------------------------------------------------------


def test_toy_style_workflow_trains_with_the_reference_reward(server, toy_env):
    """The toy style example as it is, with a tiny random CLIP standing in for CLIP ViT-L/14 in
    models/fdfo_rewards/clip-vit-large-patch14 (one short epoch)."""
    import reward_fixtures as rf

    rf.write_clip_folder(server.base / "models" / "fdfo_rewards" / "clip-vit-large-patch14", seed=0,
                         pad_token="<|endoftext|>")
    prompt = api("fdfo_toy_style_reference")
    set_training(prompt, epochs=1, pairs_per_epoch=4, steps=E2E_TOY["steps"], resume=False, preview_every=0)
    entry = server.run(prompt, timeout=1200)
    assert entry["status"]["status_str"] == "success", error_message(entry) or server.log_tail()
    from safetensors import safe_open

    with safe_open(str(server.base / "models" / "loras" / "fdfo_toy_style.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["fdfo.reward"].startswith("reference(clip:clip-vit-large-patch14, 8 images, mean"), meta["fdfo.reward"]
    refs = output_files(server.base, entry, node_id(prompt, "PreviewImage", "the references"))
    assert len(refs) == 8
    tinted = np.stack([pixels(p) for p in refs]).mean(axis=(0, 1, 2))
    assert tinted[2] < tinted[0]  # multiplied by the warm orange: less blue than red


def test_preference_reward_fitted_on_picks_trains(server, toy_env):
    """FDFO Preference Reward fits on a picking run's picks.jsonl in output/, saves the model into
    models/fdfo_rewards/preference/, and its reward trains the toy."""
    import reward_fixtures as rf
    from test_preference import write_picks

    clip = server.base / "models" / "fdfo_rewards" / "clip-vit-large-patch14"
    if not clip.exists():
        rf.write_clip_folder(clip, seed=0, pad_token="<|endoftext|>")
    write_picks(server.base / "output" / "fdfo" / "picked", n=40, seed=4, every_skip=0)
    prompt = minimal_training(toy_env, lora_name="taste")
    reward_id = next(k for k, n in prompt.items() if n["class_type"] in ("FDFOToyAlignmentReward", "FDFOSimpleReward"))
    prompt[reward_id] = {"class_type": "FDFOPreferenceReward", "inputs": {
        "picks": "fdfo/picked", "model_file": "(none)", "encoder": "clip", "encoder_path": "auto", "head": "linear",
        "hidden": 64, "use_prompt": False, "holdout": 0.2, "save_as": "taste", "scale": 1.0, "dtype": "auto",
        "micro_batch": 16, "device": "cpu"}}
    entry = server.run(prompt, timeout=1200)
    assert entry["status"]["status_str"] == "success", error_message(entry) or server.log_tail()
    assert (server.base / "models" / "fdfo_rewards" / "preference" / "taste.safetensors").is_file()
    from safetensors import safe_open

    with safe_open(str(server.base / "models" / "loras" / "taste.safetensors"), "pt") as f:
        assert f.metadata()["fdfo.reward"].startswith("preference(clip:clip-vit-large-patch14, linear, 40 picks")
