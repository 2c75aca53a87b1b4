"""fdfo_core.files.storage: atomic writes leave the old file or the new one, never a partial one, and
every OS failure becomes one StorageError in plain words."""

import errno
import json

import pytest
import torch
from PIL import Image

from fdfo_core.files import storage
from fdfo_core.run.checkpoints import save_checkpoint
from fdfo_core.files.drawing import save_png
from fdfo_core.backends.lora_files import load_lora, save_lora
from fdfo_core.files.storage import StorageError

from storage_faults import EACCES, ENOSPC, EROFS, leftovers


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path, disk_faults):
    path = tmp_path / "record.json"
    storage.write_json(path, {"v": 1}, "run record")
    disk_faults.full("*/record.json")
    with pytest.raises(StorageError) as e:
        storage.write_json(path, {"v": 2}, "run record")
    msg = str(e.value)
    assert msg.startswith(f"could not write the run record {path}: no space left on the device")
    assert "free in" in msg and "To fix: free some space" in msg
    assert e.value.errno == errno.ENOSPC and e.value.path == path
    assert json.loads(path.read_text()) == {"v": 1}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code, words", [(EROFS, "read-only"), (EACCES, "permission denied")])
def test_read_only_and_forbidden_folders_are_named(tmp_path, disk_faults, code, words):
    disk_faults.fail("create", "*/x.png", code)
    with pytest.raises(StorageError, match=words):
        save_png(Image.new("RGB", (4, 4)), tmp_path / "x.png", "preview grid")
    assert not (tmp_path / "x.png").exists() and leftovers(tmp_path) == []


def test_library_writers_that_wrap_the_os_error_are_translated(tmp_path, disk_faults):
    # torch.save raises RuntimeError("enforce fail ...") with the OSError only as its context;
    # PIL and safetensors data go through the same guarded file.
    disk_faults.fail("write", "*", ENOSPC)
    with pytest.raises(StorageError, match="could not write the checkpoint .*no space left"):
        save_checkpoint(tmp_path / "c.pt", {"a": torch.zeros(1000)})
    with pytest.raises(StorageError, match="could not write the image .*no space left"):
        save_png(Image.new("RGB", (64, 64)), tmp_path / "i.png")
    with pytest.raises(StorageError, match="could not write the LoRA file"):
        save_lora(tmp_path / "l.safetensors", {"diffusion_model.m.lora_up.weight": torch.zeros(2, 2)}, {})
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == []


def test_os_errors_reported_in_library_messages_are_found():
    found = storage.find_os_error(RuntimeError("Error while serializing: IoError(Os { code: 28 }) (os error 28)"))
    assert found.errno == errno.ENOSPC
    assert storage.find_os_error(ValueError("shape mismatch")) is None


def test_a_bug_in_the_data_is_not_disguised_as_a_storage_error(tmp_path):
    def broken(f):
        f.write(b"partial")
        raise ValueError("not serialisable")

    with pytest.raises(ValueError, match="not serialisable"):
        storage.atomic_write(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []


def test_writes_round_trip(tmp_path):
    save_lora(tmp_path / "l.safetensors", {"diffusion_model.m.alpha": torch.tensor(2.0)}, {"epochs": 3})
    tensors, meta = load_lora(tmp_path / "l.safetensors")
    assert meta["epochs"] == 3 and float(tensors["diffusion_model.m.alpha"]) == 2.0
    storage.copy_file(tmp_path / "l.safetensors", tmp_path / "copy.safetensors")
    assert (tmp_path / "copy.safetensors").read_bytes() == (tmp_path / "l.safetensors").read_bytes()


def test_a_path_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(StorageError, match=r"run is a file, not a folder. To fix: move that file away"):
        storage.check_writable(tmp_path / "run", "run folder")
    with pytest.raises(StorageError, match=r"run is a file, not a folder"):
        storage.write_text(tmp_path / "run" / "checkpoints" / "x", "x", parents=True)
    (tmp_path / "lora.safetensors").mkdir()
    with pytest.raises(StorageError, match="is a folder, not a file"):
        storage.write_bytes(tmp_path / "lora.safetensors", b"x", "LoRA file")
    assert leftovers(tmp_path) == []


def test_a_vanished_run_folder_is_not_recreated(tmp_path):
    run = tmp_path / "run"
    for make_folder in (False, True):
        with pytest.raises(StorageError, match=r"the folder .*run does not exist \(deleted or unmounted during the run\?\)"):
            storage.write_bytes(run / "checkpoints" / "c.pt", b"x", "checkpoint", make_folder=make_folder)
    with pytest.raises(StorageError, match=r"the folder .*run does not exist"):
        storage.append_line(run / "metrics.jsonl", "{}", "metrics log")
    assert not run.exists()
    run.mkdir()  # asked for, the write's own folder (checkpoints/) is created, one level only
    with pytest.raises(StorageError, match=r"checkpoints does not exist"):
        storage.write_bytes(run / "checkpoints" / "c.pt", b"x", "checkpoint")
    storage.write_bytes(run / "checkpoints" / "c.pt", b"x", "checkpoint", make_folder=True)
    assert (run / "checkpoints" / "c.pt").read_bytes() == b"x"


def test_a_log_line_is_all_or_nothing(tmp_path, disk_faults):
    log = tmp_path / "metrics.jsonl"
    storage.append_line(log, '{"epoch": 1}', "metrics log")
    disk_faults.full("*/metrics.jsonl")
    with pytest.raises(StorageError, match="could not write the metrics log"):
        storage.append_line(log, '{"epoch": 2}', "metrics log")
    assert log.read_text() == '{"epoch": 1}\n'
    disk_faults.clear()
    storage.append_line(log, '{"epoch": 2}', "metrics log")
    assert [json.loads(l)["epoch"] for l in log.read_text().splitlines()] == [1, 2]


def test_checks_before_a_run(tmp_path, disk_faults):
    assert storage.check_writable(tmp_path / "a" / "b", "run folder") > 0
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    disk_faults.fail("probe", "*", EROFS)
    with pytest.raises(StorageError, match="could not write the run folder .*read-only"):
        storage.check_writable(tmp_path / "c", "run folder")
    free = storage.free_bytes(tmp_path)
    assert storage.space_warning(tmp_path, free // 2, "x") is None
    warning = storage.space_warning(tmp_path, free * 2, "3 checkpoints of 1 GB")
    assert "will write about" in warning and "3 checkpoints of 1 GB" in warning and "disk will fill" in warning


def test_stale_temps_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".checkpoint-00003.pt.abc123.fdfo-tmp"
    stale.write_bytes(b"half")
    keep = tmp_path / "notes.tmp"
    keep.write_text("mine")
    assert storage.remove_stale_temps(tmp_path) == [stale]
    assert keep.exists() and not stale.exists()
