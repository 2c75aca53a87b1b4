"""Read image files robustly: whole folders of reference images, or single files named in a record.

Every image comes back as a float32 RGB tensor [3, H, W] in [0, 1], whatever the file holds:

- palette, greyscale (``L``, ``LA``), 16-bit greyscale (``I;16``, ``I``), 32-bit float (``F``),
  CMYK and YCbCr files are converted to RGB (16-bit and float values are scaled, not clipped to
  their low byte as a plain PIL ``convert("RGB")`` would);
- transparent images (RGBA, LA, palette with transparency) are composited over a `background`
  colour (white by default): what a viewer sees, not the arbitrary colour under transparent pixels;
- the EXIF orientation is applied (photos from phones are stored sideways);
- animated files give their first frame;
- very large images are reduced (box filter, then Lanczos) so the shorter side is at most
  `max_side` pixels; encoders use 224 to 518 pixels, so nothing they see is lost.

A file that cannot be read raises `ImageFileError` naming the file and the reason; in a folder,
files whose names do not end in an image extension (``.txt`` notes, ``.DS_Store``) are skipped
and hidden files are ignored, but a file *with* an image extension that fails is an error: a
half-copied reference must not silently drop out of the set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Shorter-side cap applied on reading (pixels).
DEFAULT_MAX_SIDE = 1024


class ImageFileError(ValueError):
    """An image file could not be read; the message names the file and says what to do."""


def _to_rgb_array(img, background: tuple[int, int, int], sixteen_bit: bool = False) -> np.ndarray:
    """PIL image of any mode -> float32 array [H, W, 3] in [0, 1].

    `sixteen_bit`: the file held 16-bit samples (PIL mode I;16*), now in mode "I": scale by 65535.
    """
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if sixteen_bit or mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr / top, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        if grey.max(initial=0) > 1.0:
            grey = grey / 255.0
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        canvas.alpha_composite(rgba)
        img = canvas.convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def read_image(path: str | os.PathLike, max_side: int | None = DEFAULT_MAX_SIDE,
               background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """One image file -> float32 [3, H, W] in [0, 1] (see the module docstring). Raises ImageFileError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"image {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with Image.open(path) as img:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            sixteen_bit = img.mode.startswith("I;16")
            if max_side and min(img.size) > max_side:
                factor = min(img.size) / max_side
                size = (max(1, round(img.width / factor)), max(1, round(img.height / factor)))
                # Resample in a mode PIL filters losslessly: 16-bit as 32-bit integers, palettes as RGB(A).
                if sixteen_bit:
                    img = img.convert("I")
                elif img.mode not in ("RGB", "RGBA", "L", "LA", "I", "F"):
                    img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
                img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            arr = _to_rgb_array(img, background, sixteen_bit=sixteen_bit)
    except UnidentifiedImageError:
        raise ImageFileError(f"{path} is not an image PIL can read (is it really a {path.suffix or 'image'} file?); "
                             "remove it or re-save it as PNG or JPEG") from None
    except Image.DecompressionBombError as e:
        raise ImageFileError(f"{path} is too large to open safely ({e}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageFileError(f"cannot read image {path}: {e} (a truncated or damaged file?); re-save or remove it") from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageFileError(f"image {path} is empty ({arr.shape})")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def list_image_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (by extension, case-insensitive, hidden files ignored), sorted by name."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageFileError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise ImageFileError(f"{folder} is not a folder")
    pattern = "**/*" if recursive else "*"
    files = [p for p in folder.glob(pattern)
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
             and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: str(p.relative_to(folder)).lower())


def read_images(sources: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = False,
                max_side: int | None = DEFAULT_MAX_SIDE) -> tuple[list[torch.Tensor], list[Path]]:
    """Read a folder, a file, or a list of folders/files. Returns (images [3, H, W] each, their paths).

    Images keep their own sizes (a set of references is rarely uniform). Raises ImageFileError
    when a file fails or when there is no image at all. Every image is held in memory at once
    (float32: ~19 MB for 1536 x 1024): for large sets, list them with `image_paths` and read them
    a few at a time.
    """
    paths = image_paths(sources, recursive=recursive)
    return [read_image(p, max_side=max_side) for p in paths], paths


def image_paths(sources: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """The image files of a folder, a file, or a list of folders/files, in `read_images`' order,
    without reading them. Raises ImageFileError for a missing source, a folder without images,
    or no image at all."""
    if isinstance(sources, (str, os.PathLike)):
        items: Sequence = [sources]
    else:
        items = list(sources)
    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = list_image_files(p, recursive=recursive)
            if not found:
                others = sorted(q.name for q in p.iterdir() if not q.name.startswith("."))[:8]
                raise ImageFileError(
                    f"no images in {p} (looked for {', '.join(IMAGE_EXTENSIONS)}"
                    f"{'; it holds ' + ', '.join(others) if others else '; it is empty'})"
                )
            paths += found
        elif p.exists():
            paths.append(p)
        else:
            raise ImageFileError(f"{p} does not exist")
    if not paths:
        raise ImageFileError("no image files given")
    return paths
