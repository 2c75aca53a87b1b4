"""The trainer layer both front ends share: what a run records, what a resume restores and
refuses, and what every writer does when the disk is full or read-only (issues 17 and 18)."""

import json

import pytest
import torch

from fdfo_core.files import storage
from fdfo_core.rewards import build_reward
from fdfo_core.run.definition import RunDefinition, RunRecords, differences, format_spec, restore
from fdfo_core.rewards import parse_reward_spec
from fdfo_core.files.storage import StorageError
from fdfo_core.run.trainer import Callbacks, FrontEnd, RunChangeRefused, TrainingError
from fdfo_core.methods import FDFOTrainer

from image_flow import ImageFlowBackend, tiny_config
from storage_faults import EACCES, ENOSPC, EROFS, leftovers

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]
pytestmark = pytest.mark.usefixtures("one_thread")


def trainer(run_dir, prompts=PROMPTS, reward="brightness", model_seed=0, normalize=None, options=None, front_end=None,
            callbacks=None, preview_prompts=PROMPTS[:2], **cfg):
    config = tiny_config(**cfg)
    backend = ImageFlowBackend({"seed": model_seed}, config=config)
    r = build_reward(reward, options, normalize=normalize)
    return FDFOTrainer(backend, r, prompts, config, run_dir=run_dir, callbacks=callbacks or Callbacks(log=None),
                       definition={"preview_prompts": preview_prompts}, front_end=front_end)


