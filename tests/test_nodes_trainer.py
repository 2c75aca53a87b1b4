"""FDFO Trainer node logic that needs no model: run folders, names, validation order, progress."""

import sys
import types

import pytest

from comfy_scripts.nodepack import submodule

tn = submodule("nodes.trainer_nodes")
tv = submodule("nodes.trainer_views")
TrainingError = submodule("fdfo_core.run.hooks").TrainingError
ConfigError = submodule("fdfo_core.errors").ConfigError
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


def test_groups_of_branches_are_an_option_and_refused_with_picks_before_any_model():
    """branches (issue 30) reaches the config from the options node; with a pairwise reward (human picks)
    K > 2 is refused with what to do, before model / clip / vae are touched."""
    options = opts.FDFOTrainingOptionsNode().build(branches=4)[0]
    assert opts.config_from_settings(opts.resolve_settings({}, options)).branches == 4

    class Picks:
        pairwise = True

        def __call__(self, images, prompts):
            raise AssertionError("not reached")

        def score_pairs(self, *args):
            raise AssertionError("not reached")

        def describe(self):
            return "human_picks"

    node = tn.FDFOTrainerNode()
    with pytest.raises(TrainingError, match="cannot score groups of 4 branches: set branches to 2"):
        node.train(None, None, None, Picks(), ["a"], **base_values(branches=4))


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
    p = tv.EpochProgress(cfg, start_epoch=1, node_id="7", preview_every=1, preview_count=2)
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
    p = tv.EpochProgress(cfg, start_epoch=2, node_id=None, preview_every=0, preview_count=1)
    assert p.describe("sample", 20, 40) == "sampling pairs, 16/32 done"
    assert p.describe("sample", 39, 40) == "sampling pairs, 16/32 done"
    assert p.describe("reward", 64, 64) == "scoring images, 64/64 done"
    assert p.describe("train", 10, 1280) == "training on (image, step) items, 10/1280 done"


def test_progress_text_keeps_the_epoch_line_above_the_current_phase(fake_progress, monkeypatch):
    cfg = tn.config_from_inputs(dict(epochs=40, pairs_per_epoch=32, steps=20, sample_batch_size=16))
    p = tv.EpochProgress(cfg, start_epoch=0, node_id=None, preview_every=1, preview_count=8)
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


# --- the node's run logic, in-process with a fake ComfyUI (tests/fake_comfy.py) ----------------

import json  # noqa: E402

import torch  # noqa: E402
from fake_comfy import install as install_fake_comfy  # noqa: E402
from storage_faults import EACCES, ENOSPC, EROFS, leftovers  # noqa: E402

StorageError = submodule("fdfo_core.files.storage").StorageError
RunChangeRefused = submodule("fdfo_core.run.hooks").RunChangeRefused


@pytest.fixture
def comfy(monkeypatch, tmp_path, one_thread):
    return install_fake_comfy(monkeypatch, tmp_path / "comfy")


