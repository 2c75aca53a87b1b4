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

from .base import Reward, RewardError
from .registry import register_reward
from ..toy.grammar import COLOURS, SceneSpec, parse_caption

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


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 maximum filter of [M, H, W] integer tensors, zero outside the image (separable)."""
    y = x.clone()
    y[:, 1:] = torch.maximum(y[:, 1:], x[:, :-1])
    y[:, :-1] = torch.maximum(y[:, :-1], x[:, 1:])
    z = y.clone()
    z[:, :, 1:] = torch.maximum(z[:, :, 1:], y[:, :, :-1])
    z[:, :, :-1] = torch.maximum(z[:, :, :-1], y[:, :, 1:])
    return z


def _open(masks: torch.Tensor) -> torch.Tensor:
    """Morphological opening (3x3 erode, then dilate) of bool masks [M, H, W]; the outside does not erode."""
    eroded = _max3x3((~masks).to(torch.uint8)) == 0
    return _max3x3(eroded.to(torch.uint8)) > 0


def _label_components(masks: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of bool masks [M, H, W] (0 = outside; a label is the largest
    flat pixel index + 1 of its component)."""
    m, h, w = masks.shape
    inside = masks.to(torch.int32)
    lab = torch.arange(1, h * w + 1, dtype=torch.int32).reshape(1, h, w) * inside
    while True:  # propagate the largest index through each component
        new = _max3x3(lab) * inside
        if torch.equal(new, lab):
            return lab.long()
        lab = new