def lora_of(tr):
    return {k: v.clone() for k, v in tr.backend.lora_file_tensors().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- what a run records ------------------------------------------------------------------------


def test_a_run_records_its_definition(tmp_path):
    tr = trainer(tmp_path / "run", reward="0.5*brightness + saturation", normalize="per_prompt", seed=5)
    tr.train()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    d = record["definition"]
    assert d["reward"] == "0.5*brightness + saturation"
    assert d["reward_options"] == {"brightness": {}, "saturation": {}}
    assert d["reward_normalization"] == {"mode": "per_prompt", "min_group": 3, "window": 64, "eps": 1e-6}
    assert d["prompts"]["count"] == 3 and d["preview_prompts"] == PROMPTS[:2]
    assert d["config"]["seed"] == 5 and d["config"]["lr"] == 5e-2 and d["model"]["weights"] == "seed0"
    assert json.loads((tmp_path / "run" / "prompts.json").read_text()) == PROMPTS
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 5
    assert len(record["sessions"]) == 1 and record["branches"] == []
    # The checkpoint carries the same definition: a checkpoint file alone says what it trained on.
    from fdfo_core.run.definition import read_definition

    ckpt = read_definition(tmp_path / "run")
    assert ckpt.prompts == PROMPTS and ckpt.to_dict() == RunRecords(tmp_path / "run").definition().to_dict()


def test_reward_specs_round_trip_through_their_canonical_form():
    for spec in ("brightness", "0.5*brightness+saturation", "saturation - 0.25*brightness", "-brightness"):
        terms = parse_reward_spec(spec)
        assert parse_reward_spec(format_spec(terms)) == terms


def test_restore_fills_in_what_is_omitted_and_compare_names_what_changed():
    run = RunDefinition(model={"weights": "a"}, prompts=["x", "y"], reward="brightness", reward_options={},
                        reward_normalization={"mode": "none"}, preview_prompts=["x"],
                        config={"seed": 1, "lr": 0.1, "epochs": 3, "extra": {"scheduler": "simple"}})
    now = restore(run, {"config": {"epochs": 9}})
    assert now.prompts == ["x", "y"] and now.config == {**run.config, "epochs": 9}
    assert differences(run, now) == []  # epochs may change
    changed = restore(run, {"config": {"seed": 2, "extra": {"scheduler": "karras"}}, "prompts": ["x"]})
    names = [d.name for d in differences(run, changed)]
    assert names == ["training prompts", "extra.scheduler", "seed"]
    # A field an older record lacks is never compared.
    older = RunDefinition.from_dict({k: v for k, v in run.to_dict().items() if k != "preview_prompts"})
    assert differences(older, run.replace(preview_prompts=["other"])) == []


# --- resume: the same run, bit for bit; every change refused by name ---------------------------


def test_stopped_and_resumed_is_bit_for_bit_the_uninterrupted_run(tmp_path):
    full = trainer(tmp_path / "full", normalize="per_prompt", epochs=4)
    full.train()
    first = trainer(tmp_path / "split", normalize="per_prompt", epochs=2)
    first.train()
    second = trainer(tmp_path / "split", normalize="per_prompt", epochs=4)
    second.resume(tmp_path / "split")
    second.train()
    assert same(lora_of(full), lora_of(second))
    metrics = [json.loads(l) for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert [m["reward_mean"] for m in metrics] == [m["reward_mean"] for m in full.history]
    assert len(json.loads((tmp_path / "split" / "run.json").read_text())["sessions"]) == 2


CHANGES = {
    "training prompts": dict(prompts=["a red circle", "a yellow star"]),
    "reward": dict(reward="saturation"),
    "reward options": dict(reward="jpeg_compressibility", options={"jpeg_compressibility": {"quality": 50}}),
    "reward normalisation": dict(normalize="per_prompt"),
    "seed": dict(seed=7),
    "model": dict(model_seed=1),
    "clip_range": dict(clip_range=0.1),
    "preview prompts": dict(preview_prompts=["a yellow star"]),
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    trainer(run, epochs=2).train()
    jpeg = tmp_path_factory.mktemp("finished_jpeg") / "run"
    trainer(jpeg, reward="jpeg_compressibility", epochs=2).train()
    return run, jpeg


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_each_kind_of_change_is_refused_by_name(finished_run, name, tmp_path):
    run, jpeg = finished_run
    change = dict(CHANGES[name])
    source = jpeg if name == "reward options" else run
    if name == "reward options":
        change.setdefault("reward", "jpeg_compressibility")
    tr = trainer(tmp_path / "r", epochs=4, front_end=FrontEnd(allow_change_hint="ALLOW", new_run_hint="NEW"), **change)
    with pytest.raises(RunChangeRefused) as e:
        tr.resume(source)
    msg = str(e.value)
    assert f"  - {name}" in msg and "ALLOW" in msg and "NEW" in msg
    assert len(e.value.diffs) == 1, msg  # nothing else is reported as changed
    assert tr.epoch == 0 and not tr.has_trained()  # nothing was loaded


def test_epochs_and_memory_settings_may_change(finished_run, tmp_path):
    run, _ = finished_run
    tr = trainer(tmp_path / "r", epochs=3, checkpoint_every=3, train_batch_size=5, sample_batch_size=1)
    tr.resume(run)
    assert tr.epoch == 2


def test_an_allowed_change_is_recorded_as_a_branch(tmp_path):
    trainer(tmp_path / "run", epochs=2).train()
    tr = trainer(tmp_path / "run", epochs=3, seed=9, reward="saturation")
    tr.resume(tmp_path / "run", allow_change=True)
    tr.train()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    (branch,) = record["branches"]
    assert branch["epoch"] == 2 and branch["checkpoint"].endswith("checkpoint-00002.pt")
    assert {(c["field"], c["key"]) for c in branch["changes"]} == {("reward", None), ("config", "seed")}
    assert record["definition"]["reward"] == "saturation" and record["definition"]["config"]["seed"] == 9
    # the branch is now the run: resuming it again with its new settings needs no opt-in
    again = trainer(tmp_path / "run", epochs=4, seed=9, reward="saturation")
    again.resume(tmp_path / "run")
    assert again.epoch == 3


def test_a_new_run_never_writes_into_another_runs_folder(finished_run, tmp_path):
    run, _ = finished_run
    with pytest.raises(TrainingError, match="already holds a run .*checkpoint-00002.pt.*To continue that run: RESUME"):
        trainer(run, epochs=2, front_end=FrontEnd(resume_hint="RESUME")).train()


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path):
    tr = trainer(tmp_path / "run", epochs=2, checkpoint_every=0)
    tr.start_run()  # recorded, then "killed" before any checkpoint
    again = trainer(tmp_path / "run", epochs=2, checkpoint_every=0)
    again.resume(tmp_path / "run")
    assert again.epoch == 0
    again.train()
    full = trainer(tmp_path / "full", epochs=2, checkpoint_every=0)
    full.train()
    assert same(lora_of(full), lora_of(again))
    with pytest.raises(RunChangeRefused, match="seed"):
        trainer(tmp_path / "run2", epochs=2, seed=3).resume(tmp_path / "run")


# --- storage faults: every writer of a run --------------------------------------------------------

# what the user is told -> (operations, path pattern, errno, matching operations let through first):
# each fault fires in epoch 2 of 3, after epoch 1's files were written
WRITERS = {
    "metrics log": ("append", "*/run/metrics.jsonl", ENOSPC, 1),
    "checkpoint": ("write", "*/checkpoint-00002.pt", ENOSPC, 0),
    "LoRA file": ("create", "*/run/lora.safetensors", EROFS, 0),  # the final write: a read-only target
    "reward curve": ("sync", "*/run/reward_curve.png", ENOSPC, 1),
    "preview grid": ("create", "*/samples/epoch-00002.png", EACCES, 0),
}


def _callbacks_writing_previews(run_dir):
    from PIL import Image

    from fdfo_core.files.drawing import save_png

    def on_epoch_end(tr, metrics):
        save_png(Image.new("RGB", (8, 8)), run_dir / "reward_curve.png", "reward curve")
        save_png(Image.new("RGB", (8, 8)), run_dir / "samples" / f"epoch-{metrics['epoch']:05d}.png", "preview grid",
                 make_folder=True)

    return Callbacks(log=None, on_epoch_end=on_epoch_end)


@pytest.mark.parametrize("what", sorted(WRITERS))
def test_a_failed_write_stops_with_one_message_and_loses_nothing(tmp_path, disk_faults, rescue_dirs, what):
    run = tmp_path / "run"
    ops, pattern, code, after = WRITERS[what]
    disk_faults.fail(ops, pattern, code, after)
    epochs = 3
    tr = trainer(run, epochs=epochs, callbacks=_callbacks_writing_previews(run),
                 front_end=FrontEnd(resume_hint="fdfo train --resume RUN"))
    with pytest.raises(StorageError) as e:
        tr.train()
    msg = str(e.value)
    assert msg.startswith(f"could not write the {what} ") or msg.startswith(f"could not create the {what} "), msg
    assert "Training stopped after epoch" in msg and "To continue once that is fixed: fdfo train --resume RUN." in msg
    assert "Last complete checkpoint: " + str(run / "checkpoints" / "checkpoint-0000") in msg
    assert "The LoRA trained so far (epoch" in msg and tr.rescued_lora is not None and tr.rescued_lora.exists()
    assert str(tr.rescued_lora) in msg
    if what == "LoRA file":  # training finished; only the LoRA's own name could not be written
        assert tr.rescued_lora == run / "lora.safetensors" or tr.rescued_lora.parent == rescue_dirs[0]
    else:
        assert tr.rescued_lora == run / "lora-interrupted.safetensors"
    assert leftovers(tmp_path) == []
    # Fixed: resuming continues from the last checkpoint and ends as an uninterrupted run.
    disk_faults.clear()
    again = trainer(run, epochs=epochs, callbacks=_callbacks_writing_previews(run))
    again.resume(run)
    again.train()
    full = trainer(tmp_path / "full", epochs=epochs)
    full.train()
    assert same(lora_of(full), lora_of(again))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


def test_when_no_folder_takes_the_lora_its_loss_is_stated(tmp_path, disk_faults, rescue_dirs):
    run = tmp_path / "run"
    disk_faults.full("*/checkpoint-00002.pt").full("*.safetensors")
    tr = trainer(run, epochs=3)
    with pytest.raises(StorageError) as e:
        tr.train()
    msg = str(e.value)
    assert "could not be written anywhere" in msg and "it is lost; the last checkpoint holds the LoRA of its epoch" in msg
    assert str(run / "checkpoints" / "checkpoint-00001.pt") in msg
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fault, words", [
    ("read_only", "could not create the run folder .*read-only"),
    ("file", "run is a file, not a folder"),
    ("full", "could not write the run folder .*no space left"),
])
def test_an_unwritable_run_folder_is_refused_before_the_first_epoch(tmp_path, disk_faults, fault, words):
    run = tmp_path / "run"
    if fault == "file":
        run.write_text("x")
    elif fault == "read_only":
        disk_faults.read_only(str(run))
    else:
        disk_faults.full(str(run))
    sampled = []
    tr = trainer(run, epochs=1, callbacks=Callbacks(log=None, on_progress=lambda *a: sampled.append(a)))
    with pytest.raises(StorageError, match=words):
        tr.train()
    assert sampled == [] and tr.epoch == 0


