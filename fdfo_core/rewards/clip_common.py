"""Shared pieces of the CLIP-family rewards: torch image preprocessing, embedding helpers, and a
base class for rewards that hold torch modules.

Images are preprocessed on the reward's device with torch (resize with antialiasing, centre crop,
normalise) instead of PIL, so scoring stays on the GPU and is differentiable with respect to the
pixels. The operations and constants are the ones of each model's published preprocessing
(`preprocessor_config.json` for transformers checkpoints, open_clip's eval transform for HPSv2);
the only difference from PIL is the bicubic kernel (torch a=-0.75, PIL a=-0.5) and the absence
of 8-bit rounding, which move scores by far less than the differences between images.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..files.text_files import read_json_file
from .base import Reward, RewardError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resample codes as stored in preprocessor_config.json -> torch interpolation modes.
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}


def _pair(v: Any, key_h: str = "height", key_w: str = "width") -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return int(v), int(v)
    if isinstance(v, dict):
        if key_h in v and key_w in v:
            return int(v[key_h]), int(v[key_w])
        if "shortest_edge" in v:
            return int(v["shortest_edge"]), int(v["shortest_edge"])
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return int(v[0]), int(v[1])
    raise RewardError(f"cannot read image size {v!r} from a preprocessor config")


class ImageTransform:
    """Resize (shortest edge, or to an exact size), centre crop, and normalise NCHW images in [0, 1].

    Mirrors the transformers CLIP/SigLIP image processors and open_clip's eval transform.
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = 224,
        shortest_edge: bool = True,
        crop: tuple[int, int] | None = (224, 224),
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        mode: str = "bicubic",
        round_crop_offset: bool = False,
    ):
        self.size = size
        self.shortest_edge = shortest_edge
        self.crop = crop
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.mode = mode
        # torchvision's CenterCrop rounds the offset; the transformers processors floor it.
        self.round_crop_offset = round_crop_offset

    @classmethod
    def from_preprocessor_config(cls, path: Path | None, default_size: int = 224,
                                 defaults: dict | None = None) -> "ImageTransform":
        """Read a transformers `preprocessor_config.json` (CLIP: shortest edge + crop; SigLIP: fixed size).

        `defaults` is used instead of the file when there is none (a model's published settings).
        """
        cfg: dict = dict(defaults or {})
        if path is not None and Path(path).is_file():
            cfg = read_json_file(path, "preprocessor config")
        return cls.from_config_dict(cfg, default_size)

    @classmethod
    def from_config_dict(cls, cfg: dict, default_size: int = 224) -> "ImageTransform":
        """The transform of a preprocessor config already read into a dict."""
        size = cfg.get("size", default_size)
        shortest = not (isinstance(size, dict) and "height" in size)
        if cfg.get("do_resize", True) is False:
            size = None
        crop = _pair(cfg.get("crop_size", default_size)) if cfg.get("do_center_crop", True) else None
        if isinstance(size, dict) and "height" in size and "do_center_crop" not in cfg:
            crop = None  # SigLIP style: resize to an exact size, no crop
        mean = cfg.get("image_mean", OPENAI_CLIP_MEAN)
        std = cfg.get("image_std", OPENAI_CLIP_STD)
        if cfg.get("do_normalize", True) is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if isinstance(mean, (int, float)):
            mean = (mean,) * 3
        if isinstance(std, (int, float)):
            std = (std,) * 3
        mode = _RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic")
        if size is not None:
            if shortest:
                size = _pair(size)[0]
            else:
                size = _pair(size)
        return cls(size=size, shortest_edge=shortest, crop=crop, mean=mean, std=std, mode=mode)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if self.size is None:
            return h, w
        if not self.shortest_edge:
            return tuple(self.size)  # type: ignore[return-value]
        s = int(self.size)
        if h <= w:
            return s, int(s * w / h)
        return int(s * h / w), s

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        h, w = x.shape[-2:]
        nh, nw = self.output_size(h, w)
        if (nh, nw) != (h, w):
            if self.mode == "nearest":
                x = F.interpolate(x, size=(nh, nw), mode="nearest")
            else:
                x = F.interpolate(x, size=(nh, nw), mode=self.mode, align_corners=False, antialias=True)
            x = x.clamp(0, 1)  # as the 8-bit round trip of the reference pipelines does
        if self.crop is not None:
            ch, cw = self.crop
            h, w = x.shape[-2:]
            if ch > h or cw > w:
                pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
                x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
                h, w = x.shape[-2:]
            if self.round_crop_offset:
                top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            else:
                top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top : top + ch, left : left + cw]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def pooled(out: Any) -> torch.Tensor:
    """`get_*_features` returns a tensor in transformers 4.x and a model output in 5.x."""
    if torch.is_tensor(out):
        return out
    value = getattr(out, "pooler_output", None)
    if value is None:
        value = out[0] if isinstance(out, (tuple, list)) else out["pooler_output"]
    return value


