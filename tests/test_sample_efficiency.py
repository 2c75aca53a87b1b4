"""The sample-efficiency benchmark run as a user runs it: --smoke in the default suite (the same code
path as --quick and the full run: 2 seeds, 2 rewards, 3 methods, parallel workers, result files,
bootstrap table, plots, on 2 epochs of 8 images at 4 sampling steps), and --quick (< 10 min on 2 cores) when
FDFO_BENCHMARK_TESTS=1 (it takes minutes, too long for every CI run)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficiency_stats import curve_auc, first_reach  # noqa: E402

METHODS = {"fdfo", "flow_grpo", "diffusion_nft"}
REWARDS = {"alignment", "colourfulness"}


def _run(out, cwd, mode="--smoke", timeout=1800, extra=()):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sample_efficiency.py"), mode, *extra,
                           "--out", str(out), "--workers", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_smoke_benchmark_writes_paired_runs_table_and_plots(tmp_path):
    out = tmp_path / "se"
    proc = _run(out, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_outputs(out, proc.stdout, epochs=2, images_per_epoch=8)

    # A second invocation finds every run's file and only redoes the report.
    again = _run(out, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "12 runs reused, 0 to run" in again.stdout
    table = (out / "table.json").read_text()

    # --replot rebuilds the same table from the run files alone (seeded bootstrap).
    (out / "table.json").unlink()
    (out / "runs.json").unlink()
    replot = _run(out, tmp_path, "--replot", extra=["--smoke"])
    assert replot.returncode == 0, replot.stderr[-3000:]
    assert json.loads((out / "table.json").read_text())["tables"] == json.loads(table)["tables"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FDFO_BENCHMARK_TESTS") != "1",
                    reason="set FDFO_BENCHMARK_TESTS=1 to run the benchmark's --quick mode (minutes)")
def test_quick_benchmark_finishes_in_ten_minutes(tmp_path):
    out = tmp_path / "quick"
    t0 = time.perf_counter()
    proc = _run(out, tmp_path, "--quick", timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_outputs(out, proc.stdout, epochs=3, images_per_epoch=32)
    assert seconds < 600


def _check_outputs(out, stdout, epochs, images_per_epoch):
    assert "AUC (mean held-out)" in stdout and "FDFO - Flow-GRPO" in stdout

    runs = json.loads((out / "runs.json").read_text())
    assert {(r["reward"], r["method"], r["seed"]) for r in runs} == {
        (w, m, s) for w in REWARDS for m in METHODS for s in (0, 1)}
    for r in runs:
        # Epoch 0 is the untrained model, then one point per epoch; every epoch costs every
        # method the same number of reward evaluations.
        assert [p["epoch"] for p in r["curve"]] == list(range(epochs + 1))
        assert [p["evals"] for p in r["curve"]] == [images_per_epoch * e for e in range(epochs + 1)]
        assert all(b["cpu_seconds"] > a["cpu_seconds"] for a, b in zip(r["curve"], r["curve"][1:]))
        assert (out / "runs" / r["reward"] / r["method"] / f"seed{r['seed']}.json").exists()
    for w in REWARDS:  # every method of a reward starts from the same base model on the same held-out set
        assert len({r["curve"][0]["heldout"] for r in runs if r["reward"] == w}) == 1

    table = json.loads((out / "table.json").read_text())["tables"]
    assert set(table) == REWARDS
    for w, summary in table.items():
        rows = {row["method"]: row for row in summary["rows"]}
        assert set(rows) == METHODS
        for m, row in rows.items():
            rs = sorted((r for r in runs if r["reward"] == w and r["method"] == m), key=lambda r: r["seed"])
            xs = [p["evals"] for p in rs[0]["curve"]]
            ys = np.array([[p["heldout"] for p in r["curve"]] for r in rs])
            point, lo, hi = row["auc"]
            assert point == pytest.approx(np.mean([curve_auc(xs, y) for y in ys]))
            assert lo <= point + 1e-12 and point <= hi + 1e-12
            assert row["final"][0] == pytest.approx(ys[:, -1].mean())
            for t, (reach, _, _) in row["reach"].items():
                assert reach == first_reach(xs, ys.mean(axis=0), float(t))
        paired = {p["baseline"]: p for p in summary["paired"]}
        assert set(paired) == METHODS - {"fdfo"}
        for m, p in paired.items():
            diff = p["auc_diff"][0]
            assert diff == pytest.approx(rows["fdfo"]["auc"][0] - rows[m]["auc"][0])
        for name in (f"{w}_vs_evals.png", f"{w}_vs_cpu.png"):
            assert Image.open(out / name).size[0] > 100