def _segment(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Palette index per pixel [N, 64, 64] (-1 where no colour is near) and background index [N] (-1 if none)."""
    x = images.float()
    if x.shape[-2:] != (ANALYSIS_SIZE, ANALYSIS_SIZE):
        x = F.interpolate(x, size=(ANALYSIS_SIZE, ANALYSIS_SIZE), mode="area")
    px = x.permute(0, 2, 3, 1).reshape(-1, 3) * 255.0
    dmin, lab = torch.cdist(px, _PALETTE.to(px)).min(dim=1)
    lab = torch.where(dmin < MAX_COLOUR_DISTANCE, lab, torch.full_like(lab, -1)).reshape(-1, ANALYSIS_SIZE, ANALYSIS_SIZE)
    ring = lab[:, _ring_mask()]  # [N, R]
    counts = F.one_hot(ring + 1, len(_PALETTE_NAMES) + 1)[..., 1:].sum(dim=1)  # [N, K], unlabelled dropped
    bg = torch.where(counts.sum(dim=1) > 0, counts.argmax(dim=1), torch.full_like(counts[:, 0], -1))
    return lab, bg


def _ring_mask() -> torch.Tensor:
    ring = torch.ones(ANALYSIS_SIZE, ANALYSIS_SIZE, dtype=torch.bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    return ring


def _components(lab: torch.Tensor, bg: torch.Tensor) -> list[list[Component]]:
    """Components of every non-background colour of every image, all images at once."""
    n, h, w = lab.shape
    k = len(_PALETTE_NAMES)
    colours = torch.arange(k)
    masks = (lab[:, None] == colours[None, :, None, None]) & (colours[None, :] != bg[:, None])[..., None, None]
    masks = masks.reshape(n * k, h, w)
    labels = torch.zeros(masks.shape, dtype=torch.long)
    busy = masks.flatten(1).sum(dim=1) >= MIN_AREA  # most (image, colour) pairs are empty
    if busy.any():
        sub = masks[busy]
        lab = _label_components(_open(sub) & sub)
        # Give each component back the fringe pixels the opening removed (e.g. a triangle's apex).
        labels[busy] = torch.where(sub, _max3x3(lab), 0)

    # Per-component statistics with scatter ops over the labelled pixels.
    mi, ys, xs = torch.nonzero(labels, as_tuple=True)
    out: list[list[Component]] = [[] for _ in range(n)]
    if mi.numel() == 0:
        return out
    keys, inv = torch.unique(mi * (h * w + 1) + labels[mi, ys, xs], return_inverse=True)
    nc = keys.numel()
    area = torch.bincount(inv, minlength=nc)
    ysf, xsf = ys.float(), xs.float()
    cx = torch.bincount(inv, xsf, minlength=nc) / area + 0.5
    cy = torch.bincount(inv, ysf, minlength=nc) / area + 0.5

    def extreme(v, reduce):
        init = torch.full((nc,), h * w if reduce == "amin" else -1, dtype=torch.long)
        return init.scatter_reduce(0, inv, v, reduce=reduce)

    y0, y1, x0, x1 = extreme(ys, "amin"), extreme(ys, "amax"), extreme(xs, "amin"), extreme(xs, "amax")
    bh, bw = y1 - y0 + 1, x1 - x0 + 1
    # Triangles (apex up): the top quarter of the box holds much less than the bottom quarter.
    q = torch.clamp(torch.round(bh / 4).long(), min=1)
    top = torch.bincount(inv, (ys < y0[inv] + q[inv]).float(), minlength=nc)
    bottom = torch.bincount(inv, (ys > y1[inv] - q[inv]).float(), minlength=nc)
    # Squares fill the corners of their box, circles do not.
    c = torch.clamp(torch.round(torch.minimum(bh, bw) / 5).long(), min=1)
    in_corner = ((ys < y0[inv] + c[inv]) | (ys > y1[inv] - c[inv])) & ((xs < x0[inv] + c[inv]) | (xs > x1[inv] - c[inv]))
    corner_fill = torch.bincount(inv, in_corner.float(), minlength=nc) / (4 * c * c)

    owner = (keys // (h * w + 1)).tolist()  # mask index = image * K + colour
    is_tri = (top < 0.5 * bottom).tolist()
    is_square = (corner_fill > 0.5).tolist()
    for j, (a, x, y) in enumerate(zip(area.tolist(), cx.tolist(), cy.tolist())):
        if a < MIN_AREA:
            continue
        shape = "triangle" if is_tri[j] else "square" if is_square[j] else "circle"
        img, colour = divmod(owner[j], k)
        out[img].append(Component(_PALETTE_NAMES[colour], shape, a, x, y))
    return out


def analyse_images(images: torch.Tensor) -> tuple[torch.Tensor, list[list[Component]], list[str | None]]:
    """Segment a batch (float [N, 3, H, W] in [0, 1]).

    Returns (palette index per pixel [N, 64, 64], -1 where no colour is near; per image its
    components; per image the background colour name or None).
    """
    lab, bg = _segment(images)
    names = [_PALETTE_NAMES[int(b)] if b >= 0 else None for b in bg]
    return lab, _components(lab, bg), names


def analyse_image(image: torch.Tensor) -> tuple[torch.Tensor, list[Component], str | None]:
    """`analyse_images` for one image [3, H, W]."""
    lab, comps, names = analyse_images(image[None])
    return lab[0], comps[0], names[0]


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


def _parse(spec: SceneSpec | str) -> SceneSpec:
    if isinstance(spec, SceneSpec):
        return spec
    parsed = parse_caption(spec)
    if parsed is None:
        raise RewardError(
            f"toy_alignment: cannot parse {spec!r}; toy captions look like 'two red circles above a "
            "blue square on a yellow background' (see fdfo_core/toy/grammar.py)"
        )
    return parsed


def _checks(lab: torch.Tensor, comps: list[Component], spec: SceneSpec) -> dict[str, float]:
    bg_k = _PALETTE_NAMES.index(spec.background)
    checks = {"background": float((lab[_ring_mask()] == bg_k).float().mean())}
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


def alignment_checks(image: torch.Tensor, spec: SceneSpec | str) -> dict[str, float]:
    """Every check of one image (float [3, H, W] in [0, 1]) against a caption or `SceneSpec`."""
    spec = _parse(spec)
    lab, comps, _ = analyse_image(image)
    return _checks(lab, comps, spec)


def alignment_scores(images: torch.Tensor, specs: Sequence[SceneSpec | str]) -> torch.Tensor:
    """Mean of the checks per image (float [N, 3, H, W] in [0, 1]): 1 when everything the caption says is there."""
    parsed = [_parse(s) for s in specs]
    lab, comps, _ = analyse_images(images)
    out = []
    for i, spec in enumerate(parsed):
        checks = _checks(lab[i], comps[i], spec)
        out.append(sum(checks.values()) / len(checks))
    return torch.tensor(out, dtype=torch.float32)


def alignment_score(image: torch.Tensor, spec: SceneSpec | str) -> float:
    """`alignment_scores` for one image [3, H, W]."""
    return float(alignment_scores(image[None], [spec])[0])


class ToyAlignment(Reward):
    """Fraction of a toy caption's checks (background, colours, counts, relation, no extras) the image passes."""

    name = "toy_alignment"

    def _score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return alignment_scores(images.cpu(), prompts)


@register_reward("toy_alignment", "toy caption alignment: colours, shapes, counts, positions, background (0 to 1)")
def _toy_alignment(micro_batch: int = 64, device=None) -> Reward:
    return ToyAlignment(micro_batch=micro_batch, device=device)
