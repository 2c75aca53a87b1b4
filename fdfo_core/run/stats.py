"""Per-item training diagnostics of an epoch (loss, likelihood ratio, clipping, KL), shared by every
method on the run loop (`run.trainer.RunLoop`); reduced over ranks before the epoch's metrics."""

from __future__ import annotations

import math
from typing import Any

import torch

from .distributed import DistContext


class ItemStats:
    """Per-item training diagnostics of an epoch, summed over micro-batches (and ranks).

    The clip fraction is also binned by flow time t (4 bins over [0, 1]): where in the chain the
    trust region binds is the first thing to look at when a run misbehaves. Sums stay on the
    training device (float64) until the epoch ends, so the step loop never waits for the GPU.
    """

    T_BINS = 4

    def __init__(self) -> None:
        self._sums: torch.Tensor | None = None  # loss, ratio, clipped, kl (float64, on the device)
        self._min: torch.Tensor | None = None
        self._max: torch.Tensor | None = None
        self._bins: torch.Tensor | None = None  # [2, T_BINS]: items, clipped
        self.items = 0
        self.grad_norms: list[float] = []
        self._reduced: tuple[list[float], float, float, torch.Tensor] | None = None

    def add(self, loss: torch.Tensor, ratio: torch.Tensor, clipped: torch.Tensor, kl: torch.Tensor | None = None,
            t: torch.Tensor | None = None) -> None:
        device = ratio.device
        if self._sums is None:
            self._sums = torch.zeros(4, dtype=torch.float64, device=device)
            self._min = torch.full((), math.inf, dtype=torch.float64, device=device)
            self._max = torch.full((), -math.inf, dtype=torch.float64, device=device)
            self._bins = torch.zeros(2, self.T_BINS, dtype=torch.float64, device=device)
        r = ratio.detach().double()
        c = clipped.detach().double()
        k = kl.detach().double().sum() if kl is not None else torch.zeros((), dtype=torch.float64, device=device)
        self._sums += torch.stack([loss.detach().double().sum(), r.sum(), c.sum(), k.to(device)])
        self._min = torch.minimum(self._min, r.min())
        self._max = torch.maximum(self._max, r.max())
        if t is not None:
            b = (t.detach().float().to(device) * self.T_BINS).long().clamp(0, self.T_BINS - 1)
            self._bins[0] += torch.bincount(b, minlength=self.T_BINS).double()
            self._bins[1] += torch.bincount(b, weights=c, minlength=self.T_BINS)
        self.items += int(ratio.numel())

    def _values(self) -> tuple[list[float], float, float, torch.Tensor]:
        if self._reduced is not None:
            return self._reduced
        if self._sums is None:
            return [0.0] * 4, math.inf, -math.inf, torch.zeros(2, self.T_BINS, dtype=torch.float64)
        return self._sums.cpu().tolist(), float(self._min), float(self._max), self._bins.cpu()

    def reduce(self, dist: DistContext) -> None:
        """Sum over ranks (min / max for the ratio range)."""
        sums, lo, hi, bins = self._values()
        if dist.active:
            counts = torch.tensor([*sums, float(self.items)], dtype=torch.float64)
            bins = bins.clone()
            dist.all_reduce_([counts, bins])
            *sums, items = counts.tolist()
            self.items = int(items)
            lo = min(dist.all_gather_object(lo))
            hi = max(dist.all_gather_object(hi))
        self._reduced = (list(sums), lo, hi, bins)

    def metrics(self, with_kl: bool) -> dict[str, Any]:
        (loss, ratio_sum, clipped, kl), lo, hi, bins = self._values()
        n = max(self.items, 1)
        return {
            "loss": loss / n, "ratio_mean": ratio_sum / n if self.items else math.nan,
            "ratio_min": lo if self.items else math.nan,
            "ratio_max": hi if self.items else math.nan, "clip_fraction": clipped / n,
            "grad_norm": sum(self.grad_norms) / max(1, len(self.grad_norms)),
            "kl": kl / n if with_kl else None, "items": self.items,
            # bins of t: [0, .25), [.25, .5), [.5, .75), [.75, 1]; None where no item fell
            "clip_fraction_by_t": [float(c / i) if i else None for c, i in zip(bins[1].tolist(), bins[0].tolist())],
        }


def format_metrics(m: dict[str, Any], total_epochs: int) -> str:
    return (
        f"epoch {m['epoch']}/{total_epochs}  reward {m['reward_mean']:.4f} +- {m['reward_std']:.4f}  "
        f"|dR| {m['mean_abs_dR']:.4f}  clip {m['clip_fraction']:.3f}  ratio {m['ratio_mean']:.4f} "
        f"[{m['ratio_min']:.3f}, {m['ratio_max']:.3f}]  grad {m['grad_norm']:.3g}  "
        f"pairs {m['pairs']}{' (dropped ' + str(m['pairs_dropped']) + ')' if m['pairs_dropped'] else ''}  "
        f"{m['time_epoch']:.1f}s"
    )
