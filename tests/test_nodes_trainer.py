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


opts = submodule("nodes.training_options")


def base_values(**changes):
    """The Trainer's widget values; other settings (from the options node) given as `options`."""
    values = {o.name: o.default for o in opts.TRAINER_SETTINGS}
    options = {k: v for k, v in changes.items() if k not in values}
    values.update({k: v for k, v in changes.items() if k in values})
    if options:
        values["options"] = opts.FDFOTrainingOptionsNode().build(**options)[0]
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
    cfg = tn.config_from_inputs({"reward_normalization": "per_prompt"})
    assert cfg.reward_normalization == "none"
    assert tn.config_from_inputs({"reward_normalization": "std"}).reward_normalization == "std"


def test_options_node_values_reach_the_config_and_trainer_widgets_win():
    options = opts.FDFOTrainingOptionsNode().build(churn_strength=0.05, checkpoint_every=1, seed=7, precision="fp32")[0]
    cfg = opts.config_from_settings(opts.resolve_settings({"epochs": 3, "learning_rate": 1e-3}, options))
    assert (cfg.churn_strength, cfg.checkpoint_every, cfg.seed, cfg.precision, cfg.epochs, cfg.lr) == (0.05, 1, 7, "fp32", 3, 1e-3)
    # Values from a legacy (one-node) Trainer: the same config as trainer widgets + options node.
    flat = {"epochs": 3, "learning_rate": 1e-3, "churn_strength": 0.05, "checkpoint_every": 1, "seed": 7, "precision": "fp32"}
    assert tn.config_from_inputs(flat) == cfg


def test_old_prompt_without_newer_options_still_validates():
    # An options node saved before an option existed sends fewer inputs: the rest take defaults.
    built = opts.FDFOTrainingOptionsNode().build(seed=3)[0]
    assert built["seed"] == 3 and built["prompt_cache_mb"] == opts.setting("prompt_cache_mb").default


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
    cfg = tn.config_from_inputs(dict(epochs=3, pairs_per_epoch=4, steps=5))
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
    assert fake_progress[-1][2] == ("JPEG", "grid", 768)


def test_progress_text_counts_pairs_images_and_items(fake_progress):
    cfg = tn.config_from_inputs(dict(epochs=20, pairs_per_epoch=32, steps=20, sample_batch_size=16))
    p = tn.EpochProgress(cfg, start_epoch=2, node_id=None, preview_every=0, preview_count=1)
    assert p.describe("sample", 20, 40) == "sampling pairs, 16/32 done"
    assert p.describe("sample", 39, 40) == "sampling pairs, 16/32 done"
    assert p.describe("reward", 64, 64) == "scoring images, 64/64 done"
    assert p.describe("train", 10, 1280) == "training on (image, step) items, 10/1280 done"


def test_progress_text_keeps_the_epoch_line_above_the_current_phase(fake_progress, monkeypatch):
    cfg = tn.config_from_inputs(dict(epochs=40, pairs_per_epoch=32, steps=20, sample_batch_size=16))
    p = tn.EpochProgress(cfg, start_epoch=0, node_id=None, preview_every=1, preview_count=8)
    texts = []
    monkeypatch.setattr(p.bar, "text", lambda message, log_it=True: texts.append(message))
    p.epoch_done(12, text="epoch 12/40 · reward 0.6123 ± 0.0811 · about 3 min 10 s left")
    p.phase("sample", 20, 40)
    assert texts[-1] == ("epoch 12/40 · reward 0.6123 ± 0.0811 · about 3 min 10 s left\n"
                         "now: epoch 13/40, sampling pairs, 16/32 done")


live = submodule("nodes.live_feedback")


def test_epoch_line_says_epoch_reward_spread_and_time_left():
    m = {"epoch": 12, "reward_mean": 0.61234, "reward_std": 0.08111}
    assert live.epoch_line(m, 40, 190.4) == "epoch 12/40 · reward 0.6123 ± 0.0811 · about 3 min 10 s left"
    assert live.epoch_line(m, 40, None) == "epoch 12/40 · reward 0.6123 ± 0.0811"
    assert live.epoch_line({**m, "epoch": 40}, 40, 0.0).endswith("· done")
    assert live.format_duration(42) == "42 s" and live.format_duration(3 * 3600 + 125) == "3 h 02 min"


def test_time_left_comes_from_the_epochs_run_in_this_session(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    clock = live.EpochClock(start_epoch=10, total_epochs=40)
    assert clock.seconds_left(11) is None  # not started
    clock.start()
    now[0] = 130.0  # 2 epochs in 30 s (resumed at 10: earlier epochs do not count)
    assert clock.seconds_left(12) == 15.0 * 28


def test_live_views_are_the_preview_nodes_wired_to_an_output():
    prompt = {
        "7": {"class_type": "FDFOTrainerV2", "inputs": {}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["7", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["7", 3], "filename_prefix": "x"}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["5", 2]}},  # another node's output
        "12": {"class_type": "ImageScale", "inputs": {"image": ["7", 2]}},  # not a display node
    }
    assert live.linked_display_nodes(prompt, "7", 2) == ["9"]
    assert live.linked_display_nodes(prompt, 7, 3) == ["10"]
    assert live.linked_display_nodes(None, "7", 2) == [] and live.linked_display_nodes(prompt, None, 2) == []


def test_live_push_without_a_server_does_nothing():
    push = live.LivePush({"9": {"class_type": "PreviewImage", "inputs": {"images": ["7", 2]}}}, "7", 2, "curve")
    assert push.targets == ["9"]
    assert push(object()) is False  # no ComfyUI server in this process: nothing sent, no error


def test_node_preview_is_never_enlarged(fake_progress):
    from PIL import Image

    common = submodule("nodes.common")
    bar = common.NodeProgress(10)
    bar.update(1, preview=Image.new("RGB", (522, 284)))
    assert fake_progress[-1][2][2] == 522  # ComfyUI fits previews into max_size, enlarging smaller ones
    bar.update(2, preview=Image.new("RGB", (2000, 300)))
    assert fake_progress[-1][2][2] == common.PREVIEW_MAX_SIZE