def lora_file(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_node_resume_continues_the_same_run(comfy):
    comfy.train(epochs=2, lora_name="straight")
    comfy.train(epochs=1)
    comfy.train(epochs=2)  # resume on (default): the same run, one more epoch
    a, b = lora_file(comfy.loras / "straight.safetensors"), lora_file(comfy.loras / "art.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((comfy.run_dir() / "run.json").read_text())
    assert len(record["sessions"]) == 2 and record["sessions"][1]["start_epoch"] == 1
    assert record["definition"]["reward"] == "brightness"
    assert all(be.open_sessions == 0 for be in comfy.backends)


NODE_CHANGES = {
    "training prompts": dict(prompts=("a red circle", "a yellow star")),
    "reward": dict(reward="saturation"),
    "reward options": dict(reward=("jpeg_compressibility", 50)),
    "reward normalisation": dict(reward_normalization="per_prompt"),
    "reward_normalization": dict(reward_normalization="std"),
    "seed": dict(seed=7),
    "model": dict(model_seed=1),
    "extra.scheduler": dict(scheduler="karras"),
}


@pytest.mark.parametrize("name", sorted(NODE_CHANGES))
def test_node_refuses_each_change_of_a_resumed_run_by_name(comfy, name):
    change = dict(NODE_CHANGES[name])
    base_reward = comfy.reward("jpeg_compressibility", 95) if name == "reward options" else comfy.reward()
    comfy.train(epochs=1, reward=base_reward)
    if "reward" in change:
        r = change.pop("reward")
        change["reward"] = comfy.reward(*r) if isinstance(r, tuple) else comfy.reward(r)
    with pytest.raises(RunChangeRefused) as e:
        comfy.train(epochs=2, **change)
    msg = str(e.value)
    assert f"  - {name}" in msg and len(e.value.diffs) == 1, msg
    assert "turn 'resume' off to start a new run (art-2, ...)" in msg and "allow_run_changes" in msg
    assert all(be.open_sessions == 0 for be in comfy.backends)  # the model was released
    # Opting in continues the run and records the change as a branch.
    comfy.train(epochs=2, allow_run_changes=True, **change)
    (branch,) = json.loads((comfy.run_dir() / "run.json").read_text())["branches"]
    assert branch["epoch"] == 1 and [c["field"] for c in branch["changes"]] == [e.value.diffs[0].field]


def test_node_restores_the_preview_prompts_when_not_connected(comfy):
    comfy.train(epochs=1, preview_prompts=["a green triangle"], preview_count=1)
    comfy.train(epochs=2, preview_count=3)  # preview_prompts not connected: the run's own
    record = json.loads((comfy.run_dir() / "run.json").read_text())
    assert record["definition"]["preview_prompts"] == ["a green triangle"]
    with pytest.raises(RunChangeRefused, match="preview prompts"):
        comfy.train(epochs=3, preview_prompts=["something else"], preview_count=1)


def test_node_guardrails_best_output_and_restored_held_out_prompts(comfy):
    judge = comfy.reward("saturation")
    res = comfy.train(epochs=2, judge=judge, eval_prompts=["a green triangle"], eval_every=1, eval_seeds=2,
                      lora_output="best")
    name = res["result"][4]
    text = res["ui"]["text"][0]
    run = comfy.run_dir()
    best = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["best_epoch"]
    assert name == "art-best.safetensors" and (comfy.loras / name).exists() and (comfy.loras / "art.safetensors").exists()
    assert f"Output: the best LoRA art-best.safetensors (epoch {best})." in text and "best LoRA: art-best" in text
    assert res["result"][0]["lora"].keys() == lora_file(comfy.loras / name).keys()
    assert json.loads((run / "run.json").read_text())["definition"]["eval_prompts"] == ["a green triangle"]
    # Resumed with eval_prompts not connected: the run's own held-out prompts; others are refused.
    comfy.train(epochs=3, judge=judge, eval_every=1, eval_seeds=2)
    assert [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    with pytest.raises(RunChangeRefused, match="held-out prompts"):
        comfy.train(epochs=4, judge=judge, eval_prompts=["a blue square"], eval_every=1, eval_seeds=2)
    with pytest.raises(RunChangeRefused, match="judge"):
        comfy.train(epochs=4, judge=comfy.reward("colourfulness"), eval_every=1, eval_seeds=2)


def test_node_best_output_without_evaluation_says_why(comfy):
    res = comfy.train(epochs=1, eval_every=0, lora_output="best")
    assert res["result"][4] == "art.safetensors"
    assert "no best LoRA to give: held-out evaluation is off (eval_every 0)." in res["ui"]["text"][0]


NODE_WRITERS = {
    # what the message names -> (operations, path pattern, errno, let through first)
    "run folder": (("mkdir", "probe"), "*/output/fdfo/art", EROFS, 0),
    "ComfyUI LoRA folder": ("probe", "*/models/loras", EACCES, 0),
    "checkpoint": ("write", "*/checkpoint-00002.pt", ENOSPC, 0),
    "metrics log": ("append", "*/metrics.jsonl", ENOSPC, 1),
    "reward curve": ("sync", "*/reward_curve.png", ENOSPC, 1),
    "preview grid": ("create", "*/samples/epoch-00002.png", EROFS, 0),
    "LoRA file in ComfyUI's LoRA folder": ("create", "*/models/loras/art-interrupted.safetensors", EROFS, 0),
    "LoRA file": ("create", "*/models/loras/art.safetensors", ENOSPC, 0),
    "best LoRA file": ("create", "*/output/fdfo/art/art-best.safetensors", ENOSPC, 0),
}


@pytest.mark.parametrize("what", sorted(NODE_WRITERS))
def test_node_storage_faults_reach_the_node_error_and_lose_nothing(comfy, disk_faults, rescue_dirs, what):
    ops, pattern, code, after = NODE_WRITERS[what]
    disk_faults.fail(ops, pattern, code, after)
    if what == "LoRA file in ComfyUI's LoRA folder":  # a run stopped by a full disk, whose LoRA copy fails too
        disk_faults.fail("write", "*/checkpoint-00002.pt", ENOSPC)
    with pytest.raises(StorageError) as e:
        comfy.train(epochs=3)
    msg = str(e.value)
    assert "Traceback" not in msg and all(be.open_sessions == 0 for be in comfy.backends)
    run = comfy.run_dir()
    if what in ("run folder", "ComfyUI LoRA folder"):  # refused before any model work
        assert msg.startswith(f"could not create the {what}") or msg.startswith(f"could not write the {what}")
        assert not (run / "checkpoints").exists()
    else:
        assert str(run / "checkpoints" / "checkpoint-0000") in msg
        assert "queue the FDFO Trainer again with resume on and lora_name 'art'" in msg
    if what == "LoRA file":  # training finished; only the copy into the LoRA folder failed
        assert f"the LoRA is complete in {run / 'art.safetensors'}" in msg and "nothing is trained again" in msg
    if what in ("checkpoint", "metrics log", "reward curve", "preview grid"):
        assert f"The LoRA trained so far (epoch 2) is in {run / 'art-interrupted.safetensors'}" in msg
        assert f"A copy for the LoRA loaders is {comfy.loras / 'art-interrupted.safetensors'}" in msg
    if what == "LoRA file in ComfyUI's LoRA folder":
        assert "could not be copied into ComfyUI's LoRA folder either (the file system is read-only)" in msg
    if what == "best LoRA file":  # the guardrails' write, at the held-out evaluation of the last epoch
        assert f"best LoRA file {run / 'art-best.safetensors'}" in msg, msg
    assert leftovers(comfy.output) == [] and leftovers(comfy.loras) == []
    # ComfyUI keeps running: fixed, the same queue resumes and finishes the run.
    disk_faults.clear()
    res = comfy.train(epochs=3)
    assert res["result"][4] == "art.safetensors" and (comfy.loras / "art.safetensors").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


def test_node_ui_text_is_the_final_line_and_the_summary(comfy):
    """The Trainer's `ui.text` (kept on the node by web/fdfo_trainer.js after the run, where newer
    front ends drop the progress text): the last epoch line, done, then where the LoRA and run are."""
    res = comfy.train(epochs=1, eval_every=0)
    text = res["ui"]["text"]
    assert len(text) == 1
    first, rest = text[0].split("\n", 1)
    assert first.startswith("epoch 1/1 · reward ") and first.endswith(" · done"), first
    assert "LoRA art.safetensors (1/1 epochs)" in rest and "Output: the last LoRA art.safetensors." in rest


# --- nothing an artist trained is overwritten in ComfyUI's LoRA folder (issue 27, item 3) ------


def test_a_new_run_skips_a_name_whose_best_or_interrupted_lora_is_in_the_lora_folder(tmp_path):
    runs, loras = tmp_path / "runs", tmp_path / "loras"
    runs.mkdir()
    loras.mkdir()
    (loras / "art-best.safetensors").write_bytes(b"x")  # its run folder deleted, its best LoRA kept
    (loras / "art-2-interrupted.safetensors").write_bytes(b"x")
    (loras / "art-3-best-until-epoch4.safetensors").write_bytes(b"x")
    assert tn.plan_run(runs, loras, "art", resume=False) == (runs / "art-4", False)


def test_two_runs_of_one_lora_name_sharing_a_lora_folder_never_overwrite_each_other(comfy, monkeypatch):
    """Two ComfyUI installs share models/loras (extra_model_paths.yaml) and both train lora_name "art":
    the second was planned before the first wrote its LoRAs (art, art-best), and finishes after it."""
    from safetensors import safe_open

    first = comfy.train(epochs=1, lora_name="art")
    first_id = json.loads((comfy.run_dir() / "run.json").read_text())["run_id"]
    written = {p.name: p.read_bytes() for p in comfy.loras.iterdir()}
    assert {"art.safetensors", "art-best.safetensors"} <= set(written) and first["result"][4] == "art.safetensors"
    for name in written:
        (comfy.loras / name).unlink()
    plan = tn.plan_run

    def planned_then_the_other_finished(runs_root, loras_dir, name, resume):
        found = plan(runs_root, loras_dir, name, resume)
        for name, data in written.items():
            (loras_dir / name).write_bytes(data)
        return found

    monkeypatch.setattr(tn, "plan_run", planned_then_the_other_finished)
    comfy.output = comfy.output.parent / "output_of_the_other_install"
    res = comfy.train(epochs=1, lora_name="art", seed=3)  # a different run of the same name
    second_id = json.loads((comfy.run_dir() / "run.json").read_text())["run_id"]
    assert all((comfy.loras / name).read_bytes() == data for name, data in written.items())  # all kept
    name = res["result"][4]
    assert name == f"art-{second_id[:8]}.safetensors" and (comfy.loras / f"art-best-{second_id[:8]}.safetensors").exists()
    assert f"art.safetensors is the LoRA of run {first_id}, not this run's: it is kept unchanged" in res["ui"]["text"][0]
    with safe_open(str(comfy.loras / name), framework="pt") as f:
        assert f.metadata()["fdfo.run_id"] == second_id != first_id


def test_a_run_never_overwrites_a_file_of_its_name_written_by_another_run_or_tool(comfy, monkeypatch):
    """The run "art" planned its name; meanwhile another tool's art.safetensors appeared in the LoRA
    folder: it is kept unchanged, the run's LoRA gets its own name, and the node says so."""
    plan = tn.plan_run
    foreign = b"not written by FDFO"

    def then_a_file_appeared(runs_root, loras_dir, name, resume):
        found = plan(runs_root, loras_dir, name, resume)
        (loras_dir / "art.safetensors").write_bytes(foreign)
        return found

    monkeypatch.setattr(tn, "plan_run", then_a_file_appeared)
    res = comfy.train(epochs=1, lora_name="art")
    run_id = json.loads((comfy.run_dir() / "run.json").read_text())["run_id"]
    assert (comfy.loras / "art.safetensors").read_bytes() == foreign
    assert res["result"][4] == f"art-{run_id[:8]}.safetensors" and (comfy.loras / res["result"][4]).exists()
    text = res["ui"]["text"][0]
    assert "art.safetensors is a file that is not a LoRA, not this run's: it is kept unchanged" in text
    assert f"this run's LoRA is art-{run_id[:8]}.safetensors" in text
    # Resumed, the same run replaces its own file under its own name; the other file stays.
    monkeypatch.setattr(tn, "plan_run", plan)
    res = comfy.train(epochs=2, lora_name="art")
    assert res["result"][4] == f"art-{run_id[:8]}.safetensors"
    assert (comfy.loras / "art.safetensors").read_bytes() == foreign
    assert {p.name for p in comfy.loras.glob("art*.safetensors")} == {
        f"art-{run_id[:8]}.safetensors", "art-best.safetensors", "art.safetensors"}
