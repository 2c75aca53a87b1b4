"""FDFO Trainer node logic that needs no model: run folders, names, validation order, progress."""

import sys
import types

import pytest

from comfy_scripts.nodepack import submodule

tn = submodule("nodes.trainer_nodes")
TrainingError = submodule("fdfo_core.trainer").TrainingError
ConfigError = submodule("fdfo_core.config").ConfigError
PRESETS = submodule("fdfo_core.config").PRESETS


def ckpt(run):
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "checkpoint-00005.pt").write_bytes(b"x")


def test_new_runs_never_overwrite_a_lora(tmp_path):
    runs, loras = tmp_path / "runs", tmp_path / "loras"
    runs.mkdir()
    loras.mkdir()
    assert tn.plan_run(runs, loras, "art", resume=True) == (runs / "art", False)
    (runs / "art").mkdir()
    assert tn.plan_run(runs, loras, "art", resume=False) == (runs / "art-2", False)
    (loras / "art-2.safetensors").write_bytes(b"x")  # a LoRA whose run folder was deleted
    assert tn.plan_run(runs, loras, "art", resume=False) == (runs / "art-3", False)


def test_resume_picks_the_newest_run_with_a_checkpoint(tmp_path):
    runs, loras = tmp_path / "runs", tmp_path / "loras"
    for name in ("art", "art-2", "art-10", "artist"):
        (runs / name).mkdir(parents=True)
    ckpt(runs / "art-10")
    assert tn.plan_run(runs, loras, "art", resume=True) == (runs / "art-10", True)
    # Newest run without a checkpoint (cancelled before the first one): start a fresh run.
    (runs / "art-11").mkdir()
    assert tn.plan_run(runs, loras, "art", resume=True) == (runs / "art-3", False)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "sub\\name", ".hidden", "x y", "a..b"])
def test_lora_names_are_plain_file_names(bad):
    with pytest.raises(TrainingError, match="lora_name"):
        tn.check_lora_name(bad)


def test_lora_name_accepts_a_safetensors_suffix():
    assert tn.check_lora_name(" my_lora-v2.safetensors ") == "my_lora-v2"


def base_values(**changes):
    spec = tn.FDFOTrainerNode.INPUT_TYPES()
    values = {k: v[1]["default"] for s in ("required", "optional") for k, v in spec[s].items()
              if len(v) > 1 and "default" in v[1]}
    values.update(changes)
    return values


def test_inputs_are_validated_before_any_model_is_touched():
    # model / clip / vae are None: each error must come before they are used (and before ComfyUI
    # is imported: this runs without ComfyUI).
    node = tn.FDFOTrainerNode()
    with pytest.raises(TrainingError, match="prompt list is empty"):
        node.train(None, None, None, lambda i, p: None, ["  ", ""], **base_values())
    with pytest.raises(TrainingError, match="lora_name"):
        node.train(None, None, None, lambda i, p: None, ["a"], **base_values(lora_name="../evil"))
    with pytest.raises(ConfigError, match="multiples of 16"):
        node.train(None, None, None, lambda i, p: None, ["a"], **base_values(width=500))
    with pytest.raises(TrainingError, match="connect a reward"):
        node.train(None, None, None, None, ["a"], **base_values())


def test_per_prompt_normalisation_is_a_reward_wrapper_not_a_config_value():
    cfg = tn.config_from_inputs(base_values(reward_normalization="per_prompt"))
    assert cfg.reward_normalization == "none"
    assert tn.config_from_inputs(base_values(reward_normalization="std")).reward_normalization == "std"


@pytest.fixture
def fake_progress(monkeypatch):
    calls = []

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls.append((value, total, preview))

    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    comfy.utils = utils
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", utils)
    return calls


def test_progress_covers_the_run_monotonically(fake_progress):
    cfg = tn.config_from_inputs(base_values(epochs=3, pairs_per_epoch=4, steps=5))
    p = tn.EpochProgress(cfg, start_epoch=1, node_id="7", preview_every=1, preview_count=2)
    p.bar.min_interval = 0.0
    for epoch in (1, 2):
        for phase, total in (("sample", 10), ("reward", 8), ("train", 40)):
            for done in range(0, total + 1, max(1, total // 4)):
                p.phase(phase, done, total)
        p.epoch_done(epoch + 1, preview="grid")
    values = [v for v, _, _ in fake_progress]
    assert values == sorted(values)
    assert values[-1] == fake_progress[-1][1] == p.bar.total  # two remaining epochs fill the bar
    assert fake_progress[-1][2] == ("JPEG", "grid", 512)


def test_progress_text_counts_pairs_images_and_items(fake_progress):
    cfg = tn.config_from_inputs(base_values(epochs=20, pairs_per_epoch=32, steps=20, sample_batch_size=16))
    p = tn.EpochProgress(cfg, start_epoch=2, node_id=None, preview_every=0, preview_count=1)
    assert p.describe("sample", 20, 40) == "sampling pairs, 16/32 done"
    assert p.describe("sample", 39, 40) == "sampling pairs, 16/32 done"
    assert p.describe("reward", 64, 64) == "scoring images, 64/64 done"
    assert p.describe("train", 10, 1280) == "training on (image, step) items, 10/1280 done"