class ModelReward(Reward):
    """A reward holding torch modules (moved by `.to`), in eval mode with frozen weights."""

    def __init__(self, micro_batch: int, device=None, dtype: torch.dtype = torch.float32):
        super().__init__(micro_batch=micro_batch, device=device)
        self.dtype = dtype

    def torch_modules(self) -> list[torch.nn.Module]:
        return []

    @staticmethod
    def freeze(module: torch.nn.Module) -> torch.nn.Module:
        module.eval()
        module.requires_grad_(False)
        return module

    def to(self, device):
        super().to(device)
        for m in self.torch_modules():
            m.to(self.device)
        return self


class TextEmbeddingCache:
    """Embeds each distinct prompt once per call and keeps the last `capacity` embeddings.

    Prompts repeat across an RL batch (many images per prompt), so this skips most text-encoder
    passes. The cached value of a prompt does not depend on which other prompts were in the batch
    it was first computed in beyond float rounding (each prompt is encoded independently).
    """

    def __init__(self, encode: Callable[[list[str]], torch.Tensor], capacity: int = 4096):
        self.encode = encode
        self.capacity = capacity
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def clear(self) -> None:
        self._cache.clear()

    def __call__(self, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            emb = self.encode(missing)
            for p, e in zip(missing, emb):
                self._cache[p] = e.detach()
        out = []
        for p in prompts:
            self._cache.move_to_end(p)
            out.append(self._cache[p])
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return torch.stack(out).to(device)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def text_max_length(model, tokenizer, max_length: int | None = None) -> int:
    """The text context of a CLIP/SigLIP model: the smallest of `max_length`, the config's positions
    and the tokenizer's limit (77 when none is known)."""
    cfg_len = getattr(getattr(model.config, "text_config", model.config), "max_position_embeddings", None)
    tok_len = getattr(tokenizer, "model_max_length", None)
    lengths = [x for x in (max_length, cfg_len, tok_len if tok_len and tok_len < 100_000 else None) if x]
    return min(lengths) if lengths else 77


def encode_clip_text(model, tokenizer, prompts: Sequence[str], max_length: int, text_inputs: Sequence[str],
                     device: torch.device) -> torch.Tensor:
    """L2-normalised text embeddings [N, D] (float32) of a CLIP/SigLIP dual encoder.

    Every prompt is padded to the full context, so an embedding does not depend on the batch.
    SigLIP passes ``text_inputs=("input_ids",)`` (it was trained on padded text without a mask).
    """
    tok = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    kwargs = {k: tok[k].to(device) for k in text_inputs if k in tok}
    with torch.no_grad():
        emb = pooled(model.get_text_features(**kwargs))
    return normalize(emb.float())


def load_transformers_model(path: Path, what: str, reward: str, dtype: torch.dtype, auto_class: str = "AutoModel"):
    """`transformers.<auto_class>.from_pretrained(path)` offline, in `dtype`; failures become RewardError."""
    import transformers

    from .weights import dtype_kwargs

    cls = getattr(transformers, auto_class)
    try:
        model = cls.from_pretrained(str(path), local_files_only=True, **dtype_kwargs(dtype))
    except Exception as e:
        raise RewardError(f"{reward}: could not load {what} from {path}: {e}") from e
    return model.to(dtype)


def load_tokenizer(path: Path, reward: str, cls_name: str = "AutoTokenizer"):
    """A tokenizer from a local folder; failures become RewardError."""
    import transformers

    try:
        return getattr(transformers, cls_name).from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise RewardError(f"{reward}: could not load the tokenizer from {path}: {e}") from e


def as_device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")
