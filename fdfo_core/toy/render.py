"""Procedural renderer: a `SceneSpec` plus a seed -> a small anti-aliased RGB image.

Layout rules (what the captions promise, and what the alignment reward checks):
- with a relation "A above B", every shape of A lies in a band above every shape of B (a random
  split line near the middle); likewise below / left of / right of;
- shapes never overlap and keep a margin from each other and from the border;
- squares are axis-aligned, triangles point up; each group has one (slightly jittered) colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grammar import COLOURS, SceneSpec

#: Side of a shape's bounding box as a fraction of the image side.
MIN_SIZE, MAX_SIZE = 10 / 64, 15 / 64
#: Free space between shapes, and between shapes and the border, as a fraction of the side.
GAP, MARGIN = 3 / 64, 2 / 64
#: Standard deviation of the per-group colour jitter, in 0-255 units.
COLOUR_JITTER = 6.0


@dataclass(frozen=True)
class PlacedShape:
    """One drawn shape: bounding box in pixels of the output image (x0, y0, side)."""

    group: int
    shape: str
    colour: str
    x0: float
    y0: float
    side: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.x0 + self.side / 2, self.y0 + self.side / 2


def _regions(spec: SceneSpec, size: int, rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """Per group, the box (x0, y0, x1, y1) its shapes must stay inside."""
    m = MARGIN * size
    full = (m, m, size - m, size - m)
    if spec.relation is None:
        return [full]
    split = size * rng.uniform(0.42, 0.58)
    half_gap = GAP * size / 2
    first = {"above": (m, m, size - m, split - half_gap), "left of": (m, m, split - half_gap, size - m)}
    second = {"above": (m, split + half_gap, size - m, size - m), "left of": (split + half_gap, m, size - m, size - m)}
    if spec.relation in ("above", "left of"):
        return [first[spec.relation], second[spec.relation]]
    if spec.relation == "below":
        return [second["above"], first["above"]]
    if spec.relation == "right of":
        return [second["left of"], first["left of"]]
    raise ValueError(f"unknown relation {spec.relation!r}")


def layout(spec: SceneSpec, rng: np.random.Generator, size: int = 64) -> list[PlacedShape]:
    """Random non-overlapping placement of every shape of `spec` (deterministic given `rng`)."""
    regions = _regions(spec, size, rng)
    gap = GAP * size
    lo, hi = MIN_SIZE * size, MAX_SIZE * size
    for _attempt in range(50):
        placed: list[PlacedShape] = []
        ok = True
        for gi, (group, (rx0, ry0, rx1, ry1)) in enumerate(zip(spec.groups, regions)):
            for _ in range(group.count):
                for _try in range(100):
                    side = rng.uniform(lo, hi)
                    if rx1 - rx0 < side or ry1 - ry0 < side:
                        continue
                    x0 = rng.uniform(rx0, rx1 - side)
                    y0 = rng.uniform(ry0, ry1 - side)
                    if all(
                        x0 + side + gap <= p.x0 or p.x0 + p.side + gap <= x0 or y0 + side + gap <= p.y0 or p.y0 + p.side + gap <= y0
                        for p in placed
                    ):
                        placed.append(PlacedShape(gi, group.shape, group.colour, x0, y0, side))
                        break
                else:
                    ok = False
                    break
            if not ok:
                break
        if ok:
            return placed
        hi = max(lo, hi * 0.9)  # crowded: retry with smaller shapes
    raise RuntimeError(f"could not lay out {spec.caption()!r} in {size}x{size} pixels")


def _coverage(p: PlacedShape, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Boolean mask of supersampled pixel centres (ys, xs) inside the shape."""
    r = p.side / 2
    cx, cy = p.centre
    if p.shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if p.shape == "square":
        return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
    if p.shape == "triangle":  # apex up, base at the bottom of the box
        return (ys <= cy + r) & (np.abs(xs - cx) <= (ys - (cy - r)) / 2)
    raise ValueError(f"unknown shape {p.shape!r}")


def render_shapes(
    shapes: list[PlacedShape],
    background: str,
    rng: np.random.Generator,
    size: int = 64,
    supersample: int = 4,
) -> np.ndarray:
    """Draw `shapes` on a flat background. Returns uint8 [size, size, 3].

    Each shape is drawn at `supersample` x resolution inside its own bounding box and box-filtered
    down, which anti-aliases the edges.
    """
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.asarray(COLOURS[background], np.float32) + rng.normal(0, COLOUR_JITTER, 3)
    group_colour: dict[int, np.ndarray] = {}
    for p in shapes:
        if p.group not in group_colour:
            group_colour[p.group] = np.asarray(COLOURS[p.colour], np.float32) + rng.normal(0, COLOUR_JITTER, 3)
        x0, y0 = max(int(np.floor(p.x0)), 0), max(int(np.floor(p.y0)), 0)
        x1, y1 = min(int(np.ceil(p.x0 + p.side)) + 1, size), min(int(np.ceil(p.y0 + p.side)) + 1, size)
        ys = y0 + (np.arange((y1 - y0) * supersample) + 0.5) / supersample
        xs = x0 + (np.arange((x1 - x0) * supersample) + 0.5) / supersample
        inside = _coverage(p, ys[:, None], xs[None, :]).astype(np.float32)
        alpha = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + group_colour[p.group] * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(spec: SceneSpec, seed: int | np.random.Generator, size: int = 64) -> np.ndarray:
    """Render `spec` with a random layout. Same spec and seed -> same uint8 [size, size, 3] image."""
    img, _ = render_with_layout(spec, seed, size)
    return img


def render_with_layout(
    spec: SceneSpec, seed: int | np.random.Generator, size: int = 64
) -> tuple[np.ndarray, list[PlacedShape]]:
    """Like `render`, also returning where every shape was drawn."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shapes = layout(spec, rng, size)
    return render_shapes(shapes, spec.background, rng, size), shapes


def to_tensor_images(images: list[np.ndarray]):
    """uint8 [H, W, 3] arrays -> float32 NCHW torch tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0)
