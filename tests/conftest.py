import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Two cores on CI: more threads only add contention. Tests must be deterministic on the CPU. Under
# pytest-xdist (`-n 2`: one worker process per core) each worker keeps to one thread.
_default_threads = 1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1)
torch.set_num_threads(int(os.environ.get("FDFO_TEST_THREADS", _default_threads)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tmp_run(tmp_path):
    return tmp_path / "run"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second thread only adds synchronisation (and is ~20x slower when the
    other core is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def disk_faults(monkeypatch):
    """Simulated full / read-only / vanished targets for every fdfo_core.files.storage write (the
    library's and the node pack's copy of it, when loaded)."""
    from storage_faults import DiskFaults

    faults = DiskFaults()
    for name in ("fdfo_core.files.storage", "comfyui_fdfo_nodepack.fdfo_core.files.storage"):
        module = sys.modules.get(name)
        if module is None and name == "fdfo_core.files.storage":
            import fdfo_core.files.storage as module
        if module is not None:
            monkeypatch.setattr(module, "fault_hook", faults)
    return faults


@pytest.fixture
def rescue_dirs(monkeypatch, tmp_path):
    """Fallback folders for rescued LoRAs inside the test's tmp folder (never the real /tmp or home)."""
    dirs = [tmp_path / "rescue-tmp", tmp_path / "rescue-home"]
    for name in ("fdfo_core.run.trainer", "comfyui_fdfo_nodepack.fdfo_core.run.trainer"):
        module = sys.modules.get(name)
        if module is None and name == "fdfo_core.run.trainer":
            import fdfo_core.run.trainer as module
        if module is not None:
            monkeypatch.setattr(module, "fallback_dirs", lambda: list(dirs))
    return dirs


def _saved_tiny_sd3(folder: Path, seed: int) -> Path:
    import json

    from tiny_pipelines import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(folder, seed=seed)
    pipe.save_pretrained(folder / "sd3")
    (folder / "sd3" / "fdfo.json").write_text(json.dumps({"max_sequence_length": 8, "height": 64}))
    return folder / "sd3"


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    """A tiny SD3 pipeline saved as a diffusers folder (what `fdfo --model` takes), built once."""
    return _saved_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_sd3_dir(tmp_path_factory):
    """The same architecture with other weights: another model to a run."""
    return _saved_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3_other"), seed=1)
