"""The Bradley-Terry model of a preference reward (`rewards.preference`): the scoring head on frozen
embeddings, its loss and full-batch fit, pair accuracy, and the report of a fit with its warnings.

A pick between two images is explained by P(left preferred) = sigmoid(s(x_left, p) - s(x_right, p) + b)
(Bradley and Terry 1952; the form RLHF reward models use, e.g. Ouyang et al. 2022, eq. 1), with b
the position bias (not part of the score). Pure torch: no image files, encoders or picks here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import RewardError


HEADS = ("linear", "mlp")
#: Fewer decisive held-out pairs than this: no accuracy is reported (it would be noise).
MIN_HELDOUT = 5


# ---- the head -----------------------------------------------------------------------------------


class PreferenceHead(torch.nn.Module):
    """standardise -> Linear(F, 1, bias=False) or Linear(F, hidden) -> GELU -> Linear(hidden, 1).

    F = D (image only) or 2 D (with the prompt). Input [N, F] features, output [N] scores (logits).
    """

    def __init__(self, dim: int, use_prompt: bool = False, hidden: int = 0, seed: int = 0):
        super().__init__()
        self.dim = int(dim)
        self.use_prompt = bool(use_prompt)
        self.hidden = int(hidden)
        width = 2 * self.dim if self.use_prompt else self.dim
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        g = torch.Generator().manual_seed(seed)
        if self.hidden > 0:
            self.net = torch.nn.Sequential(torch.nn.Linear(width, self.hidden), torch.nn.GELU(),
                                           torch.nn.Linear(self.hidden, 1))
            with torch.no_grad():
                for m in self.net:
                    if isinstance(m, torch.nn.Linear):
                        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.in_features))
                        m.bias.zero_()
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(width, 1, bias=False))
            with torch.no_grad():
                self.net[0].weight.zero_()

    @property
    def kind(self) -> str:
        return "mlp" if self.hidden > 0 else "linear"

    def features(self, image_emb: torch.Tensor, text_emb: torch.Tensor | None = None) -> torch.Tensor:
        """[N, D] image embeddings (+ [N, D] prompt embeddings) -> [N, F] features."""
        if not self.use_prompt:
            return image_emb
        if text_emb is None:
            raise RewardError("preference: this model uses the prompt; pass the prompts' text embeddings")
        return torch.cat([image_emb, image_emb * text_emb], dim=-1)

    def set_standardisation(self, feats: torch.Tensor) -> None:
        std = feats.std(dim=0, unbiased=False) if feats.shape[0] > 1 else torch.ones_like(feats[0])
        # Dead dimensions must not be blown up into noise: floor the spread at a small share of the typical one.
        std = std.clamp_min(max(1e-3 * float(std.mean()), 1e-8))
        self.feature_mean.copy_(feats.mean(dim=0))
        self.feature_std.copy_(std)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = (feats - self.feature_mean) / self.feature_std
        return self.net(x).squeeze(-1)

    def penalty(self) -> torch.Tensor:
        return sum(m.weight.square().sum() for m in self.net if isinstance(m, torch.nn.Linear))


def bradley_terry_loss(score_left: torch.Tensor, score_right: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(s_left - s_right) against targets in [0, 1] ([N] each)."""
    return F.binary_cross_entropy_with_logits(score_left - score_right, target)


def fit_head(head: PreferenceHead, left: torch.Tensor, right: torch.Tensor, target: torch.Tensor,
             weight_decay: float = 1e-2, max_iter: int = 300, restandardise: bool = True,
             position_bias: bool = True) -> tuple[float, float]:
    """Fit `head` in place on feature rows left/right [N, F] and targets [N]; returns (final loss,
    position-bias logit b). With `position_bias` a free logit b (not decayed, not part of the
    head) joins the pick probability, sigmoid(s_left - s_right + b); else b = 0.

    Full-batch L-BFGS (strong Wolfe line search) from the head's current weights, so a refit
    after a few new picks starts from the previous solution.
    """
    if left.shape[0] == 0:
        raise RewardError("preference: no picks to fit (every pair was skipped or its images are missing)")
    # Nodes run under inference mode and rewards freeze their modules: fit in a normal autograd
    # context on plain copies, and leave the head frozen again for scoring.
    with torch.inference_mode(False), torch.enable_grad():
        left, right, target = (t.detach().float().clone() for t in (left, right, target))
        if restandardise:
            with torch.no_grad():
                head.set_standardisation(torch.cat([left, right]))
        head.train().requires_grad_(True)
        bias = torch.zeros((), requires_grad=position_bias)
        params = list(head.parameters()) + ([bias] if position_bias else [])
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                                tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = bradley_terry_loss(head(left) + bias, head(right), target) + weight_decay * head.penalty()
            loss.backward()
            return loss

        try:
            opt.step(closure)
        finally:
            head.eval().requires_grad_(False)
        with torch.no_grad():
            return float(bradley_terry_loss(head(left) + bias, head(right), target)), float(bias)


def left_share(target: torch.Tensor) -> float | None:
    """Share of the decisive picks (target 0 or 1) that chose the left image: the accuracy of always
    answering "left" (1 - it: always "right"); None without decisive picks."""
    decisive = (target - 0.5).abs() > 0.25
    return float((target[decisive] > 0.5).float().mean()) if bool(decisive.any()) else None


