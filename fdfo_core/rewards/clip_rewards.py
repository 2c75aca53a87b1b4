"""Learned CLIP-family rewards: PickScore, HPSv2 / HPSv2.1, the LAION aesthetic predictor v2, and
CLIP score (CLIP or SigLIP). Each loads its authors' published checkpoint from a local folder
(see `weights` for the lookup order and docs/rewards.md for the files); transformers is imported
inside the factories only.

Scores:

- ``pickscore``: ``logit_scale.exp() * cos(text, image)`` with PickScore_v1 (about 18-23 on real
  images; the logit scale of PickScore_v1 is 100).
- ``hpsv2``: ``cos(text, image)`` with the HPS checkpoint, as published by the HPSv2 authors
  (scores about 0.20-0.33); ``scale`` multiplies it (e.g. ``scale=100`` for a PickScore-like range).
- ``aesthetic``: the MLP head on the L2-normalised CLIP ViT-L/14 image embedding (about 1-10).
- ``clipscore``: ``scale * max(cos(text, image), 0)``. The CLIPScore paper (Hessel et al. 2021)
  uses w = 2.5 with ViT-B/32; text-to-image work (and torchmetrics) report 100 * max(cos, 0),
  which is the default here (``scale=100``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import RewardError
from .clip_common import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageTransform,
    ModelReward,
    TextEmbeddingCache,
    as_device,
    encode_clip_text,
    load_tokenizer,
    load_transformers_model,
    normalize,
    pooled,
    text_max_length,
)
from .openclip_convert import clip_config_from_openclip, clip_model_from_openclip, unwrap_state_dict
from .registry import register_reward
from .weights import (
    WeightSource,
    dtype_kwargs,
    has_clip_processor,
    has_file,
    has_transformers_model,
    load_state_dict,
    locate,
    pick_file,
    resolve_dtype,
)

# ---- where the weights come from -------------------------------------------------------------

PICKSCORE = WeightSource(
    what="PickScore_v1", folder="pickscore", repo="yuvalkirstain/PickScore_v1",
    files="config.json + model.safetensors or pytorch_model.bin", check=has_transformers_model,
)
CLIP_H_PROCESSOR = WeightSource(
    what="the CLIP-ViT-H-14 tokenizer and preprocessor", folder="CLIP-ViT-H-14-laion2B-s32B-b79K",
    repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    files="preprocessor_config.json, tokenizer.json (or vocab.json + merges.txt), tokenizer_config.json, "
    "special_tokens_map.json; the model weights are not needed",
    check=has_clip_processor,
)
HPS_FILES = {"2.1": "HPS_v2.1_compressed.pt", "2.0": "HPS_v2_compressed.pt"}
CLIP_L = WeightSource(
    what="CLIP ViT-L/14", folder="clip-vit-large-patch14", repo="openai/clip-vit-large-patch14",
    files="config.json, model.safetensors, preprocessor_config.json, tokenizer files", check=has_transformers_model,
)
AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
#: The head under its published name (or converted), then trl-lib's Hub copy (`fdfo rewards fetch aesthetic`).
AESTHETIC_HEAD_FILES = (AESTHETIC_HEAD_FILE, AESTHETIC_HEAD_FILE.replace(".pth", ".safetensors"), "aesthetic-model.pth")
AESTHETIC_HEAD = WeightSource(
    what=f"the LAION aesthetic predictor v2 head {AESTHETIC_HEAD_FILE}", folder="aesthetic",
    url="https://github.com/christophschuhmann/improved-aesthetic-predictor", files=AESTHETIC_HEAD_FILE,
    check=has_file(*AESTHETIC_HEAD_FILES),
)


def hps_source(version: str) -> WeightSource:
    if version not in HPS_FILES:
        raise RewardError(f"hpsv2: unknown version {version!r}; use '2.1' or '2.0'")
    name = HPS_FILES[version]
    return WeightSource(
        what=f"the HPSv{version} checkpoint {name}", folder="hpsv2", repo="xswu/HPSv2", hf_file=name,
        files=name, check=has_file(name, name.replace(".pt", ".safetensors")),
    )


# ---- shared CLIP machinery -------------------------------------------------------------------


class _ClipPair(ModelReward):
    """Image and text embeddings from a transformers CLIP/SigLIP model; subclasses turn them into a score."""

    differentiable = True

    def __init__(self, model, tokenizer, transform: ImageTransform, micro_batch: int, device, dtype,
                 text_inputs: Sequence[str] = ("input_ids", "attention_mask"), max_length: int | None = None):
        super().__init__(micro_batch=micro_batch, device=device, dtype=dtype)
        self.model = self.freeze(model)
        self.tokenizer = tokenizer
        self.transform = transform
        self.text_inputs = tuple(text_inputs)
        self.max_length = text_max_length(model, tokenizer, max_length)
        self.text_cache = TextEmbeddingCache(self._encode_text)
        self.to(self.device)

    def torch_modules(self):
        return [self.model]

    def to(self, device):
        super().to(device)
        if hasattr(self, "text_cache"):
            self.text_cache.clear()
        return self

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        return encode_clip_text(self.model, self.tokenizer, prompts, self.max_length, self.text_inputs, self.device)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.transform(images).to(self.dtype)
        return normalize(pooled(self.model.get_image_features(pixel_values=pixels)).float())

    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        img = self.image_embeds(images)
        txt = self.text_cache(prompts, img.device)
        return (img * txt).sum(-1)


# Shared with the other CLIP-family rewards (clip_common), under the names used in this module.
_load_transformers_model = load_transformers_model
_load_tokenizer = load_tokenizer
_device = as_device


# ---- PickScore --------------------------------------------------------------------------------


class PickScore(_ClipPair):
    name = "pickscore"

    def _score(self, images, prompts):
        return self.model.logit_scale.exp().float() * self.cosine(images, prompts)


@register_reward("pickscore", "PickScore_v1 (CLIP-H fine-tuned on Pick-a-Pic human preferences), ~18-23")
def _pickscore(path: str | None = None, processor_path: str | None = None, dtype: str = "auto",
               micro_batch: int = 16, device=None) -> PickScore:
    """path: PickScore_v1 folder; processor_path: CLIP-ViT-H-14 tokenizer/preprocessor folder."""
    dev = _device(device)
    dt = resolve_dtype(dtype, dev)
    model_dir = locate(PICKSCORE, path, reward="pickscore")
    # The processor: explicit, else inside the model folder, else the CLIP-H folder / cache.
    extra = [model_dir] if not processor_path else []
    proc_dir = locate(CLIP_H_PROCESSOR, processor_path, reward="pickscore", extra_candidates=extra)
    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True, **dtype_kwargs(dt)).to(dt)
    except Exception as e:
        raise RewardError(f"pickscore: could not load PickScore_v1 from {model_dir}: {e}") from e
    tokenizer = _load_tokenizer(proc_dir, "pickscore", "CLIPTokenizer")
    transform = ImageTransform.from_preprocessor_config(proc_dir / "preprocessor_config.json",
                                                        default_size=model.config.vision_config.image_size)
    return PickScore(model, tokenizer, transform, micro_batch=micro_batch, device=dev, dtype=dt)


# ---- CLIP score -------------------------------------------------------------------------------


class ClipScore(_ClipPair):
    name = "clipscore"

    def __init__(self, *args, scale: float = 100.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = float(scale)

    def _score(self, images, prompts):
        return self.scale * self.cosine(images, prompts).clamp_min(0)


@register_reward("clipscore", "CLIP score: scale * max(cos(text, image), 0) with any CLIP or SigLIP checkpoint")
def _clipscore(path: str | None = None, model: str = "openai/clip-vit-large-patch14", scale: float = 100.0,
               dtype: str = "auto", micro_batch: int = 32, device=None) -> ClipScore:
    """path: a transformers CLIP/SigLIP folder; model: the Hugging Face id looked up in the offline cache."""
    dev = _device(device)
    dt = resolve_dtype(dtype, dev)
    source = WeightSource(
        what=f"a CLIP or SigLIP checkpoint (default {model})", folder="clipscore", repo=model,
        files="config.json, model.safetensors, preprocessor_config.json, tokenizer files",
        check=has_transformers_model, alt_folders=(model.split("/")[-1],),
    )
    folder = locate(source, path, reward="clipscore")
    net = _load_transformers_model(folder, "the CLIP model", "clipscore", dt)
    model_type = getattr(net.config, "model_type", "")
    if not (hasattr(net, "get_text_features") and hasattr(net, "get_image_features")):
        raise RewardError(f"clipscore: {folder} holds a {model_type!r} model, not a CLIP/SigLIP dual encoder")
    if model_type.startswith("siglip2"):
        raise RewardError("clipscore: SigLIP 2 (NaFlex) checkpoints are not supported; use CLIP or SigLIP")
    tokenizer = _load_tokenizer(folder, "clipscore")
    size = getattr(getattr(net.config, "vision_config", None), "image_size", 224)
    transform = ImageTransform.from_preprocessor_config(folder / "preprocessor_config.json", default_size=size)
    # SigLIP was trained on max-length padded text without an attention mask; CLIP's causal
    # text encoder is unaffected by padding either way.
    text_inputs = ("input_ids",) if model_type.startswith("siglip") else ("input_ids", "attention_mask")
    return ClipScore(net, tokenizer, transform, micro_batch=micro_batch, device=dev, dtype=dt,
                     text_inputs=text_inputs, scale=scale)


# ---- HPSv2 ------------------------------------------------------------------------------------


class HPSv2(_ClipPair):
    name = "hpsv2"

    def __init__(self, *args, scale: float = 1.0, version: str = "2.1", **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = float(scale)
        self.version = version

    def _score(self, images, prompts):
        return self.scale * self.cosine(images, prompts)

    def describe(self) -> str:
        return f"hpsv2(v{self.version})"


@register_reward("hpsv2", "HPSv2 / HPSv2.1 human preference score: cos(text, image) of the HPS-tuned CLIP-H, ~0.2-0.33")
def _hpsv2(path: str | None = None, version: str = "2.1", tokenizer_path: str | None = None, scale: float = 1.0,
           text_heads: int | None = None, vision_heads: int | None = None, dtype: str = "auto",
           micro_batch: int = 16, device=None) -> HPSv2:
    """path: the HPS checkpoint file or its folder; tokenizer_path: a CLIP BPE tokenizer folder (CLIP-H's)."""
    dev = _device(device)
    dt = resolve_dtype(dtype, dev)
    version = str(version).lstrip("v")
    version = {"2": "2.0", "2.0": "2.0", "2.1": "2.1"}.get(version, version)
    source = hps_source(version)
    found = locate(source, path, reward="hpsv2")
    ckpt = pick_file(found, [HPS_FILES[version], HPS_FILES[version].replace(".pt", ".safetensors"),
                             *HPS_FILES.values()])
    extra = [found if found.is_dir() else found.parent] if not tokenizer_path else []
    tok_dir = locate(CLIP_H_PROCESSOR, tokenizer_path, reward="hpsv2", extra_candidates=extra)
    tokenizer = _load_tokenizer(tok_dir, "hpsv2", "CLIPTokenizer")
    sd = unwrap_state_dict(load_state_dict(ckpt))
    config = clip_config_from_openclip(
        sd, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, text_heads=text_heads, vision_heads=vision_heads,
    )
    if config.text_config.vocab_size != len(tokenizer):
        raise RewardError(
            f"hpsv2: the tokenizer in {tok_dir} has {len(tokenizer)} tokens but the checkpoint expects "
            f"{config.text_config.vocab_size}; use the CLIP-ViT-H-14 tokenizer"
        )
    model = clip_model_from_openclip(sd, config).to(dt)
    # open_clip's eval transform: Resize(shortest edge, bicubic) + CenterCrop + OpenAI CLIP mean/std.
    size = config.vision_config.image_size
    transform = ImageTransform(size=size, shortest_edge=True, crop=(size, size), mean=OPENAI_CLIP_MEAN,
                               std=OPENAI_CLIP_STD, mode="bicubic", round_crop_offset=True)
    return HPSv2(model, tokenizer, transform, micro_batch=micro_batch, device=dev, dtype=dt,
                 max_length=config.text_config.max_position_embeddings, scale=scale, version=version)


# ---- LAION aesthetic predictor v2 ------------------------------------------------------------


def mlp_head_from_state_dict(sd: dict[str, torch.Tensor]) -> torch.nn.Sequential:
    """The published head: Linear layers at `layers.<i>` (Dropouts in between hold no weights), no activations."""
    idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("layers.") and k.endswith(".weight")})
    if not idx:
        raise RewardError("aesthetic: the head checkpoint has no layers.<i>.weight entries")
    linears = []
    for i in idx:
        w = sd[f"layers.{i}.weight"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=f"layers.{i}.bias" in sd)
        with torch.no_grad():
            lin.weight.copy_(w.float())
            if lin.bias is not None:
                lin.bias.copy_(sd[f"layers.{i}.bias"].float())
        linears.append(lin)
    for a, b in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            raise RewardError("aesthetic: the head's layer sizes do not chain")
    if linears[-1].out_features != 1:
        raise RewardError("aesthetic: the head must end in one output")
    return torch.nn.Sequential(*linears)


