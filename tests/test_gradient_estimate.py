"""The gradient-estimate benchmark (issue 30 item 1) run as a user runs it, in its --smoke
configuration: both LoRA states, the back-propagated reference, consistency and accuracy tables,
the JSON record and the plots."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gradient_estimate as ge  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_split_half_and_accuracy_cosines():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(50, generator=g, dtype=torch.float64)
    noisy = truth + 3 * torch.randn(8, 50, generator=g, dtype=torch.float64)
    # Disjoint halves only: 8 blocks give 4 splits of 1 + 1, 2 of 2 + 2, 1 of 4 + 4.
    assert [len(ge.split_half(noisy, h)) for h in (1, 2, 4)] == [4, 2, 1]
    assert ge.split_half(truth.expand(4, 50), 2) == pytest.approx([1.0])
    assert ge.cosine(truth, -truth) == pytest.approx(-1.0)
    # Averaging more blocks brings an unbiased estimate closer to the truth.
    assert ge.mean(ge.versus(noisy, 8, truth)) > ge.mean(ge.versus(noisy, 1, truth))


def test_smoke_benchmark_writes_tables_json_and_plots(tmp_path, capsys):
    result = ge.main(["--smoke", "--out", str(tmp_path)])
    assert set(result["states"]) == {"untrained", "FDFO-trained"}
    record = json.loads((tmp_path / "gradient_estimate.json").read_text())
    assert record["states"].keys() == result["states"].keys()
    for state in record["states"].values():
        assert len(state["reference_split_half"]) == 1 and -1 <= state["reference_split_half"][0] <= 1
        assert set(state["settings"]) == {"FDFO churn 0.05 (preset)", "FDFO K=4", "Flow-GRPO"}
        for row in state["settings"].values():
            values = [v for vs in (*row["consistency"].values(), *row["accuracy"].values()) for v in vs]
            assert values and all(math.isfinite(v) and -1 - 1e-9 <= v <= 1 + 1e-9 for v in values)
            assert any(v != 0 for v in values)  # a real direction, not a zero gradient
    for state in ("untrained", "FDFO-trained"):
        for key in ("consistency", "accuracy"):
            assert (tmp_path / f"{key}_{state}.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| FDFO K=4 |" in printed and "split-half cosine" in printed
