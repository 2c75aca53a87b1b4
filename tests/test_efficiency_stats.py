"""The sample-efficiency statistics (benchmarks/efficiency_stats.py) and asymmetric plot bands."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from efficiency_stats import bootstrap, curve_auc, first_reach, fmt_interval, ratio_stat, reach_stat  # noqa: E402


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
    from fdfo_core.images import line_plot

    plain = np.asarray(line_plot({"a": ([0, 1, 2], [0.5, 0.6, 0.7])}))
    banded = np.asarray(line_plot({"a": ([0, 1, 2], [0.5, 0.6, 0.7])}, bands={"a": [(0.0, 0.6), (0.5, 0.9), (0.6, 1.0)]}))
    symmetric = np.asarray(line_plot({"a": ([0, 1, 2], [0.5, 0.6, 0.7])}, bands={"a": [0.1, 0.1, 0.1]}))
    assert banded.shape == plain.shape
    assert not np.array_equal(banded, plain) and not np.array_equal(banded, symmetric)
