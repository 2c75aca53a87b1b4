"""Sample-efficiency statistics over paired seeds: area under the held-out curve, evaluations to
reach a threshold, and percentile-bootstrap intervals over seeds (benchmarks/sample_efficiency.py).

A curve is a list of (reward evaluations, held-out reward) points starting at 0 evaluations.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

N_BOOT = 10_000
LEVEL = 0.95


def curve_auc(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Normalised area under the curve: the trapezoid integral of y over x divided by the x span,
    i.e. the mean held-out reward over the whole budget (same units as y). Raises ValueError on
    fewer than two points or a non-increasing x."""
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.size < 2 or np.any(np.diff(x) <= 0):
        raise ValueError("an AUC needs at least two points with increasing x")
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def first_reach(xs: Sequence[float], ys: Sequence[float], threshold: float) -> float:
    """The first x whose y is >= threshold; math.inf if the curve never gets there."""
    for x, y in zip(xs, ys):
        if y >= threshold:
            return float(x)
    return math.inf


def bootstrap(stat: Callable[[np.ndarray], float], n_seeds: int, n_boot: int = N_BOOT, seed: int = 0,
              level: float = LEVEL) -> tuple[float, float, float]:
    """(stat on all seeds, low, high): percentile bootstrap over seeds.

    `stat(indices)` computes the statistic from a resample of seed indices (with replacement); pass
    the same indices to both methods of a paired comparison. Infinite values (a threshold never
    reached) sort last, so an interval may end in inf; NaN draws (undefined, e.g. a ratio where
    neither method reaches the threshold) are left out.
    """
    rng = np.random.default_rng(seed)
    point = stat(np.arange(n_seeds))
    draws = np.array([stat(rng.integers(0, n_seeds, n_seeds)) for _ in range(n_boot)], dtype=np.float64)
    draws = np.sort(draws[~np.isnan(draws)])
    if draws.size == 0:
        return float(point), math.nan, math.nan
    alpha = (1 - level) / 2
    lo = draws[int(math.floor(alpha * (draws.size - 1)))]
    hi = draws[int(math.ceil((1 - alpha) * (draws.size - 1)))]
    return float(point), float(lo), float(hi)


def mean_curve(curves: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean over the resampled seeds `idx` of curves [seeds, points]."""
    return curves[idx].mean(axis=0)


def reach_stat(xs: Sequence[float], curves: np.ndarray, threshold: float) -> Callable[[np.ndarray], float]:
    """Evaluations at which the seed-mean curve first reaches `threshold` (inf if never)."""
    return lambda idx: first_reach(xs, mean_curve(curves, idx), threshold)


def ratio_stat(xs: Sequence[float], curves_a: np.ndarray, curves_b: np.ndarray,
               threshold: float) -> Callable[[np.ndarray], float]:
    """Paired: evaluations A needs over evaluations B needs to reach `threshold` (seed-mean curves
    of the same resampled seeds); inf when only B gets there, nan when neither does."""
    def stat(idx: np.ndarray) -> float:
        a = first_reach(xs, mean_curve(curves_a, idx), threshold)
        b = first_reach(xs, mean_curve(curves_b, idx), threshold)
        if math.isinf(a) and math.isinf(b):
            return math.nan
        return math.inf if math.isinf(a) else (a / b if not math.isinf(b) else 0.0)
    return stat


def fmt_ratio(point: float, lo: float, hi: float, a: str = "A", b: str = "B", digits: int = 2) -> str:
    """A `ratio_stat` interval, '0.50 [0.17, 1.25]', where the ratio's sentinels read as what they
    mean: 0 as 'only <a>' (only A reaches the threshold), inf as 'only <b>', nan as 'n/a'."""
    def f(v: float) -> str:
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return f"only {b}"
        return f"only {a}" if v == 0 else f"{v:.{digits}f}"
    return f"{f(point)} [{f(lo)}, {f(hi)}]"


def fmt_interval(point: float, lo: float, hi: float, digits: int = 3, integer: bool = False) -> str:
    """'0.734 [0.721, 0.745]'; unreached thresholds read 'not reached' / '> budget'."""
    def f(v: float) -> str:
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "> budget" if v > 0 else "-inf"
        return f"{v:.0f}" if integer else f"{v:.{digits}f}"
    if math.isinf(point):
        return f"not reached [{f(lo)}, {f(hi)}]"
    return f"{f(point)} [{f(lo)}, {f(hi)}]"
