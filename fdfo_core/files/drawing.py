"""Image grids and small line plots with PIL only (no plotting library dependency)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # matplotlib tab10


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] -> RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def text_width(text: str, font: ImageFont.ImageFont) -> float:
    if hasattr(font, "getlength"):  # Pillow >= 9.2
        return font.getlength(text)
    return font.getsize(text)[0]  # pragma: no cover


def fit_text(text: str, width: int, font: ImageFont.ImageFont) -> str:
    """`text` shortened with an ellipsis so it fits `width` pixels in `font`."""
    text = str(text)
    if text_width(text, font) <= width:
        return text
    while text and text_width(text + "...", font) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def wrap_text(text: str, width: int, max_lines: int, font: ImageFont.ImageFont | None = None) -> list[str]:
    """`text` broken at spaces into at most `max_lines` lines of at most `width` pixels; when it
    does not fit, the last line ends with an ellipsis (a word longer than a line is cut too)."""
    font = font or _font()
    lines: list[str] = []
    for word in str(text).split():
        if lines and text_width(f"{lines[-1]} {word}", font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:]) + " ..."]
    return [fit_text(line, width, font) for line in lines]


def caption_label(caption: str, value: str, tile_width: int, caption_lines: int = 3) -> str:
    """A grid label: the caption wrapped to the tile's width (shortened if needed), then `value`."""
    return "\n".join(wrap_text(caption, tile_width - 2, caption_lines) + [value])


LINE_HEIGHT = 13


