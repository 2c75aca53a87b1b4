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
    # Every unordered split of 2h of the 8 blocks into two disjoint sets of h: C(8,2) = 28 of 1 + 1,
    # C(8,4) C(4,2) / 2 = 210 of 2 + 2, C(8,4) / 2 = 35 of 4 + 4; a cap samples that many distinct ones.
    assert [len(ge.split_half(noisy, h)) for h in (1, 2, 4)] == [28, 210, 35]
    assert len(ge.split_half(noisy, 2, limit=50)) == 50 and ge.split_half(noisy, 5) == []
    assert ge.split_half(truth.expand(4, 50), 2) == pytest.approx([1.0] * 3)
    # Every set of h blocks against the reference: C(8, h) of them.
    assert [len(ge.versus(noisy, h, truth)) for h in (1, 4, 8)] == [8, 70, 1]
    assert ge.cosine(truth, -truth) == pytest.approx(-1.0)
    # Averaging more blocks brings an unbiased estimate closer to the truth.
    assert ge.mean(ge.versus(noisy, 8, truth)) > ge.mean(ge.versus(noisy, 1, truth))


def test_signal_and_noise_by_hand_and_from_many_blocks():
    # d = [2, 1], [2, -1]: |g|^2 = d1 . d2 = 3, mean |d|^2 = 5, noise 2, snr 1.5;
    # 2 blocks per half then give a split-half cosine of 3 / 4.
    two = torch.tensor([[2.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    sn = ge.signal_noise(two, reference=torch.tensor([1.0, 0.0], dtype=torch.float64), reference_reliability=1.0)
    assert (sn["signal_sq"], sn["noise_sq"], sn["snr_per_block"]) == pytest.approx((3.0, 2.0, 1.5))
    assert sn["accuracy_limit"] == pytest.approx(2 / 3 ** 0.5)  # mean [2, 0] . [1, 0] / (|g| = sqrt 3)
    assert ge.consistency_predicted(1.5, 2) == pytest.approx(0.75)
    # No signal: |g|^2 <= 0 has no accuracy limit, and predicts no consistency.
    none = ge.signal_noise(torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64), two[0], 1.0)
    assert none["accuracy_limit"] is None and ge.consistency_predicted(none["snr_per_block"], 10) == 0.0
    # Many noisy blocks: snr near |g|^2 / (50 x 9); an unbiased estimator's limit near 1, a biased one's below.
    g = torch.Generator().manual_seed(1)
    truth = torch.randn(50, generator=g, dtype=torch.float64)
    noisy = truth + 3 * torch.randn(600, 50, generator=g, dtype=torch.float64)
    sn = ge.signal_noise(noisy, truth, 1.0)
    assert sn["snr_per_block"] == pytest.approx(float(truth @ truth) / 450, rel=0.3)
    assert sn["accuracy_limit"] == pytest.approx(1.0, abs=0.15)
    side = torch.zeros(50, dtype=torch.float64)
    side[0] = 1.0
    side = side - (side @ truth) / (truth @ truth) * truth
    side = side / side.norm() * truth.norm()  # as long as the truth, orthogonal to it: cosine 1 / sqrt 2
    assert ge.signal_noise(noisy + side, truth, 1.0)["accuracy_limit"] == pytest.approx(2 ** -0.5, abs=0.15)


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
            assert row["noise_sq"] > 0 and (row["accuracy_limit"] is None or math.isfinite(row["accuracy_limit"]))
    for state in ("untrained", "FDFO-trained"):
        for key in ("consistency", "accuracy"):
            assert (tmp_path / f"{key}_{state}.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| FDFO K=4 |" in printed and "split-half cosine" in printed and "evaluations for consistency 0.5" in printed


def test_noise_probe_smoke(tmp_path):
    probe = ge.main(["--smoke", "--noise-probe", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "noise_probe.json").read_text())["methods"].keys() == set(ge.PROBE_METHODS)
    assert set(probe["before"]) == {"alignment", "colourfulness"}
    from fdfo_core.config import load_config
    from sample_efficiency import method_values

    for label, method in ge.PROBE_METHODS.items():
        row = probe["methods"][label]
        cfg = load_config("toy", overrides={**method_values(method), "method": method})
        # As many AdamW steps as the method takes in the (smoke: 1) epochs, at its benchmark lr.
        assert (row["lr"], row["steps"]) == (cfg.lr, probe["epochs"] * cfg.optimizer_steps_per_epoch)
        assert all(len(v) == 1 and math.isfinite(v[0]) for v in row["after"].values())
    # Noise steps of Flow-GRPO's size move the images: its colourfulness changes.
    assert probe["methods"]["Flow-GRPO"]["after"]["colourfulness"][0] != probe["before"]["colourfulness"]


def test_jackknife_se_of_a_mean_is_the_standard_error():
    x = torch.tensor([[1.0], [2.0], [4.0], [7.0]], dtype=torch.float64)
    # For the mean, the jackknife SE equals the sample standard deviation / sqrt(m).
    assert ge.jackknife_se(x, lambda b: float(b.mean())) == pytest.approx(float(x.std() / 2))
    assert math.isnan(ge.jackknife_se(x, lambda b: None))