def test_a_folder_deleted_mid_run_stops_the_run(tmp_path, rescue_dirs):
    import shutil

    run = tmp_path / "run"

    def delete_after_first(tr, metrics):
        if metrics["epoch"] == 1:
            shutil.rmtree(run)

    tr = trainer(run, epochs=3, callbacks=Callbacks(log=None, on_epoch_end=delete_after_first))
    with pytest.raises(StorageError) as e:
        tr.train()
    assert "does not exist (deleted or unmounted during the run?)" in str(e.value)
    assert not run.exists()  # never re-created under a vanished mount point
    assert tr.rescued_lora.parent == rescue_dirs[0] and "could not take it" not in str(e.value)


def test_free_space_is_checked_against_the_expected_writes(tmp_path, monkeypatch):
    logs = []
    tr = trainer(tmp_path / "run", epochs=10, checkpoint_every=2, callbacks=Callbacks(log=logs.append))
    size = tr.expected_bytes()
    adapter = sum(p.numel() * 4 for p in tr.params)
    assert size["checkpoints"] == 5 and size["checkpoint"] >= 3 * adapter and size["lora"] >= adapter
    need = size["checkpoints"] * size["checkpoint"] + 2 * size["lora"]
    monkeypatch.setattr(storage, "free_bytes", lambda path: need // 2)
    tr.start_run()
    (warning,) = [l for l in logs if l.startswith("warning:")]
    assert "5 checkpoint(s)" in warning and "disk will fill before the run ends" in warning


def test_a_run_keeps_one_run_id_over_its_sessions_and_two_runs_never_share_one(tmp_path):
    """run.json's run_id identifies a run's records (picks) across files and front ends (issue 27)."""
    trainer(tmp_path / "a", epochs=1).train()
    first = RunRecords(tmp_path / "a").run_id()
    tr = trainer(tmp_path / "a", epochs=2)
    tr.resume(tmp_path / "a")
    tr.train()
    assert RunRecords(tmp_path / "a").run_id() == first and len(json.loads((tmp_path / "a" / "run.json").read_text())["sessions"]) == 2
    trainer(tmp_path / "b", epochs=1).train()  # the same seed and settings
    assert RunRecords(tmp_path / "b").run_id() not in (None, first)
    legacy = json.loads((tmp_path / "b" / "run.json").read_text())
    del legacy["run_id"]  # a record from before run ids: the next session adds one
    (tmp_path / "b" / "run.json").write_text(json.dumps(legacy))
    assert RunRecords(tmp_path / "b").run_id() is None
    tr = trainer(tmp_path / "b", epochs=2)
    tr.resume(tmp_path / "b")
    tr.train()
    assert RunRecords(tmp_path / "b").run_id() is not None


# --- the run's identity on every record that can leave its folder (issue 27, item 3) ------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs made with the same seed and settings in two folders: a (2 epochs), b (1 epoch)."""
    root = tmp_path_factory.mktemp("two_runs")
    trainer(root / "a", epochs=2).train()
    trainer(root / "b", epochs=1).train()
    return root


def test_checkpoints_and_lora_files_name_their_run_and_epoch(two_runs):
    from fdfo_core.backends.lora_files import read_lora_metadata
    from fdfo_core.run.checkpoints import checkpoint_files, checkpoint_run_id

    a = RunRecords(two_runs / "a").run_id()
    assert a and a != RunRecords(two_runs / "b").run_id()
    assert [checkpoint_run_id(p) for p in checkpoint_files(two_runs / "a")] == [a, a]
    meta = read_lora_metadata(two_runs / "a" / "lora.safetensors")
    assert meta["run_id"] == a and meta["epoch"] == 2 and meta["fingerprint"]["weights"] == "seed0"


def test_a_checkpoint_copied_in_from_another_run_is_refused(two_runs, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(two_runs / "b", b)
    shutil.copy(two_runs / "a" / "checkpoints" / "checkpoint-00002.pt", b / "checkpoints")  # newer than b's own
    tr = trainer(b, epochs=3)
    with pytest.raises(TrainingError) as e:
        tr.resume(b)
    msg = str(e.value)
    ids = RunRecords(two_runs / "a").run_id(), RunRecords(b).run_id()
    assert f"written by run {ids[0]}" in msg and f"holds run {ids[1]}" in msg and "copied here" in msg
    assert "checkpoint-00001.pt" in msg and "move checkpoint-00002.pt out" in msg  # b's own newest, and what to do
    assert tr.epoch == 0 and not tr.has_trained()  # nothing was loaded


def test_resuming_one_runs_checkpoint_into_another_runs_folder_is_refused(two_runs, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(two_runs / "b", b)
    before = sorted(p.name for p in (b / "checkpoints").iterdir())
    tr = trainer(b, epochs=3)
    with pytest.raises(TrainingError, match="belongs to another run folder.*new, empty run folder"):
        tr.resume(two_runs / "a")  # `fdfo train --resume a --run-dir b`
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == before


def test_a_checkpoint_continued_in_a_new_folder_is_a_new_run(two_runs, tmp_path):
    a = RunRecords(two_runs / "a").run_id()
    logs = []
    tr = trainer(tmp_path / "fork", epochs=3, callbacks=Callbacks(log=logs.append))
    tr.resume(two_runs / "a")
    tr.train()
    record = json.loads((tmp_path / "fork" / "run.json").read_text())
    assert record["run_id"] not in (None, a) and tr.run_id == record["run_id"]
    assert record["sessions"][-1]["forked_from"]["run_id"] == a
    assert any(f"belongs to run {a}" in l and "new run" in l for l in logs)
    from fdfo_core.run.checkpoints import checkpoint_run_id, latest_checkpoint

    assert checkpoint_run_id(latest_checkpoint(tmp_path / "fork")) == record["run_id"]


def test_a_run_whose_record_was_lost_keeps_its_id_from_its_checkpoint(two_runs, tmp_path):
    import shutil

    a = tmp_path / "a"
    shutil.copytree(two_runs / "a", a)
    (a / "run.json").unlink()
    tr = trainer(a, epochs=3)
    tr.resume(a)
    tr.train()
    assert RunRecords(a).run_id() == RunRecords(two_runs / "a").run_id()


def test_a_shared_lora_folder_keeps_every_file_that_is_not_this_runs(tmp_path):
    """lora_files.publish_target, the rule every publish into ComfyUI's LoRA folder follows."""
    import torch as _torch

    from fdfo_core.backends.lora_files import publish_target, save_lora

    folder = tmp_path / "loras"
    folder.mkdir()
    tensors = {"diffusion_model.x.lora_down.weight": _torch.ones(1, 2), "diffusion_model.x.lora_up.weight": _torch.ones(2, 1)}
    assert publish_target(folder, "art.safetensors", "abcdef0123456789") == (folder / "art.safetensors", None)
    save_lora(folder / "art.safetensors", tensors, {"run_id": "abcdef0123456789"})
    assert publish_target(folder, "art.safetensors", "abcdef0123456789") == (folder / "art.safetensors", None)  # its own
    path, note = publish_target(folder, "art.safetensors", "9999999999999999")
    assert path == folder / "art-99999999.safetensors" and "the LoRA of run abcdef0123456789, not this run's" in note
    save_lora(folder / "old.safetensors", tensors, {"reward": "brightness"})  # FDFO, before run ids
    own = tmp_path / "run" / "old.safetensors"
    own.parent.mkdir()
    own.write_bytes((folder / "old.safetensors").read_bytes())
    assert publish_target(folder, "old.safetensors", "9999999999999999", own_copy=own)[1] is None  # the same bytes
    path, note = publish_target(folder, "old.safetensors", "9999999999999999")
    assert path.name == "old-99999999.safetensors" and "an FDFO LoRA from before run ids" in note
    save_lora(folder / "old-99999999.safetensors", tensors, {})  # its own name taken too: the next free one
    path, note = publish_target(folder, "old.safetensors", "9999999999999999")
    assert path.name == "old-99999999-2.safetensors" and "a LoRA from another tool" not in note
