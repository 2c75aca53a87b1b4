"""Frozen image encoders for similarity rewards: CLIP and SigLIP image towers, DINOv2, and CSD.

An `ImageEncoder` maps NCHW images in [0, 1] to L2-normalised embeddings [N, D] (float32),
with the preprocessing of its published checkpoint done in torch (so it runs on the reward's
device and is differentiable with respect to the pixels). CLIP and SigLIP dual encoders also
embed text into the same space (`embed_texts`), which the reference reward's content guard and
the preference model's prompt features use.

| kind     | what                                         | embedding                               | default checkpoint (folder)                                  |
| -------- | -------------------------------------------- | --------------------------------------- | ------------------------------------------------------------ |
| `clip`   | a transformers CLIP (dual or vision-only)    | projected image features                | openai/clip-vit-large-patch14 (`clip-vit-large-patch14/`)    |
| `siglip` | a transformers SigLIP (dual or vision-only)  | attention-pooled image features         | google/siglip-so400m-patch14-384 (`siglip-so400m-patch14-384/`) |
| `dinov2` | transformers `Dinov2Model`                    | layer-normed CLS token (`pooler_output`) | facebook/dinov2-base (`dinov2-base/`)                        |
| `csd`    | CSD ViT-L (Somepalli et al. 2024), converted  | style projection of the CLS token        | tomg-group-umd/CSD-ViT-L (`csd/`)                            |

Weights are found like every learned reward's (`weights.locate`: the `path` option, the reward
folders, then the offline Hugging Face cache); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from ..files.text_files import read_json_file
from .base import RewardError
from .clip_common import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageTransform,
    TextEmbeddingCache,
    as_device,
    encode_clip_text,
    load_tokenizer,
    load_transformers_model,
    normalize,
    pooled,
    text_max_length,
)
from .weights import WeightSource, has_file, has_transformers_model, locate, pick_file, resolve_dtype

ENCODER_KINDS = ("clip", "siglip", "dinov2", "csd")
DEFAULT_MODELS = {
    "clip": "openai/clip-vit-large-patch14",
    "siglip": "google/siglip-so400m-patch14-384",
    "dinov2": "facebook/dinov2-base",
    "csd": "tomg-group-umd/CSD-ViT-L",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Published preprocessing, used when a folder has no preprocessor_config.json.
_DEFAULT_PREPROCESSING = {
    "clip": {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
             "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": 3},
    "siglip": {"size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2},
    "dinov2": {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
               "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "resample": 3},
}
_CSD_FILES_HINT = ("model.safetensors (https://huggingface.co/tomg-group-umd/CSD-ViT-L) or checkpoint.pth "
                   "(the authors' Google Drive link in https://github.com/learn2phoenix/CSD)")


def encoder_source(kind: str, model: str | None = None) -> WeightSource:
    """Where the weights of an encoder kind live and come from (`model`: a Hugging Face id)."""
    if kind not in ENCODER_KINDS:
        raise RewardError(f"unknown image encoder {kind!r}; choose one of {', '.join(ENCODER_KINDS)}")
    model = model or DEFAULT_MODELS[kind]
    name = model.rstrip("/").split("/")[-1]
    if kind == "csd":
        from .csd_convert import CSD_FILES

        return WeightSource(what=f"the CSD style encoder ({model})", folder="csd", repo=model, files=_CSD_FILES_HINT,
                            check=has_file(*CSD_FILES), alt_folders=(name,))
    files = "config.json, model.safetensors, preprocessor_config.json"
    if kind in ("clip", "siglip"):
        files += " (and the tokenizer files for the text terms)"
    return WeightSource(what=f"the {kind} image encoder {model}", folder=name, repo=model, files=files,
                        check=has_transformers_model)


def detect_kind(path: Path) -> str | None:
    """The encoder kind of a weights folder or file, from its config.json (None when unknown)."""
    path = Path(path)
    if path.is_file():
        return "csd" if path.suffix in (".pth", ".pt", ".bin", ".safetensors") else None
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        try:
            cfg = read_json_file(cfg_file, "model config")
        except ValueError:  # unreadable: the loader reports it properly
            cfg = {}
        if not isinstance(cfg, dict):
            cfg = {}
        model_type = str(cfg.get("model_type", ""))
        if model_type.startswith("clip"):
            return "clip"
        if model_type.startswith("siglip"):
            return "siglip"
        if model_type.startswith("dinov2"):
            return "dinov2"
        if not model_type and str(cfg.get("name", "")).startswith("vit_"):  # CSD's hub-mixin config
            return "csd"
    if (path / "checkpoint.pth").is_file():
        return "csd"
    return None


class ImageEncoder:
    """A frozen image tower: NCHW float images in [0, 1] -> L2-normalised embeddings [N, D] (float32).

    `features(pixels)` runs the network on preprocessed pixels; `text` (optional) embeds prompts
    into the same space. Calling the encoder is differentiable with respect to the images; wrap
    it in `torch.no_grad()` when no gradient is needed.
    """

    def __init__(self, kind: str, model: torch.nn.Module, transform: ImageTransform,
                 features: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor], source: str,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 tokenizer=None, text_inputs: Sequence[str] = ("input_ids", "attention_mask"),
                 text_problem: str | None = None):
        self.kind = kind
        self.model = model.eval().requires_grad_(False)
        self.transform = transform
        self._features = features
        self.source = source
        self.dtype = dtype
        self.device = as_device(device)
        self.tokenizer = tokenizer
        self.text_inputs = tuple(text_inputs)
        self.text_problem = text_problem
        self.max_length = text_max_length(model, tokenizer) if tokenizer is not None else 0
        self.text_cache = TextEmbeddingCache(self._encode_texts)
        self._dim: int | None = None
        self.to(self.device)

    # --- identity ---------------------------------------------------------------------------

    def describe(self) -> str:
        src = Path(self.source)
        name = f"{src.parent.name}/{src.name}" if src.suffix else src.name
        return f"{self.kind}:{name or self.source}"

    @property
    def dim(self) -> int:
        """Embedding size D (measured once on a blank image: configs name it differently per family)."""
        if self._dim is None:
            with torch.no_grad():
                self._dim = int(self(torch.zeros(1, 3, 32, 32, device=self.device)).shape[-1])
        return self._dim

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None

    # --- device -----------------------------------------------------------------------------

    def to(self, device) -> "ImageEncoder":
        self.device = torch.device(device)
        self.model.to(self.device)
        self.text_cache.clear()
        return self

    # --- embeddings -------------------------------------------------------------------------

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] (any size) -> [N, D] unit vectors, float32, on the encoder's device."""
        pixels = self.transform(images.to(self.device).float()).to(self.dtype)
        return normalize(self._features(self.model, pixels).float())

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[N] strings -> [N, D] unit vectors in the image space (CLIP / SigLIP dual encoders only)."""
        if not self.has_text:
            raise RewardError(f"the {self.kind} encoder {self.source} cannot embed text: "
                              f"{self.text_problem or 'it has no text tower'}")
        return self.text_cache(list(texts), self.device)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return encode_clip_text(self.model, self.tokenizer, texts, self.max_length, self.text_inputs, self.device)

    def embed_images(self, images: Sequence[torch.Tensor] | torch.Tensor, batch: int = 16) -> torch.Tensor:
        """Embed images of possibly different sizes ([3, H, W] each, or one NCHW batch) without
        gradients; images of equal size share a forward pass. Returns [N, D] in input order."""
        if torch.is_tensor(images):
            images = list(images.unbind(0)) if images.ndim == 4 else [images]
        out: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(tuple(im.shape[-2:]), []).append(i)
        with torch.no_grad():
            for idx in by_size.values():
                for start in range(0, len(idx), batch):
                    chunk = idx[start : start + batch]
                    emb = self(torch.stack([images[i] for i in chunk]))
                    for i, e in zip(chunk, emb):
                        out[i] = e
        if not out:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.stack(out)  # type: ignore[arg-type]


# ---- feature functions ------------------------------------------------------------------------


def _dual_features(model, pixels):
    return pooled(model.get_image_features(pixel_values=pixels))


def _vision_features(model, pixels):
    out = model(pixel_values=pixels)
    embeds = getattr(out, "image_embeds", None)  # CLIPVisionModelWithProjection
    return embeds if embeds is not None else out.pooler_output


# ---- loading ----------------------------------------------------------------------------------


def _transform(folder: Path, kind: str, image_size: int) -> ImageTransform:
    defaults = dict(_DEFAULT_PREPROCESSING[kind])
    if kind == "siglip":
        defaults["size"] = {"height": image_size, "width": image_size}
    return ImageTransform.from_preprocessor_config(folder / "preprocessor_config.json", default_size=image_size,
                                                   defaults=defaults)


def _load_hf_encoder(kind: str, folder: Path, dtype: torch.dtype, device: torch.device, reward: str) -> ImageEncoder:
    try:
        cfg = read_json_file(folder / "config.json", "model config")
    except ValueError as e:
        raise RewardError(f"{reward}: {e}") from None
    model_type = str(cfg.get("model_type", "")) if isinstance(cfg, dict) else ""
    if model_type.startswith("siglip2"):
        raise RewardError(f"{reward}: SigLIP 2 NaFlex checkpoints are not supported ({folder}); use CLIP, SigLIP "
                          "or a fixed-resolution SigLIP 2")
    auto_class = {"clip_vision_model": "CLIPVisionModelWithProjection", "siglip_vision_model": "SiglipVisionModel",
                  "dinov2": "Dinov2Model"}.get(model_type, "AutoModel")
    net = load_transformers_model(folder, f"the {kind} encoder", reward, dtype, auto_class=auto_class)
    expected = {"clip": "clip", "siglip": "siglip", "dinov2": "dinov2"}[kind]
    if not model_type.startswith(expected):
        raise RewardError(f"{reward}: {folder} holds a {model_type!r} model, not a {kind} encoder; "
                          f"set the encoder option to match it (or 'auto')")
    vision_cfg = getattr(net.config, "vision_config", net.config)
    image_size = int(getattr(vision_cfg, "image_size", 224))
    transform = _transform(folder, kind, image_size)
    if kind == "dinov2":
        return ImageEncoder(kind, net, transform, _vision_features, str(folder), dtype, device,
                            text_problem="DINOv2 is an image-only model")
    dual = hasattr(net, "get_text_features") and hasattr(net, "get_image_features")
    tokenizer, problem = None, None
    if dual:
        try:
            tokenizer = load_tokenizer(folder, reward)
        except RewardError as e:
            problem = f"no usable tokenizer files in {folder} ({e})"
    else:
        problem = f"{folder} holds only the image tower"
    text_inputs = ("input_ids",) if kind == "siglip" else ("input_ids", "attention_mask")
    return ImageEncoder(kind, net, transform, _dual_features if dual else _vision_features, str(folder), dtype,
                        device, tokenizer=tokenizer, text_inputs=text_inputs, text_problem=problem)


def _load_csd(found: Path, dtype: torch.dtype, device: torch.device) -> ImageEncoder:
    from .csd_convert import CSD_FILES, csd_vision_model

    file = pick_file(found, CSD_FILES)
    net = csd_vision_model(file).to(dtype)
    size = int(net.config.image_size)
    # The authors' eval transform: Resize(size, bicubic) + CenterCrop(size) (torchvision rounds the
    # crop offset) + OpenAI CLIP mean/std.
    transform = ImageTransform(size=size, shortest_edge=True, crop=(size, size), mean=OPENAI_CLIP_MEAN,
                               std=OPENAI_CLIP_STD, mode="bicubic", round_crop_offset=True)
    return ImageEncoder("csd", net, transform, _vision_features, str(file), dtype, device,
                        text_problem="CSD is an image-only model")


def load_image_encoder(kind: str = "auto", path: str | Path | None = None, model: str | None = None,
                       dtype: str | torch.dtype = "auto", device=None, reward: str = "reference") -> ImageEncoder:
    """Find and load an image encoder (see the module docstring).

    kind: "clip", "siglip", "dinov2", "csd" or "auto" (read from the folder's config.json when
    `path` is given, else "clip"). path: a weights folder or file, or a folder name in the reward
    folders. model: the Hugging Face id looked up in the offline cache (and whose last part is
    tried as a folder name). Raises RewardError with the folder to create and where to download.
    """
    dev = as_device(device)
    dt = resolve_dtype(dtype, dev)
    kind = (kind or "auto").lower()
    if kind == "auto":
        if path:
            anything = WeightSource(what="an image encoder", folder=str(path), check=lambda p: None if p.exists() else "missing")
            found = locate(anything, path, reward=reward, use_hf_cache=False)
            kind = detect_kind(found) or ""
            if not kind:
                raise RewardError(f"{reward}: cannot tell which kind of image encoder {found} holds; set encoder to "
                                  f"one of {', '.join(ENCODER_KINDS)}")
        else:
            kind = "clip"
    source = encoder_source(kind, model)
    found = locate(source, path, reward=reward)
    if kind == "csd":
        return _load_csd(found, dt, dev)
    return _load_hf_encoder(kind, found, dt, dev, reward)
