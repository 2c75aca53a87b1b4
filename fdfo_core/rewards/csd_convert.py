"""Load the CSD style descriptor (Somepalli et al. 2024, "Measuring Style Similarity in Diffusion
Models", arXiv 2404.01292) into a transformers ``CLIPVisionModelWithProjection``.

CSD is OpenAI's CLIP ViT-L/14 image tower, fine-tuned, with two projection matrices instead of
CLIP's one: ``last_layer_style`` and ``last_layer_content`` (both [1024, 768], initialised from
CLIP's ``visual.proj``). The style descriptor of an image is

    style = normalize(ln_post(cls_token) @ last_layer_style)

which is exactly a CLIP image embedding with ``last_layer_style`` as the projection. So the
checkpoint loads as a plain ViT: its ``backbone.*`` weights use OpenAI CLIP's names (the same as
open_clip's ``visual.*``), and `openclip_convert` maps them onto transformers' CLIP vision model,
with ``last_layer_style`` as ``visual_projection`` (transposed). OpenAI CLIP uses QuickGELU
activations; the head count is width / 64 (16 for ViT-L).

Two published layouts are read:

- ``model.safetensors`` (+ ``config.json`` ``{"name": "vit_large", ...}``): the Hugging Face copy
  ``tomg-group-umd/CSD-ViT-L`` written by ``huggingface_hub``'s model mixin; keys ``backbone.*``,
  ``last_layer_style``, ``last_layer_content``;
- ``checkpoint.pth`` from the authors' GitHub README (a Google Drive link): a training checkpoint
  ``{"model_state_dict": {"module.backbone.*": ...}, "args": Namespace(...), "opt_bb": ...}``. It is
  read with ``torch.load(weights_only=True)`` plus argparse's plain ``Namespace`` as the only
  allowed class (the training arguments stored next to the weights); nothing else is unpickled.

The content projection is not used (the style branch is the descriptor the paper evaluates).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping

import torch

from .base import RewardError
from .openclip_convert import clip_vision_config_from_openclip, clip_vision_model_from_openclip
from .weights import load_state_dict

#: File names tried inside a CSD folder, in order.
CSD_FILES = ("model.safetensors", "checkpoint.pth", "pytorch_model.bin")
STYLE_KEY = "last_layer_style"


def csd_to_openclip_visual(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a CSD state dict to open_clip's ``visual.*`` names (``last_layer_style`` -> ``visual.proj``).

    Accepts the keys with or without a DDP ``module.`` prefix and with any backbone prefix
    (``backbone.``, ``model.backbone.``, ...): the prefix is read off the ``conv1.weight`` key.
    Raises RewardError when the dict is not a CSD checkpoint.
    """
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items() if torch.is_tensor(v)}
    conv = [k for k in sd if k.endswith("conv1.weight")]
    style = [k for k in sd if k == STYLE_KEY or k.endswith("." + STYLE_KEY)]
    if len(conv) != 1 or len(style) != 1:
        shown = ", ".join(sorted(sd)[:6])
        raise RewardError(
            "not a CSD checkpoint: expected one '<prefix>conv1.weight' (the CLIP ViT backbone) and one "
            f"'last_layer_style' tensor, found keys {shown}{' ...' if len(sd) > 6 else ''}"
        )
    prefix = conv[0][: -len("conv1.weight")]
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix) and not k[len(prefix):].startswith("proj"):
            out["visual." + k[len(prefix):]] = v
    out["visual.proj"] = sd[style[0]]
    return out


def read_csd_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a CSD checkpoint file (safetensors, or a .pth/.bin read without arbitrary unpickling)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_state_dict(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise RewardError(
            f"cannot read the CSD checkpoint {path} safely with torch.load(weights_only=True): {e}. Use the "
            "model.safetensors of https://huggingface.co/tomg-group-umd/CSD-ViT-L instead"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
        obj = obj["model_state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise RewardError(f"{path} holds a {type(obj).__name__}, not a CSD state dict")
    return dict(obj)


def csd_vision_model(path: Path):
    """A frozen-ready CLIPVisionModelWithProjection computing CSD's style embedding (before L2 normalisation)."""
    visual = csd_to_openclip_visual(read_csd_state_dict(path))
    config = clip_vision_config_from_openclip(visual, quick_gelu=True)
    return clip_vision_model_from_openclip(visual, config)
