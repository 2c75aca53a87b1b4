"""Load an open_clip ViT state dict (the format of HPSv2's checkpoints) into a transformers CLIPModel.

open_clip's ViT CLIP and transformers' CLIPModel compute the same function; only parameter names
and layouts differ. The mapping, per residual block (``transformer.resblocks.N`` for text,
``visual.transformer.resblocks.N`` for vision):

=================================  ================================================
open_clip                          transformers
=================================  ================================================
``ln_1`` / ``ln_2``                ``layer_norm1`` / ``layer_norm2``
``attn.in_proj_weight`` [3d, d]    ``self_attn.{q,k,v}_proj.weight`` (rows split in 3)
``attn.in_proj_bias`` [3d]         ``self_attn.{q,k,v}_proj.bias``
``attn.out_proj``                  ``self_attn.out_proj``
``mlp.c_fc`` / ``mlp.c_proj``      ``mlp.fc1`` / ``mlp.fc2``
=================================  ================================================

and outside the blocks:

=================================  ================================================
``token_embedding.weight``         ``text_model.embeddings.token_embedding.weight``
``positional_embedding``           ``text_model.embeddings.position_embedding.weight``
``ln_final``                       ``text_model.final_layer_norm``
``text_projection`` [d, e]         ``text_projection.weight`` [e, d] (transposed)
``visual.conv1.weight``            ``vision_model.embeddings.patch_embedding.weight``
``visual.class_embedding``         ``vision_model.embeddings.class_embedding``
``visual.positional_embedding``    ``vision_model.embeddings.position_embedding.weight``
``visual.ln_pre`` / ``ln_post``    ``vision_model.pre_layrnorm`` / ``post_layernorm``
``visual.proj`` [d, e]             ``visual_projection.weight`` [e, d] (transposed)
``logit_scale``                    ``logit_scale``
=================================  ================================================

open_clip pools the text at ``argmax(token ids)``, the end-of-text token (the largest id of the
CLIP vocabulary), which is what transformers does with ``eos_token_id`` set to that id. Sizes are
read from the tensors; the head counts are not visible in the shapes, so they follow open_clip's
configs (text: width / 64; vision: width / head_width with head_width 80 for the ViT-H width of
1280, 64 otherwise) unless given explicitly.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from .base import RewardError

_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
# Present in some open_clip checkpoints, not parameters of the model.
_IGNORED = {"attn_mask", "visual.attn_mask"}


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """Take the weights out of a checkpoint: under "state_dict" (HPSv2) or "model", minus a DDP "module." prefix."""
    if not isinstance(obj, Mapping):
        raise RewardError(f"expected a state dict, got {type(obj).__name__}")
    for key in ("state_dict", "model", "module"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        if not torch.is_tensor(v):
            continue
        if k.startswith("module."):
            k = k[len("module.") :]
        sd[k] = v
    return sd


def _count_blocks(sd: Mapping[str, torch.Tensor], visual: bool) -> int:
    prefix = "visual.transformer.resblocks." if visual else "transformer.resblocks."
    ids = {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)}
    if not ids:
        raise RewardError(f"no {'vision' if visual else 'text'} transformer blocks ({prefix}N.*) in the checkpoint")
    return max(ids) + 1


def clip_config_from_openclip(
    sd: Mapping[str, torch.Tensor],
    eos_token_id: int,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    text_heads: int | None = None,
    vision_heads: int | None = None,
    quick_gelu: bool = False,
):
    """A transformers CLIPConfig with the sizes of an open_clip ViT state dict."""
    from transformers import CLIPConfig

    required = ["token_embedding.weight", "positional_embedding", "text_projection", "visual.conv1.weight",
                "visual.positional_embedding", "visual.proj"]
    missing = [k for k in required if k not in sd]
    if missing:
        raise RewardError(
            f"not an open_clip ViT checkpoint: missing {', '.join(missing)} "
            "(open_clip models with a custom or Hugging Face text tower are not supported)"
        )
    vocab, t_width = sd["token_embedding.weight"].shape
    ctx = sd["positional_embedding"].shape[0]
    embed_dim = sd["text_projection"].shape[1]
    v_width, _, patch, _ = sd["visual.conv1.weight"].shape
    n_pos = sd["visual.positional_embedding"].shape[0]
    grid = int(round((n_pos - 1) ** 0.5))
    if grid * grid + 1 != n_pos:
        raise RewardError(f"unsupported vision positional embedding of {n_pos} positions (not a square grid + class token)")
    t_mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    text_heads = text_heads or max(1, t_width // 64)
    vision_heads = vision_heads or max(1, v_width // (80 if v_width == 1280 else 64))
    act = "quick_gelu" if quick_gelu else "gelu"
    return CLIPConfig(
        text_config=dict(
            vocab_size=int(vocab), hidden_size=int(t_width), intermediate_size=int(t_mlp),
            num_hidden_layers=_count_blocks(sd, visual=False), num_attention_heads=int(text_heads),
            max_position_embeddings=int(ctx), hidden_act=act, layer_norm_eps=1e-5, eos_token_id=int(eos_token_id),
            bos_token_id=bos_token_id, pad_token_id=pad_token_id, projection_dim=int(embed_dim),
        ),
        vision_config=dict(
            hidden_size=int(v_width), intermediate_size=int(v_mlp), num_hidden_layers=_count_blocks(sd, visual=True),
            num_attention_heads=int(vision_heads), image_size=int(grid * patch), patch_size=int(patch),
            hidden_act=act, layer_norm_eps=1e-5, projection_dim=int(embed_dim),
        ),
        projection_dim=int(embed_dim),
    )


def convert_openclip_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split / transpose) open_clip ViT CLIP weights to transformers CLIPModel names."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in sd.items():
        if k in _IGNORED:
            continue
        if k in _TOP:
            out[_TOP[k]] = v
            continue
        if k in _TRANSPOSED:
            out[_TRANSPOSED[k]] = v.t().contiguous()
            continue
        m = _BLOCK.match(k)
        if m:
            tower = "vision_model" if m.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{m.group(2)}."
            part = m.group(3)
            if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if part.endswith("weight") else "bias"
                q, kk, vv = v.chunk(3, dim=0)
                out[prefix + f"self_attn.q_proj.{kind}"] = q.contiguous()
                out[prefix + f"self_attn.k_proj.{kind}"] = kk.contiguous()
                out[prefix + f"self_attn.v_proj.{kind}"] = vv.contiguous()
                continue
            if part in _BLOCK_PARTS:
                out[prefix + _BLOCK_PARTS[part]] = v
                continue
        unknown.append(k)
    if unknown:
        shown = ", ".join(sorted(unknown)[:8]) + (" ..." if len(unknown) > 8 else "")
        raise RewardError(
            f"unexpected open_clip weights {shown}: this looks like a variant (layer scale, attentional pooling, "
            "patch norm, ...) that the ViT converter does not handle"
        )
    return out


def clip_vision_config_from_openclip(sd: Mapping[str, torch.Tensor], vision_heads: int | None = None,
                                     quick_gelu: bool = False):
    """A transformers CLIPVisionConfig with the sizes of the ``visual.*`` part of an open_clip / OpenAI
    CLIP ViT state dict (for image towers saved without their text tower, such as CSD's)."""
    from transformers import CLIPVisionConfig

    required = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj"]
    missing = [k for k in required if k not in sd]
    if missing:
        raise RewardError(f"not a CLIP ViT image tower: missing {', '.join(missing)}")
    v_width, _, patch, _ = sd["visual.conv1.weight"].shape
    n_pos = sd["visual.positional_embedding"].shape[0]
    grid = int(round((n_pos - 1) ** 0.5))
    if grid * grid + 1 != n_pos:
        raise RewardError(f"unsupported vision positional embedding of {n_pos} positions (not a square grid + class token)")
    if "visual.transformer.resblocks.0.mlp.c_fc.weight" not in sd:
        raise RewardError("no vision transformer blocks (visual.transformer.resblocks.N.*) in the checkpoint")
    v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    embed_dim = sd["visual.proj"].shape[1]
    vision_heads = vision_heads or max(1, v_width // (80 if v_width == 1280 else 64))
    return CLIPVisionConfig(
        hidden_size=int(v_width), intermediate_size=int(v_mlp), num_hidden_layers=_count_blocks(sd, visual=True),
        num_attention_heads=int(vision_heads), image_size=int(grid * patch), patch_size=int(patch),
        hidden_act="quick_gelu" if quick_gelu else "gelu", layer_norm_eps=1e-5, projection_dim=int(embed_dim),
    )


def clip_vision_model_from_openclip(sd: Mapping[str, torch.Tensor], config) -> torch.nn.Module:
    """Build a transformers CLIPVisionModelWithProjection from the ``visual.*`` weights (strictly)."""
    from transformers import CLIPVisionModelWithProjection

    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    return _load_converted(CLIPVisionModelWithProjection, config, convert_openclip_state_dict(visual))


def clip_model_from_openclip(sd: Mapping[str, torch.Tensor], config) -> torch.nn.Module:
    """Build a transformers CLIPModel and load converted open_clip weights into it (strictly)."""
    from transformers import CLIPModel

    return _load_converted(CLIPModel, config, convert_openclip_state_dict(sd))


def _load_converted(model_cls, config, converted: dict[str, torch.Tensor]) -> torch.nn.Module:
    try:
        from accelerate import init_empty_weights
    except ImportError:  # pragma: no cover - accelerate is a dependency; fall back to a normal init
        model = model_cls(config)
        assign = False
    else:
        # Parameters on the meta device (no random init of ~1e9 weights); buffers stay real.
        with init_empty_weights(include_buffers=False):
            model = model_cls(config)
        assign = True
    expected = set(model.state_dict().keys())
    missing = sorted(expected - set(converted))
    extra = sorted(set(converted) - expected)
    if missing or extra:
        raise RewardError(
            f"open_clip checkpoint does not match the converted architecture: missing {missing[:6]}, unexpected {extra[:6]}"
        )
    for k, v in model.state_dict().items():
        if tuple(converted[k].shape) != tuple(v.shape):
            raise RewardError(f"shape mismatch for {k}: checkpoint {tuple(converted[k].shape)}, model {tuple(v.shape)}")
    model.load_state_dict(converted, strict=True, assign=assign)
    return model
