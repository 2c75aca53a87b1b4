"""The sample-efficiency benchmark's `--quick` mode, run as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"fdfo", "flow_grpo", "flow_grpo_fast"}


@pytest.mark.slow
def test_quick_benchmark_writes_table_curves_and_plots(tmp_path):
    out = tmp_path / "se"
    threads = os.environ.get("FDFO_TEST_THREADS", "2")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sample_efficiency.py"), "--quick",
                           "--out", str(out), "--threads", threads],
                          capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "evals to reach" in proc.stdout and "final held-out" in proc.stdout

    runs = json.loads((out / "runs.json").read_text())
    assert set(runs) == METHODS
    for method, rs in runs.items():
        assert len(rs) == 1  # one seed in quick mode
        curve = rs[0]["curve"]
        # Epoch 0 is the untrained model, then one point per epoch; every epoch costs every
        # method the same number of reward evaluations.
        assert [p["epoch"] for p in curve] == list(range(9))
        assert [p["evals"] for p in curve] == [64 * i for i in range(9)]
        assert all(0.0 <= p["heldout"] <= 1.0 for p in curve)
        assert all(b["seconds"] > a["seconds"] for a, b in zip(curve, curve[1:]))
    # Every method starts from the same base model on the same held-out set.
    starts = {rs[0]["curve"][0]["heldout"] for rs in runs.values()}
    assert len(starts) == 1

    table = json.loads((out / "table.json").read_text())
    rows = {r["method"]: r for r in table["rows"]}
    assert set(rows) == METHODS
    best = table["grpo_best"]
    assert best == max(p["heldout"] for p in runs["flow_grpo"][0]["curve"])
    # Flow-GRPO reaches its own best, by definition, at the first epoch that attains it.
    grpo_curve = runs["flow_grpo"][0]["curve"]
    assert rows["flow_grpo"]["evals_to_reach_grpo_best"] == next(p["evals"] for p in grpo_curve if p["heldout"] >= best)
    for r in rows.values():
        assert r["final"] == runs[r["method"]][0]["curve"][-1]["heldout"]
        assert 0.0 <= r["diversity_before"] <= 1.0 and 0.0 <= r["diversity_after"] <= 1.0
    for name in ("reward_vs_evals.png", "reward_vs_time.png"):
        assert Image.open(out / name).size[0] > 100