def pair_accuracy(head: PreferenceHead, left: torch.Tensor, right: torch.Tensor, target: torch.Tensor,
                  position_bias: float = 0.0) -> tuple[float | None, int]:
    """Share of decisive pairs (target 0 or 1) whose pick the model predicts, and their count: the
    left image when s_left - s_right + position_bias > 0 (the logit b of `fit_head`; 0: the
    preferred image is the one the head scores higher)."""
    decisive = (target - 0.5).abs() > 0.25
    n = int(decisive.sum())
    if n == 0:
        return None, 0
    with torch.no_grad():
        d = head(left[decisive]) - head(right[decisive]) + position_bias
    correct = (d > 0) == (target[decisive] > 0.5)
    return float(correct.float().mean()), n


# ---- fitting from picks ---------------------------------------------------------------------------


@dataclass
class FitReport:
    """What a fit saw and how well it predicts held-out picks."""

    pairs: int = 0  # pairs fitted (human picks, not skipped, both images readable)
    heldout_pairs: int = 0  # decisive held-out pairs the accuracy is measured on
    heldout_accuracy: float | None = None
    train_accuracy: float | None = None
    loss: float = float("nan")
    skipped: int = 0  # "skip" picks (no information)
    model_scored: int = 0  # records written by the model in mixed mode (not learned from)
    missing_images: list[str] = field(default_factory=list)
    seconds: float = 0.0
    decisive_pairs: int = 0  # pairs picked left or right (not "same")
    left_share: float | None = None  # share of the decisive picks that chose left
    #: always-left baseline on the held-out pairs the accuracy is measured on (always-right: 1 - it)
    heldout_always_left: float | None = None
    #: held-out pairs whose preferred image the image score alone ranks higher (what the reward
    #: uses; chance: 50 % whatever the position habit)
    heldout_score_accuracy: float | None = None
    position_bias: float = 0.5  # P(left) between two images the model scores alike: sigmoid(b)
    warnings: list[str] = field(default_factory=list)

    @property
    def heldout_baseline(self) -> float | None:
        """The better of always-left and always-right on the held-out pairs."""
        a = self.heldout_always_left
        return None if a is None else max(a, 1.0 - a)

    @property
    def beats_baseline(self) -> bool:
        """Measured held-out accuracy above always-left and always-right: the picks are predicted
        better than by position alone."""
        return self.heldout_accuracy is not None and self.heldout_accuracy > (self.heldout_baseline or 0.5)

    @property
    def reliability(self) -> float:
        """How much the image score's guesses are worth next to real picks: 2 a - 1 for a held-out
        score accuracy a above chance (0.5 -> 0, 1 -> 1), 0 when it is not measured or not above
        chance by two standard errors (0.5 + 1 / sqrt(n) on n held-out pairs)."""
        a, n = self.heldout_score_accuracy, self.heldout_pairs
        if a is None or n < MIN_HELDOUT or a <= 0.5 + 1.0 / math.sqrt(n):
            return 0.0
        return 2.0 * a - 1.0

    def summary(self) -> str:
        acc = (f"held-out accuracy {100 * self.heldout_accuracy:.1f} % on {self.heldout_pairs} pairs"
               if self.heldout_accuracy is not None
               else f"held-out accuracy not measured (fewer than {MIN_HELDOUT} decisive held-out pairs)")
        if self.heldout_accuracy is not None and self.heldout_always_left is not None:
            acc += f" (always-left baseline {100 * self.heldout_always_left:.1f} %"
            if self.heldout_score_accuracy is not None:
                acc += f"; the image score alone {100 * self.heldout_score_accuracy:.1f} %"
            acc += ")"
        text = f"preference model fitted on {self.pairs} picks: {acc}"
        if self.train_accuracy is not None:
            text += f", training accuracy {100 * self.train_accuracy:.1f} %"
        text += (f"; position bias: left chosen {100 * self.position_bias:.0f} % of the time between images it scores "
                 "alike (absorbed, not in the reward)")
        extras = []
        if self.skipped:
            extras.append(f"{self.skipped} skipped")
        if self.model_scored:
            extras.append(f"{self.model_scored} model-scored ignored")
        if self.missing_images:
            extras.append(f"{len(self.missing_images)} with missing images")
        if extras:
            text += f" ({', '.join(extras)})"
        for w in self.warnings:
            text += f"\nwarning: {w}"
        return text


#: |P(left between alike images) - 0.5| above this is reported as a strong position bias.
STRONG_POSITION_BIAS = 0.15


def fit_warnings(r: FitReport) -> list[str]:
    """What a person should know before training on a fitted model (empty when nothing)."""
    out = []
    if r.left_share in (0.0, 1.0):
        side = "left" if r.left_share == 1.0 else "right"
        out.append(f"every one of the {r.decisive_pairs} decisive picks chose the {side} image: a habit of position as "
                   "much as a taste; the fit puts it into the position bias and the image score learns little. Check "
                   "the picking (a stuck key?) or pick more pairs.")
    elif abs(r.position_bias - 0.5) > STRONG_POSITION_BIAS:
        side = "left" if r.position_bias > 0.5 else "right"
        out.append(f"strong position bias: the {side} image was chosen {100 * max(r.position_bias, 1 - r.position_bias):.0f} % "
                   "of the time between images the model scores alike (absorbed by the fit, not part of the reward)")
    if r.heldout_accuracy is not None and r.reliability == 0.0:
        out.append(f"the image score ranks only {100 * (r.heldout_score_accuracy or 0):.1f} % of the held-out picks right "
                   f"(chance 50 %; {r.heldout_pairs} pairs): the model has not learned the taste yet; pick more pairs")
    elif r.heldout_accuracy is None:
        out.append(f"held-out accuracy not measured ({r.pairs} picks, {r.heldout_pairs} decisive held out; needs "
                   f"{MIN_HELDOUT}): nothing shows yet that the model predicts the picks")
    return out