def image_grid(
    images: torch.Tensor,
    ncol: int,
    labels: Sequence[str] | None = None,
    scale: int = 1,
    pad: int = 2,
    label_height: int | None = None,
) -> Image.Image:
    """Tile [N, 3, H, W] images row by row, with an optional label under each tile.

    A label may have several lines ("\n"); each line is shortened with an ellipsis to the tile's
    width. The label area is as tall as the longest label needs unless `label_height` is given."""
    n, _, h, w = images.shape
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    th, tw = h * scale, w * scale
    font = _font()
    lines = [str(label).split("\n") for label in labels] if labels else []
    if label_height is None:
        label_height = (LINE_HEIGHT * max(len(x) for x in lines) + 2) if lines else 0
    lh = label_height if labels else 0
    grid = Image.new("RGB", (ncol * (tw + pad) + pad, nrow * (th + lh + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, ncol)
        x, y = pad + c * (tw + pad), pad + r * (th + lh + pad)
        tile = to_pil(images[i])
        if scale != 1:
            tile = tile.resize((tw, th), Image.NEAREST)
        grid.paste(tile, (x, y))
        for k, line in enumerate(lines[i] if lines else []):
            draw.text((x + 1, y + th + 1 + LINE_HEIGHT * k), fit_text(line, tw - 2, font), fill=(0, 0, 0), font=font)
    return grid


def with_header(image: Image.Image, lines: Sequence[str], size: int = 14, pad: int = 4) -> Image.Image:
    """`image` with lines of text in a strip above it (at least as wide as the longest line)."""
    font = _font(size)
    width = max([image.width] + [int(text_width(line, font)) + 2 * pad for line in lines])
    top = len(lines) * (size + 4) + pad
    out = Image.new("RGB", (width, image.height + top), (255, 255, 255))
    out.paste(image, (0, top))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        draw.text((pad, pad + k * (size + 4)), line, fill=(0, 0, 0), font=font)
    return out


def side_by_side(left: Image.Image, right: Image.Image, titles: tuple[str, str] = ("base", "LoRA"), gap: int = 12,
                 vertical: bool = False) -> Image.Image:
    """Two images next to each other (or the first above the second) with a title above each."""
    th = 18
    if vertical:
        out = Image.new("RGB", (max(left.width, right.width), left.height + right.height + 2 * th + gap), (255, 255, 255))
        out.paste(left, (0, th))
        out.paste(right, (0, left.height + gap + 2 * th))
        spots = [(4, 2), (4, left.height + gap + th + 2)]
    else:
        out = Image.new("RGB", (left.width + right.width + gap, max(left.height, right.height) + th), (255, 255, 255))
        out.paste(left, (0, th))
        out.paste(right, (left.width + gap, th))
        spots = [(4, 2), (left.width + gap + 4, 2)]
    draw = ImageDraw.Draw(out)
    font = _font(13)
    for spot, title in zip(spots, titles):
        draw.text(spot, title, fill=(0, 0, 0), font=font)
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
    xlim: tuple[float, float] | None = None,
    vlines: Mapping[str, float] | None = None,
    hlines: Mapping[str, float] | None = None,
) -> Image.Image:
    """Lines (x, y) per named series, optional band per series, axes with ticks and a legend.

    A band entry is a half-width b (the band is y +- b) or a (low, high) pair of y values (an
    asymmetric interval such as a bootstrap one). `xlim` fixes the x range (to align stacked
    panels); `vlines` / `hlines` draw labelled dashed grey marks at x = value / y = value (a chosen
    epoch, a threshold). None values in a series are gaps (the point is skipped)."""
    keep = {k: [y is not None and math.isfinite(float(y)) for y in v[1]] for k, v in series.items()}
    series = {k: ([x for x, ok in zip(v[0], keep[k]) if ok], [y for y, ok in zip(v[1], keep[k]) if ok])
              for k, v in series.items()}
    bands = {k: [0.0 if b is None else b for b, ok in zip(v, keep[k]) if ok] for k, v in (bands or {}).items()}
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
    ys += [float(v) for v in (hlines or {}).values()]
    if xlim is not None:
        xs = xs + [float(xlim[0]), float(xlim[1])]
    if not xs:
        xs = [0.0, 1.0]
    if not ys:
        ys = [0.0, 1.0]
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
    grey = (120, 120, 120)
    for label, xv in (vlines or {}).items():
        xx, _ = px(float(xv), y0)
        for yy in range(top, h - bottom, 8):
            draw.line([xx, yy, xx, min(yy + 4, h - bottom)], fill=grey, width=1)
        draw.text((xx + 3, h - bottom - 14), label, fill=grey, font=font)
    for label, yv in (hlines or {}).items():
        _, yy = px(x0, float(yv))
        for xx in range(left, w - right, 8):
            draw.line([xx, yy, min(xx + 4, w - right), yy], fill=grey, width=1)
        draw.text((w - right - 6 * len(label) - 4, yy - 13), label, fill=grey, font=font)
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


def stack_vertical(images: Sequence[Image.Image]) -> Image.Image:
    """Panels one above the other (left-aligned, white background): one figure of several plots."""
    out = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)), (255, 255, 255))
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out


