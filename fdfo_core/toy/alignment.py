"""Toy prompt alignment: does the image show what the toy caption says? Plain image analysis, no weights.

Per image (resampled to 64x64):
1. every pixel gets its nearest palette colour, or none if it is far from all of them;
2. the background is the commonest colour on the 2-pixel border ring;
3. for every other colour, the mask is opened (3x3 erode, then dilate) to drop thin anti-aliasing
   fringes and split into 8-connected components, which then take back their neighbouring mask
   pixels (a triangle's apex); components under MIN_AREA pixels are noise;
4. each component is a triangle if its top quarter holds much less than its bottom quarter,
   else a square if its bounding-box corners are filled, else a circle.

Then the caption's checks, each in [0, 1], are averaged (graded, so RL gets signal for partly
right images):
- background: fraction of the border ring in the named background colour;
- per group: its colour is present (0/1); its count: min(found, n) / max(found, n) where found
  counts components of the right colour and shape;
- with a relation: fraction of (A, B) component pairs whose centres are in the named order;
- no extras: fraction of components whose colour and shape the caption names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..rewards.base import Reward, RewardError
from ..rewards.registry import register_reward
from .grammar import COLOURS, SceneSpec, parse_caption

ANALYSIS_SIZE = 64
#: Pixels farther than this (0-255 RGB distance) from every palette colour are left unlabelled;
#: about half the smallest distance between two palette colours.
MAX_COLOUR_DISTANCE = 80.0
MIN_AREA = 16
BORDER = 2
_PALETTE_NAMES = list(COLOURS)
_PALETTE = torch.tensor([COLOURS[c] for c in _PALETTE_NAMES], dtype=torch.float32)


@dataclass(frozen=True)
class Component:
    colour: str
    shape: str
    area: int
    cx: float
    cy: float


def _label_components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of a bool mask [H, W] (0 = background, labels arbitrary ints)."""
    h, w = mask.shape
    idx = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, 1, h, w)
    m = mask.reshape(1, 1, h, w).float()
    lab = idx * m
    while True:  # propagate the largest index through each component
        new = F.max_pool2d(lab, 3, stride=1, padding=1) * m
        if torch.equal(new, lab):
            return lab[0, 0].long()
        lab = new


def _classify(crop: torch.Tensor) -> str:
    """Shape of one component from its bounding-box crop (bool [h, w])."""
    h, w = crop.shape
    q = max(1, round(h / 4))
    top, bottom = crop[:q].float().sum(), crop[h - q :].float().sum()
    if top < 0.5 * bottom:
        return "triangle"
    c = max(1, round(min(h, w) / 5))
    corners = torch.stack([crop[:c, :c].float().mean(), crop[:c, w - c :].float().mean(), crop[h - c :, :c].float().mean(), crop[h - c :, w - c :].float().mean()])
    return "square" if corners.mean() > 0.5 else "circle"


