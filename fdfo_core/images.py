"""Image grids and small line plots with PIL only (no plotting library dependency)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] -> RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def image_grid(
    images: torch.Tensor,
    ncol: int,
    labels: Sequence[str] | None = None,
    scale: int = 1,
    pad: int = 2,
    label_height: int = 14,
) -> Image.Image:
    """Tile [N, 3, H, W] images row by row; optional one-line label under each tile."""
    n, _, h, w = images.shape
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    th, tw = h * scale, w * scale
    lh = label_height if labels else 0
    grid = Image.new("RGB", (ncol * (tw + pad) + pad, nrow * (th + lh + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = _font()
    for i in range(n):
        r, c = divmod(i, ncol)
        x, y = pad + c * (tw + pad), pad + r * (th + lh + pad)
        tile = to_pil(images[i])
        if scale != 1:
            tile = tile.resize((tw, th), Image.NEAREST)
        grid.paste(tile, (x, y))
        if labels:
            draw.text((x + 1, y + th + 1), str(labels[i])[: max(4, tw // 6)], fill=(0, 0, 0), font=font)
    return grid


def side_by_side(left: Image.Image, right: Image.Image, titles: tuple[str, str] = ("base", "LoRA"), gap: int = 12) -> Image.Image:
    """Two images next to each other with a title above each."""
    th = 18
    out = Image.new("RGB", (left.width + right.width + gap, max(left.height, right.height) + th), (255, 255, 255))
    out.paste(left, (0, th))
    out.paste(right, (left.width + gap, th))
    draw = ImageDraw.Draw(out)
    font = _font(13)
    draw.text((4, 2), titles[0], fill=(0, 0, 0), font=font)
    draw.text((left.width + gap + 4, 2), titles[1], fill=(0, 0, 0), font=font)
    return out


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-12:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _band_limits(y: float, b: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(b, (tuple, list)):
        return float(b[0]), float(b[1])
    return float(y) - float(b), float(y) + float(b)


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    bands: Mapping[str, Sequence[float | tuple[float, float]]] | None = None,
    size: tuple[int, int] = (640, 400),
) -> Image.Image:
    """Lines (x, y) per named series, optional band per series, axes with ticks and a legend.

    A band entry is a half-width b (the band is y +- b) or a (low, high) pair of y values (an
    asymmetric interval such as a bootstrap one)."""
    w, h = size
    left, right, top, bottom = 64, 16, 40, 44
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(11)
    xs = [float(x) for xv, _ in series.values() for x in xv]
    ys = [float(y) for _, yv in series.values() for y in yv]
    for name, band in (bands or {}).items():
        for y, b in zip(series[name][1], band):
            ys += list(_band_limits(y, b))
    if not xs:
        xs, ys = [0.0, 1.0], [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    ypad = 0.05 * (y1 - y0)
    y0, y1 = y0 - ypad, y1 + ypad

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (1 - (y - y0) / (y1 - y0)) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for t in _nice_ticks(y0, y1):
        _, yy = px(x0, t)
        draw.line([left - 4, yy, left, yy], fill=(0, 0, 0))
        draw.line([left, yy, w - right, yy], fill=(235, 235, 235))
        draw.text((4, yy - 6), f"{t:.4g}", fill=(0, 0, 0), font=font)
    for t in _nice_ticks(x0, x1):
        xx, _ = px(t, y0)
        draw.line([xx, h - bottom, xx, h - bottom + 4], fill=(0, 0, 0))
        draw.text((xx - 10, h - bottom + 6), f"{t:.4g}", fill=(0, 0, 0), font=font)
    # Every band first, translucent, then every line: no series hides another.
    for i, (name, (xv, yv)) in enumerate(series.items()):
        if bands and name in bands and len(xv) > 1:
            limits = [_band_limits(y, b) for y, b in zip(yv, bands[name])]
            upper = [px(float(x), hi) for x, (_, hi) in zip(xv, limits)]
            lower = [px(float(x), lo) for x, (lo, _) in zip(xv, limits)]
            layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
            ImageDraw.Draw(layer).polygon(upper + lower[::-1], fill=(*PALETTE[i % len(PALETTE)], 56))
            img.paste(Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB"))
    draw = ImageDraw.Draw(img)
    for i, (name, (xv, yv)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = [px(float(x), float(y)) for x, y in zip(xv, yv)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for p in pts if len(pts) <= 60 else []:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        draw.line([left + 10, top + 10 + 14 * i, left + 30, top + 10 + 14 * i], fill=colour, width=3)
        draw.text((left + 34, top + 4 + 14 * i), name, fill=(0, 0, 0), font=font)
    draw.text((left, 4), title, fill=(0, 0, 0), font=_font(13))
    draw.text(((w - len(xlabel) * 6) / 2, h - 16), xlabel, fill=(0, 0, 0), font=font)
    draw.text((4, top - 14), ylabel, fill=(0, 0, 0), font=font)
    return img


def save_png(image: Image.Image, path: str | Path, what: str = "image", make_folder: bool = False) -> Path:
    """Write a PNG atomically (storage: a failed write raises StorageError, nothing is left
    behind). make_folder: create the file's folder when its parent exists (a run's samples/)."""
    from .storage import atomic_write

    return atomic_write(path, lambda f: image.save(f, format="PNG"), what, make_folder=make_folder)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL -> [H, W, 3] float in [0, 1] (ComfyUI's IMAGE layout without the batch axis)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