def save_png(image: Image.Image, path: str | Path, what: str = "image", make_folder: bool = False) -> Path:
    """Write a PNG atomically (storage: a failed write raises StorageError, nothing is left
    behind). make_folder: create the file's folder when its parent exists (a run's samples/)."""
    from .storage import atomic_write

    return atomic_write(path, lambda f: image.save(f, format="PNG"), what, make_folder=make_folder)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL -> [H, W, 3] float in [0, 1] (ComfyUI's IMAGE layout without the batch axis)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def reward_curve_image(history: Sequence[dict[str, Any]], title: str = "reward during training",
                       size: tuple[int, int] | None = None, guardrails=None):
    """The run's curves as one figure (PIL image).

    Without held-out evaluation: the training pairs' mean reward per epoch (+- standard error).
    With `guardrails` (a `fdfo_core.run.guardrails.Guardrails`, read duck-typed: nothing here imports it), stacked panels sharing the epoch axis:
    training and held-out reward; the judge (when set); diversity across seeds and drift from the
    base model; the held-out images' statistics (files/image_stats.py, each over its range). Epoch 0
    is the base model; dashed lines mark the best LoRA's epoch, an early stop, and the diversity
    floor of early stop.

    `size` (width, height px) is the whole figure's (the panels share its height: the ComfyUI node
    lays its outputs out for a known size); None: 640 x 400 for one panel, 640 x 300 per panel.
    """
    # An epoch without any reward (every pair of a picking run skipped) has no point on the curve.
    history = [m for m in history if math.isfinite(m["reward_mean"])]
    xs = [m["epoch"] for m in history]
    train = {"reward (train pairs)": (xs, [m["reward_mean"] for m in history])}
    train_band = {"reward (train pairs)": [m["reward_std"] / max(1, 2 * m["pairs"]) ** 0.5 for m in history]}
    evs = list(guardrails.evaluations) if guardrails is not None else []
    if not evs:
        return line_plot(train, bands=train_band, title=title, xlabel="epoch", ylabel="reward", size=size or (640, 400))
    ex = [ev.epoch for ev in evs]
    xlim = (0, max(ex + xs))
    marks = {}
    if guardrails.best_lora_epoch is not None:
        marks[f"best {guardrails.best_lora_epoch}"] = guardrails.best_lora_epoch
    if guardrails.stop_epoch is not None and guardrails.stop_epoch > 0:
        marks[f"stop {guardrails.stop_epoch}"] = guardrails.stop_epoch
    with_stats = any(getattr(ev, "image_stats", None) for ev in evs)
    n_panels = (3 if guardrails.judge is not None else 2) + with_stats
    size = (size[0], size[1] // n_panels) if size is not None else (640, 300)
    held = {}, {}
    if any(ev.heldout_reward is not None for ev in evs):  # None: a pairwise reward (human picks)
        held = ({"held-out reward": (ex, [ev.heldout_reward for ev in evs])},
                {"held-out reward": [ev.heldout_reward_se for ev in evs]})
    panels = [line_plot(
        {**train, **held[0]},
        bands={**train_band, **held[1]},
        title=title, xlabel="epoch", ylabel="reward", size=size, xlim=xlim, vlines=marks,
    )]
    if guardrails.judge is not None:
        panels.append(line_plot(
            {f"judge: {guardrails.judge_spec}": (ex, [ev.judge for ev in evs])},
            bands={f"judge: {guardrails.judge_spec}": [ev.judge_se for ev in evs]},
            title="held-out judge (mean +- s.e.)", xlabel="epoch", ylabel="judge", size=size, xlim=xlim, vlines=marks,
        ))
    floor = {}
    cfg, base = guardrails.config, guardrails.base
    if cfg.early_stop_min_diversity > 0 and base is not None and base.diversity:
        floor = {f"early-stop floor ({cfg.early_stop_min_diversity:g} x base)": cfg.early_stop_min_diversity * base.diversity}
    panels.append(line_plot(
        {"diversity across seeds": (ex, [ev.diversity for ev in evs]), "drift from base": (ex, [ev.drift for ev in evs])},
        title=f"held-out diversity and drift ({guardrails.space.name} distance)", xlabel="epoch", ylabel="distance",
        size=size, xlim=xlim, vlines=marks, hlines=floor,
    ))
    if with_stats:
        from .image_stats import STAT_NAMES, STAT_RANGES

        labels = {"near_black": "near-black share", "near_white": "near-white share", "saturation": "saturation",
                  "colour_entropy": f"colour entropy / {STAT_RANGES['colour_entropy']:g} bits",
                  "edge_density": "edge density"}
        panels.append(line_plot(
            {labels[k]: (ex, [(ev.image_stats or {}).get(k) / STAT_RANGES[k] if (ev.image_stats or {}).get(k) is not None
                              else None for ev in evs]) for k in STAT_NAMES},
            title="held-out image statistics (epoch 0: the base model)", xlabel="epoch", ylabel="share",
            size=size, xlim=xlim, vlines=marks,
        ))
    return stack_vertical(panels)