def analyse_image(image: torch.Tensor) -> tuple[torch.Tensor, list[Component], str | None]:
    """Segment one image (float [3, H, W] in [0, 1]).

    Returns (palette index per pixel [64, 64], -1 where no colour is near; the components; the
    background colour name or None).
    """
    x = image.float().unsqueeze(0)
    if x.shape[-2:] != (ANALYSIS_SIZE, ANALYSIS_SIZE):
        x = F.interpolate(x, size=(ANALYSIS_SIZE, ANALYSIS_SIZE), mode="area")
    px = x[0].permute(1, 2, 0).reshape(-1, 3) * 255.0
    dist = torch.cdist(px, _PALETTE.to(px))
    dmin, lab = dist.min(dim=1)
    lab = torch.where(dmin < MAX_COLOUR_DISTANCE, lab, torch.full_like(lab, -1)).reshape(ANALYSIS_SIZE, ANALYSIS_SIZE)

    ring = torch.ones_like(lab, dtype=torch.bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    ring_labels = lab[ring]
    ring_labels = ring_labels[ring_labels >= 0]
    bg_index = int(torch.mode(ring_labels).values) if ring_labels.numel() else -1
    background = _PALETTE_NAMES[bg_index] if bg_index >= 0 else None

    comps: list[Component] = []
    for k, name in enumerate(_PALETTE_NAMES):
        if k == bg_index:
            continue
        mask = lab == k
        if int(mask.sum()) < MIN_AREA:
            continue
        m = mask.float()[None, None]
        opened = F.max_pool2d(-F.max_pool2d(-m, 3, stride=1, padding=1), 3, stride=1, padding=1)[0, 0] > 0.5
        opened &= mask
        labels = _label_components(opened)
        # Give each component back the fringe pixels the opening removed (e.g. a triangle's apex).
        labels = torch.where(mask, F.max_pool2d(labels[None, None].float(), 3, stride=1, padding=1)[0, 0].long(), 0)
        for value in labels.unique():
            if value == 0:
                continue
            cm = labels == value
            area = int(cm.sum())
            if area < MIN_AREA:
                continue
            ys, xs = torch.nonzero(cm, as_tuple=True)
            crop = cm[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            comps.append(Component(name, _classify(crop), area, float(xs.float().mean()) + 0.5, float(ys.float().mean()) + 0.5))
    return lab, comps, background


def _relation_holds(rel: str, a: Component, b: Component) -> bool:
    if rel == "above":
        return a.cy < b.cy
    if rel == "below":
        return a.cy > b.cy
    if rel == "left of":
        return a.cx < b.cx
    if rel == "right of":
        return a.cx > b.cx
    raise ValueError(f"unknown relation {rel!r}")


def alignment_checks(image: torch.Tensor, spec: SceneSpec | str) -> dict[str, float]:
    """Every check of one image (float [3, H, W] in [0, 1]) against a caption or `SceneSpec`."""
    if isinstance(spec, str):
        parsed = parse_caption(spec)
        if parsed is None:
            raise RewardError(
                f"toy_alignment: cannot parse {spec!r}; toy captions look like 'two red circles above a "
                "blue square on a yellow background' (see fdfo_core/toy/grammar.py)"
            )
        spec = parsed
    lab, comps, _ = analyse_image(image)
    ring = torch.ones_like(lab, dtype=torch.bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    bg_k = _PALETTE_NAMES.index(spec.background)
    checks = {"background": float((lab[ring] == bg_k).float().mean())}
    matched = []
    for i, g in enumerate(spec.groups):
        of_colour = [c for c in comps if c.colour == g.colour]
        good = [c for c in of_colour if c.shape == g.shape]
        checks[f"group{i}_colour"] = 1.0 if of_colour else 0.0
        checks[f"group{i}_count"] = min(len(good), g.count) / max(len(good), g.count)
        matched.append(good or of_colour)
    if spec.relation is not None:
        a, b = matched
        pairs = [(x, y) for x in a for y in b]
        checks["relation"] = sum(_relation_holds(spec.relation, x, y) for x, y in pairs) / len(pairs) if pairs else 0.0
    named = {(g.colour, g.shape) for g in spec.groups}
    checks["no_extras"] = sum((c.colour, c.shape) in named for c in comps) / len(comps) if comps else 1.0
    return checks


def alignment_score(image: torch.Tensor, spec: SceneSpec | str) -> float:
    """Mean of `alignment_checks`: 1 when everything the caption says is in the image."""
    checks = alignment_checks(image, spec)
    return sum(checks.values()) / len(checks)


class ToyAlignment(Reward):
    """Fraction of a toy caption's checks (background, colours, counts, relation, no extras) the image passes."""

    name = "toy_alignment"

    def _score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        images = images.cpu()
        return torch.tensor([alignment_score(im, p) for im, p in zip(images, prompts)])


@register_reward("toy_alignment", "toy caption alignment: colours, shapes, counts, positions, background (0 to 1)")
def _toy_alignment(micro_batch: int = 64, device=None) -> Reward:
    return ToyAlignment(micro_batch=micro_batch, device=device)
