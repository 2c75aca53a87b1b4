"""The sample-efficiency statistics (benchmarks/efficiency_stats.py) and asymmetric plot bands."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from efficiency_stats import bootstrap, curve_auc, first_reach, fmt_interval, fmt_ratio, ratio_stat, reach_stat  # noqa: E402


def test_auc_is_the_mean_reward_over_the_budget():
    assert curve_auc([0, 64, 128], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    # A straight ramp from 0 to 1 averages 1/2; uneven spacing is integrated, not averaged by point.
    assert curve_auc([0, 10, 100], [0.0, 0.1, 1.0]) == pytest.approx(0.5)
    assert curve_auc([0, 1, 3], [1.0, 0.0, 0.0]) == pytest.approx(1 / 6)
    with pytest.raises(ValueError):
        curve_auc([0, 0], [1, 2])


def test_first_reach_and_unreached():
    assert first_reach([0, 64, 128, 192], [0.6, 0.7, 0.69, 0.8], 0.7) == 64
    assert math.isinf(first_reach([0, 64], [0.6, 0.65], 0.7))


def test_bootstrap_interval_covers_the_mean_and_is_exact_for_constant_data():
    assert bootstrap(lambda i: float(np.array([2.0] * 5)[i].mean()), 5, n_boot=200) == (2.0, 2.0, 2.0)
    x = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    point, lo, hi = bootstrap(lambda i: float(x[i].mean()), 5, n_boot=4000)
    assert point == pytest.approx(3.2) and lo < point < hi
    assert lo >= 0.0 and hi <= 10.0
    # Same seed, same interval: the report is reproducible.
    assert bootstrap(lambda i: float(x[i].mean()), 5, n_boot=500) == bootstrap(lambda i: float(x[i].mean()), 5, n_boot=500)


def test_reach_and_paired_ratio_on_seed_mean_curves():
    xs = [0, 64, 128, 192]
    a = np.array([[0.6, 0.72, 0.75, 0.76], [0.6, 0.70, 0.74, 0.76]])  # mean 0.71 at 64, 0.745 at 128
    b = np.array([[0.6, 0.65, 0.70, 0.74], [0.6, 0.65, 0.72, 0.74]])  # mean reaches 0.74 at 192
    idx = np.arange(2)
    assert reach_stat(xs, a, 0.74)(idx) == 128
    assert reach_stat(xs, b, 0.74)(idx) == 192
    assert ratio_stat(xs, a, b, 0.74)(idx) == pytest.approx(128 / 192)
    assert ratio_stat(xs, a, b, 0.76)(idx) == 0.0  # a gets there (at 192), b never does
    assert math.isinf(ratio_stat(xs, b, a, 0.76)(idx))
    assert math.isnan(ratio_stat(xs, a, b, 0.9)(idx))
    assert fmt_interval(128, 64, math.inf, integer=True) == "128 [64, > budget]"
    assert fmt_interval(math.inf, 192, math.inf, integer=True).startswith("not reached")


def test_line_plot_draws_asymmetric_bands():
    from fdfo_core.files.drawing import line_plot

    plain = np.asarray(line_plot({"a": ([0, 1, 2], [0.5, 0.6, 0.7])}))
    banded = np.asarray(line_plot({"a": ([0, 1, 2], [0.5, 0.6, 0.7])}, bands={"a": [(0.0, 0.6), (0.5, 0.9), (0.6, 1.0)]}))
    symmetric = np.asarray(line_plot({"a": ([0, 1, 2], [0.5, 0.6, 0.7])}, bands={"a": [0.1, 0.1, 0.1]}))
    assert banded.shape == plain.shape
    assert not np.array_equal(banded, plain) and not np.array_equal(banded, symmetric)


def test_bootstrap_percentiles_on_a_hand_computed_case():
    # Two seeds with values 0 and 1: a resample's mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4.
    x = np.array([0.0, 1.0])
    point, lo, hi = bootstrap(lambda i: float(x[i].mean()), 2, n_boot=4000)
    assert (point, lo, hi) == (0.5, 0.0, 1.0)  # the 2.5% and 97.5% quantiles
    # At level 0.4 the 30% and 70% quantiles both fall in the middle half: 1/2.
    assert bootstrap(lambda i: float(x[i].mean()), 2, n_boot=4000, level=0.4) == (0.5, 0.5, 0.5)


def test_bootstrap_keeps_inf_draws_and_drops_nan_draws():
    xs = [0, 64, 128]
    # Seed 0 reaches 0.7 at 64, seed 1 never does: the mean of both reaches it at 128, seed 0 alone
    # at 64, seed 1 alone never (inf sorts last, so the interval's top is "> budget").
    curves = np.array([[0.6, 0.8, 0.8], [0.6, 0.55, 0.65]])  # mean 0.6, 0.675, 0.725
    point, lo, hi = bootstrap(reach_stat(xs, curves, 0.7), 2, n_boot=4000)
    assert (point, lo) == (128.0, 64.0) and math.isinf(hi)
    # A statistic undefined on some resamples (nan) is summarised over the others.
    vals = np.array([1.0, 3.0])
    point, lo, hi = bootstrap(lambda i: float(vals[i].mean()) if len(set(i)) > 1 else math.nan, 2, n_boot=2000)
    assert (point, lo, hi) == (2.0, 2.0, 2.0)
    # Undefined everywhere: the point is reported, the interval is n/a.
    point, lo, hi = bootstrap(lambda i: math.nan, 3, n_boot=50)
    assert math.isnan(point) and math.isnan(lo) and math.isnan(hi)


def _run(method, seed, ys, evals_per_epoch=64):
    return {"method": method, "seed": seed, "lr": 1e-3, "curve": [
        {"epoch": e, "evals": e * evals_per_epoch, "heldout": y, "diversity": 0.1, "seconds": float(e),
         "cpu_seconds": 2.0 * e} for e, y in enumerate(ys)]}


def test_summarise_gives_auc_reach_and_paired_differences_by_hand():
    from sample_efficiency import summarise

    fdfo = [_run("fdfo", 0, [0.6, 0.7, 0.8]), _run("fdfo", 1, [0.6, 0.8, 0.8])]
    grpo = [_run("flow_grpo", 0, [0.6, 0.6, 0.7]), _run("flow_grpo", 1, [0.6, 0.6, 0.6])]
    s = summarise({"fdfo": fdfo, "flow_grpo": grpo}, (0.7, 0.75), n_boot=500)
    rows = {r["method"]: r for r in s["rows"]}
    # AUC = mean of trapezoids: FDFO seed 0 (0.65 + 0.75) / 2 = 0.70, seed 1 (0.70 + 0.80) / 2 = 0.75.
    assert rows["fdfo"]["auc"][0] == pytest.approx(0.725)
    assert rows["flow_grpo"]["auc"][0] == pytest.approx((0.625 + 0.6) / 2)
    # Seed-mean curves: FDFO 0.6, 0.75, 0.8 reaches 0.7 and 0.75 at 64; Flow-GRPO 0.6, 0.6, 0.65 never.
    assert rows["fdfo"]["reach"]["0.7"][0] == 64 and rows["fdfo"]["reach"]["0.75"][0] == 64
    assert math.isinf(rows["flow_grpo"]["reach"]["0.7"][0])
    assert rows["fdfo"]["reached_by_seeds"] == {"0.7": 2, "0.75": 2}
    assert rows["flow_grpo"]["reached_by_seeds"] == {"0.7": 1, "0.75": 0}
    assert rows["fdfo"]["final"][0] == pytest.approx(0.8) and rows["fdfo"]["train_cpu_seconds"] == 4.0
    (p,) = s["paired"]
    # Paired AUC differences 0.70 - 0.625 = 0.075 and 0.75 - 0.60 = 0.15: mean 0.1125, bootstrap
    # resamples of two seeds span [0.075, 0.15].
    assert p["baseline"] == "flow_grpo" and p["fdfo_higher_auc_seeds"] == 2
    assert p["auc_diff"] == pytest.approx((0.1125, 0.075, 0.15))
    assert p["final_diff"][0] == pytest.approx(0.15)
    assert p["evals_ratio"]["0.7"][0] == 0.0  # FDFO gets there, Flow-GRPO never does


def test_unpaired_seeds_get_no_paired_row():
    from sample_efficiency import summarise

    s = summarise({"fdfo": [_run("fdfo", 0, [0.6, 0.7])], "flow_grpo": [_run("flow_grpo", 1, [0.6, 0.7])]}, (0.7,), n_boot=50)
    assert s["paired"] == [] and len(s["rows"]) == 2


def test_a_longer_run_is_reused_cut_to_the_budget(tmp_path):
    import json

    from sample_efficiency import find_run, run_path, run_settings

    long = run_settings("fdfo", "alignment", 0, 12, 64, (32, 2))
    path = run_path(tmp_path, long)
    path.parent.mkdir(parents=True)
    done = {**long, "lr": 3e-4, "curve": [{"epoch": e, "evals": 64 * e, "heldout": 0.6 + e / 100}
                                          for e in long["eval_epochs"]]}
    path.write_text(json.dumps(done))
    short = run_settings("fdfo", "alignment", 0, 8, 64, (32, 2))
    cut = find_run(short, run_path(tmp_path, short, "-other"))
    assert [p["epoch"] for p in cut["curve"]] == list(range(9)) and cut["config"]["epochs"] == 8
    assert cut["truncated_from_epochs"] == 12
    # Anything else that differs (seed, learning rate, held-out set) or a longer budget is not reused.
    for other in (run_settings("fdfo", "alignment", 1, 8, 64, (32, 2)),
                  run_settings("fdfo", "alignment", 0, 8, 64, (32, 2), {"lr": 1e-3}),
                  run_settings("fdfo", "alignment", 0, 8, 64, (16, 2)),
                  run_settings("fdfo", "alignment", 0, 16, 64, (32, 2))):
        assert find_run(other, run_path(tmp_path, other)) is None


def test_ratio_intervals_name_who_reaches_the_threshold_instead_of_printing_zero():
    assert fmt_ratio(0.5, 0.17, 1.25) == "0.50 [0.17, 1.25]"
    assert fmt_ratio(0.0, 0.0, 1.33, "FDFO", "Flow-GRPO") == "only FDFO [only FDFO, 1.33]"
    assert fmt_ratio(math.inf, 1.2, math.inf, "FDFO", "DiffusionNFT") == "only DiffusionNFT [1.20, only DiffusionNFT]"
    assert fmt_ratio(math.nan, math.nan, math.nan) == "n/a [n/a, n/a]"
