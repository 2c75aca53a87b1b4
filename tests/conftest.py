import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Two cores on CI: more threads only add contention. Tests must be deterministic on the CPU.
torch.set_num_threads(int(os.environ.get("FDFO_TEST_THREADS", min(2, os.cpu_count() or 1))))
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