class Aesthetic(ModelReward):
    name = "aesthetic"
    differentiable = True

    def __init__(self, clip, head, transform: ImageTransform, micro_batch: int, device, dtype):
        super().__init__(micro_batch=micro_batch, device=device, dtype=dtype)
        self.clip = self.freeze(clip)
        self.head = self.freeze(head)
        self.transform = transform
        self.to(self.device)

    def torch_modules(self):
        return [self.clip, self.head]

    def _score(self, images, prompts):
        pixels = self.transform(images).to(self.dtype)
        emb = normalize(pooled(self.clip.get_image_features(pixel_values=pixels)).float())
        return self.head(emb).squeeze(-1)


@register_reward("aesthetic", "LAION aesthetic predictor v2 (MLP on CLIP ViT-L/14 image embeddings), ~1-10")
def _aesthetic(path: str | None = None, clip_path: str | None = None, dtype: str = "auto", micro_batch: int = 32,
               device=None) -> Aesthetic:
    """path: the head file or its folder; clip_path: the openai/clip-vit-large-patch14 folder."""
    dev = _device(device)
    dt = resolve_dtype(dtype, dev)
    found = locate(AESTHETIC_HEAD, path, reward="aesthetic")
    head_file = pick_file(found, list(AESTHETIC_HEAD_FILES))
    head_dir = found if found.is_dir() else found.parent
    extra = [head_dir, head_dir / "clip-vit-large-patch14"] if not clip_path else []
    clip_dir = locate(CLIP_L, clip_path, reward="aesthetic", extra_candidates=extra)
    from transformers import CLIPModel

    try:
        clip = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True, **dtype_kwargs(dt)).to(dt)
    except Exception as e:
        raise RewardError(f"aesthetic: could not load CLIP ViT-L/14 from {clip_dir}: {e}") from e
    head = mlp_head_from_state_dict(unwrap_state_dict(load_state_dict(head_file)))
    if head[0].in_features != clip.config.projection_dim:
        raise RewardError(
            f"aesthetic: the head expects {head[0].in_features}-d embeddings but {clip_dir} gives "
            f"{clip.config.projection_dim}-d; use openai/clip-vit-large-patch14"
        )
    transform = ImageTransform.from_preprocessor_config(clip_dir / "preprocessor_config.json",
                                                        default_size=clip.config.vision_config.image_size)
    return Aesthetic(clip, head, transform, micro_batch=micro_batch, device=dev, dtype=dt)
