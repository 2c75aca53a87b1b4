"""One tiny test case per model-family variant, for the shared family harness.

`tests/test_families.py` runs every check on every case (CPU, random weights, nothing
downloaded); `tests/comfy_scripts/families_in_comfyui.py` runs the ComfyUI half with ComfyUI's
interpreter. Adding a family to the harness = one `FamilyCase` below:

    FamilyCase("my-family", "my_family", pipeline=tiny_my_pipeline, comfy=my_comfy_model)

- `pipeline(tmp, seed)` builds the family's diffusers pipeline from configs with random weights
  at a generous init (`tiny_pipelines.reinit_weights`: std 1 / sqrt(fan_in); with the library's 0.02 a
  LoRA barely moves the output) and 64x64 images;
- `comfy(config, state_dict)` (runs inside ComfyUI, may import `comfy`) builds the same
  transformer as a ComfyUI MODEL from the diffusers config and weights, the way ComfyUI loads a
  diffusers-format checkpoint (its own key converter), or None when ComfyUI has no such model;
- `comfy_conditioning(row)` turns one prompt's diffusers conditioning into ComfyUI's
  `(cross_attn, extras)` (default: token embeddings + pooled output, SD3 / Flux).
Only torch is imported here, so ComfyUI's python (without diffusers) can import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tiny_pipelines import (
    tiny_chroma_pipeline,
    tiny_flux2_klein_pipeline,
    tiny_flux2_pipeline,
    tiny_flux_pipeline,
    tiny_hidream_pipeline,
    tiny_hunyuan_image_pipeline,
    tiny_lumina2_pipeline,
    tiny_qwen_image_pipeline,
    tiny_sd3_pipeline,
    tiny_wan_pipeline,
    tiny_z_image_pipeline,
)


def pooled_conditioning(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """SD3 / Flux: the token embeddings are ComfyUI's cross_attn, the pooled CLIP embedding its
    pooled_output."""
    return row["prompt_embeds"], {"pooled_output": row["pooled"]}


@dataclass(frozen=True)
class FamilyCase:
    id: str  # test id, e.g. "flux-schnell"
    family: str  # registered family name
    pipeline: Callable[[Path, int], Any]  # (tmp folder, seed) -> tiny diffusers pipeline
    comfy: Callable[[dict, dict], Any] | None = None  # (transformer config, diffusers state dict) -> ModelPatcher
    comfy_conditioning: Callable[[dict], tuple[torch.Tensor, dict]] = pooled_conditioning
    #: FamilyOptions -> keyword arguments of the pipeline's __call__ for "no CFG, the same guidance".
    pipeline_kwargs: Callable[[Any], dict[str, Any]] = lambda options: {"guidance_scale": 1.0}
    #: FDFO's cfg_scale -> keyword arguments of the pipeline's __call__ for the same true CFG with an
    #: empty negative prompt; None when the pipeline has no true CFG (guidance-distilled models).
    cfg_kwargs: Callable[[float], dict[str, Any]] | None = None
    #: The pipeline's output -> images [B, 3, H, W] in [0, 1] (video pipelines return frames).
    pipeline_images: Callable[[Any], torch.Tensor] = lambda output: output.images
    max_sequence_length: int = 8
    #: The tiny pipeline survives save_pretrained / from_pretrained unchanged (False where the
    #: builder sets pipeline attributes that are not saved).
    folder_round_trip: bool = True
    size: int = 64  # image height = width in pixels
    #: Image pixels per latent cell (8: the VAE's 8x; 16: Flux.2's 2x2-patched latents, Wan 2.2's
    #: 16x VAE; 32: HunyuanImage's 32x VAE) ...
    latent_cell: int = 8
    #: ... and image sizes are multiples of this (latent cell x the transformer's patch).
    size_multiple: int = 16
    #: This case runs the (slower) training test of its family ...
    train: bool = False
    #: ... with these changes to the harness's training config (epochs, churn, ...) ...
    train_overrides: dict[str, Any] = field(default_factory=dict)
    #: ... on this pipeline (default: `pipeline`; a narrower one keeps the test fast) ...
    train_pipeline: Callable[[Path, int], Any] | None = None
    #: ... with this many text tokens (default: `max_sequence_length`).
    train_max_sequence_length: int | None = None
    #: The ComfyUI half runs from this ComfyUI version on (older ones cannot load the model; the
    #: nodes refuse it there by name, `Family.comfy_since`) ...
    comfy_since: str | None = None
    #: ... on this pipeline (default: `pipeline`; e.g. a width ComfyUI's model code needs) ...
    comfy_pipeline: Callable[[Path, int], Any] | None = None
    #: ... with this many text tokens (default: `max_sequence_length`) ...
    comfy_max_sequence_length: int | None = None
    #: ... and these three prompts (default: family_harness.PROMPTS).
    comfy_prompts: tuple[str, ...] | None = None


# --- ComfyUI builders (run with ComfyUI's python) -------------------------------------------------


def comfy_model(state_dict: dict, optional: tuple[str, ...] = (), **full_size_only):
    """A ComfyUI MODEL from ComfyUI-native weights, fp32 on the CPU, built as UNETLoader builds
    one: ComfyUI's own detector reads the architecture from the weights
    (`comfy.model_detection.detect_unet_config`) and picks the family class
    (`model_config_from_unet_config`). Only what the detector hard-codes for the published full-size
    models (e.g. Flux's 24 heads, Lumina 2's width) is replaced, by `full_size_only`, the tiny
    model's true values. Whatever a newer ComfyUI adds to a family's configuration comes from its
    own detector, so the fixture follows it (v0.8.0 added `txt_ids_dims` to Flux, three keys to
    HunyuanVideo, ...). `optional`: weights some ComfyUI versions' models have and others not
    (loaded where the model has them)."""
    import comfy.model_detection
    import comfy.model_patcher

    unet = comfy.model_detection.detect_unet_config(state_dict, "")
    if unet is None:
        raise RuntimeError("ComfyUI's detector does not recognise these weights")
    unet.update(full_size_only)
    config = comfy.model_detection.model_config_from_unet_config(unet, state_dict)
    if config is None:
        raise RuntimeError(f"ComfyUI has no model class for {unet.get('image_model')!r} with this configuration")
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    own = base.diffusion_model.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if k in own or k not in optional}
    missing, unexpected = base.diffusion_model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"ComfyUI {type(config).__name__}: weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def comfy_sd3(config: dict, state_dict: dict):
    """SD3 / SD3.5: ComfyUI's own loader detects a diffusers MMDiT (UNETLoader's path)."""
    import comfy.sd

    return comfy.sd.load_diffusion_model_state_dict(dict(state_dict), model_options={"dtype": torch.float32})


def comfy_flux(config: dict, state_dict: dict):
    """Flux.1: ComfyUI's converter of diffusers Flux keys, then its detector (dev / Kontext or
    schnell from the guidance keys); hidden size, heads and RoPE axes are the tiny model's."""
    from comfy.model_detection import convert_diffusers_mmdit

    native = convert_diffusers_mmdit(dict(state_dict), "")
    return comfy_model(native, hidden_size=config["num_attention_heads"] * config["attention_head_dim"],
                       num_heads=config["num_attention_heads"], axes_dim=list(config["axes_dims_rope"]),
                       context_in_dim=config["joint_attention_dim"])


def qwen_conditioning(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Qwen-Image: ComfyUI's text encoder gives exactly the prompt's tokens (no padding, no mask)."""
    return row["prompt_embeds"][:, : int(row["prompt_mask"].sum())], {}


def comfy_qwen_image(config: dict, state_dict: dict):
    """Qwen-Image: ComfyUI names its modules as diffusers does; its detector hard-codes the width
    (heads, head size, text width, RoPE axes)."""
    return comfy_model(dict(state_dict), patch_size=config["patch_size"], out_channels=config["out_channels"],
                       attention_head_dim=config["attention_head_dim"], num_attention_heads=config["num_attention_heads"],
                       joint_attention_dim=config["joint_attention_dim"], axes_dims_rope=list(config["axes_dims_rope"]))


def chroma_conditioning(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Chroma: the T5 tokens Chroma attends to (the prompt's and one padding token); no pooled
    embedding (ComfyUI's T5 CLIP gives None)."""
    return row["prompt_embeds"][:, : int(row["prompt_mask"].sum())], {"pooled_output": None}


def comfy_chroma(config: dict, state_dict: dict):
    """Chroma: ComfyUI's converter of diffusers Flux keys covers the blocks; the approximator
    (`distilled_guidance_layer`) is renamed by hand (ComfyUI loads only original-format Chroma files:
    linear_1 / linear_2 / norms.N.weight there are in_layer / out_layer / norms.N.scale)."""
    from comfy.model_detection import convert_diffusers_mmdit

    sd = dict(state_dict)
    approximator = {k: sd.pop(k) for k in list(sd) if k.startswith("distilled_guidance_layer.")}
    native = convert_diffusers_mmdit(sd, "")
    for k, v in approximator.items():
        native[k.replace(".linear_1.", ".in_layer.").replace(".linear_2.", ".out_layer.")
               .replace(".weight", ".scale") if ".norms." in k else
               k.replace(".linear_1.", ".in_layer.").replace(".linear_2.", ".out_layer.")] = v
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    return comfy_model(native, in_channels=config["in_channels"], out_channels=config["in_channels"], hidden_size=hidden,
                       num_heads=config["num_attention_heads"], axes_dim=list(config["axes_dims_rope"]),
                       context_in_dim=config["joint_attention_dim"], in_dim=config["approximator_num_channels"],
                       out_dim=hidden, hidden_dim=config["approximator_hidden_dim"], n_layers=config["approximator_layers"])


def hidream_conditioning(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """HiDream: T5 tokens are the cross_attn, the Llama layers [1, layers, L, D] and the pooled
    CLIP-L + CLIP-G embedding ride along (ComfyUI's HiDream CLIP gives the same keys)."""
    return row["t5"], {"pooled_output": row["pooled"], "conditioning_llama3": row["llama3"]}


def comfy_hidream(config: dict, state_dict: dict):
    """HiDream: ComfyUI names its modules as diffusers does; its detector hard-codes the sizes."""
    keys = ("patch_size", "in_channels", "out_channels", "num_layers", "num_single_layers", "attention_head_dim",
            "num_attention_heads", "caption_channels", "text_emb_dim", "num_routed_experts", "num_activated_experts",
            "axes_dims_rope", "max_resolution", "llama_layers")
    return comfy_model(dict(state_dict), **{k: list(config[k]) if isinstance(config[k], (list, tuple)) else config[k] for k in keys})


# Wan: diffusers names -> ComfyUI's (the original Wan checkpoint names). The inverse of diffusers'
# `convert_wan_transformer_to_diffusers` (tests/test_families.py checks that it is), applied in order.
_WAN_TO_COMFY = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."),
    (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."), (".to_out.0.", ".o."),
    (".ffn.net.0.proj.", ".ffn.0."), (".ffn.net.2.", ".ffn.2."),
    (".norm2.", ".norm__swap."), (".norm3.", ".norm2."), (".norm__swap.", ".norm3."),  # diffusers swaps them
    (".scale_shift_table", ".modulation"),
)


def wan_diffusers_to_comfy(state_dict: dict) -> dict:
    """A diffusers WanTransformer3DModel state dict in ComfyUI's (Wan's original) key names."""
    out = {}
    for key, value in state_dict.items():
        if key == "scale_shift_table":
            key = "head.modulation"
        elif key.startswith("proj_out."):
            key = "head.head." + key[len("proj_out."):]
        else:
            for old, new in _WAN_TO_COMFY:
                key = key.replace(old, new)
        out[key] = value
    return out


def wan_conditioning(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Wan: the zero-padded UMT5 tokens are the cross-attention context (ComfyUI pads the same way)."""
    return row["prompt_embeds"], {}


def comfy_wan(config: dict, state_dict: dict):
    """Wan 2.1 (WAN21_T2V) / Wan 2.2 TI2V-5B (WAN22_T2V, 48 channels): ComfyUI has no converter of
    diffusers Wan keys (the inverse of diffusers' is above); its detector hard-codes 128-wide heads
    and the text width."""
    return comfy_model(wan_diffusers_to_comfy(state_dict), num_heads=config["num_attention_heads"],
                       patch_size=tuple(config["patch_size"]), freq_dim=config["freq_dim"], text_dim=config["text_dim"],
                       cross_attn_norm=config["cross_attn_norm"], eps=config["eps"])


# Lumina 2: diffusers names -> ComfyUI's (NextDiT, the original checkpoint names); the inverse of
# diffusers' `convert_lumina2_to_diffusers` (checked in tests/test_families.py), applied in order.
_LUMINA2_TO_COMFY = (
    ("time_caption_embed.timestep_embedder.linear_1.", "t_embedder.mlp.0."),
    ("time_caption_embed.timestep_embedder.linear_2.", "t_embedder.mlp.2."),
    ("time_caption_embed.caption_embedder.", "cap_embedder."),
    ("norm_out.linear_1.", "final_layer.adaLN_modulation.1."),
    ("norm_out.linear_2.", "final_layer.linear."),
    (".attn.to_out.0.", ".attention.out."), (".attn.norm_q.", ".attention.q_norm."),
    (".attn.norm_k.", ".attention.k_norm."),
    (".feed_forward.linear_1.", ".feed_forward.w1."), (".feed_forward.linear_2.", ".feed_forward.w2."),
    (".feed_forward.linear_3.", ".feed_forward.w3."),
    (".norm1.linear.", ".adaLN_modulation.1."), (".norm1.norm.", ".attention_norm1."), (".norm1.", ".attention_norm1."),
    (".norm2.", ".attention_norm2."),
)


def lumina2_diffusers_to_comfy(state_dict: dict) -> dict:
    """A diffusers Lumina2Transformer2DModel state dict in ComfyUI's key names: q, k, v fused into
    `attention.qkv` (in that order), and NextDiT's unused `norm_final` (diffusers drops it; ComfyUI
    v0.8.0's NextDiT no longer has it) as ones."""
    out = {}
    for key, value in state_dict.items():
        if ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        if ".attn.to_q." in key:
            parts = [state_dict[key.replace(".to_q.", f".to_{p}.")] for p in "qkv"]
            out[key.replace(".attn.to_q.", ".attention.qkv.")] = torch.cat(parts, dim=0)
            continue
        for old, new in _LUMINA2_TO_COMFY:
            key = key.replace(old, new)
        out[key] = value
    out["norm_final.weight"] = torch.ones(state_dict["x_embedder.weight"].shape[0])
    return out


def lumina2_conditioning(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Lumina 2: ComfyUI's Gemma encoder gives the prompt's own tokens and an all-ones attention mask
    (the model reads their count, `num_tokens`, from it)."""
    mask = row["prompt_mask"][0].bool()
    return row["prompt_embeds"][:, mask], {"attention_mask": torch.ones(1, int(mask.sum()), dtype=torch.long)}


def comfy_lumina2(config: dict, state_dict: dict):
    """Lumina 2: ComfyUI has no converter of diffusers Lumina 2 keys (the inverse of diffusers' is
    above); its detector hard-codes the heads (24 / 8), RoPE axes and FFN size of the published
    model (v0.3.64 also the width, 2304)."""
    native = lumina2_diffusers_to_comfy(state_dict)
    # The FFN width is read from the weights: ComfyUI rounds its FFN width up to a multiple of
    # `multiple_of` from a base that changed between versions (v0.3.64: 4 x dim x multiplier,
    # v0.8.0: dim x multiplier), so with no multiplier and `multiple_of` = the true width, every
    # version builds the true width.
    ffn = native["layers.0.feed_forward.w1.weight"].shape[0]
    return comfy_model(native, optional=("norm_final.weight",), patch_size=config["patch_size"],
                       in_channels=config["in_channels"], dim=config["hidden_size"], n_refiner_layers=config["num_refiner_layers"],
                       n_heads=config["num_attention_heads"], n_kv_heads=config["num_kv_heads"],
                       multiple_of=ffn, ffn_dim_multiplier=None,
                       norm_eps=config["norm_eps"], axes_dims=list(config["axes_dim_rope"]),
                       axes_lens=list(config["axes_lens"]))


# HunyuanImage 2.1: diffusers names -> ComfyUI's (its HunyuanVideo DiT), applied in order; fused
# linears are built in `hunyuan_image_diffusers_to_comfy`.
_HUNYUAN_TO_COMFY = (
    ("x_embedder.proj.", "img_in.proj."),
    ("time_guidance_embed.timestep_embedder.linear_1.", "time_in.in_layer."),
    ("time_guidance_embed.timestep_embedder.linear_2.", "time_in.out_layer."),
    ("context_embedder.time_text_embed.timestep_embedder.linear_1.", "txt_in.t_embedder.in_layer."),
    ("context_embedder.time_text_embed.timestep_embedder.linear_2.", "txt_in.t_embedder.out_layer."),
    ("context_embedder.time_text_embed.text_embedder.linear_1.", "txt_in.c_embedder.in_layer."),
    ("context_embedder.time_text_embed.text_embedder.linear_2.", "txt_in.c_embedder.out_layer."),
    ("context_embedder.proj_in.", "txt_in.input_embedder."),
    ("context_embedder.token_refiner.refiner_blocks.", "txt_in.individual_token_refiner.blocks."),
    (".attn.to_out.0.", ".self_attn.proj."),  # only the refiner's is left when this runs
    (".ff.net.0.proj.", ".mlp.0."), (".ff.net.2.", ".mlp.2."), (".norm_out.linear.", ".adaLN_modulation.1."),
    ("context_embedder_2.norm.", "byt5_in.layernorm."), ("context_embedder_2.linear_1.", "byt5_in.fc1."),
    ("context_embedder_2.linear_2.", "byt5_in.fc2."), ("context_embedder_2.linear_3.", "byt5_in.fc3."),
)
_HUNYUAN_DOUBLE = (
    ("norm1.linear.", "img_mod.lin."), ("norm1_context.linear.", "txt_mod.lin."),
    ("attn.to_out.0.", "img_attn.proj."), ("attn.to_add_out.", "txt_attn.proj."),
    ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"), ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
    ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
    ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
    ("ff.net.0.proj.", "img_mlp.0."), ("ff.net.2.", "img_mlp.2."),
    ("ff_context.net.0.proj.", "txt_mlp.0."), ("ff_context.net.2.", "txt_mlp.2."),
)
_HUNYUAN_SINGLE = (
    ("proj_out.", "linear2."), ("norm.linear.", "modulation.lin."),
    ("attn.norm_q.weight", "norm.query_norm.scale"), ("attn.norm_k.weight", "norm.key_norm.scale"),
)


def hunyuan_image_diffusers_to_comfy(state_dict: dict) -> dict:
    """A diffusers HunyuanImageTransformer2DModel state dict in ComfyUI's (HunyuanVideo) key names:
    q / k / v (and the single blocks' MLP input) fused in order, the final modulation's halves
    swapped (diffusers: scale, shift; ComfyUI: shift, scale)."""
    sd, out = dict(state_dict), {}

    def fuse(names, comfy_key):
        for kind in ("weight", "bias"):
            parts = [sd.pop(f"{n}.{kind}") for n in names]
            out[f"{comfy_key}.{kind}"] = torch.cat(parts, dim=0)

    blocks = {k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")}
    for i in sorted(blocks):
        d, c = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        fuse([d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"], c + "img_attn.qkv")
        fuse([d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"], c + "txt_attn.qkv")
        for key in [k for k in sd if k.startswith(d)]:
            rest = key[len(d):]
            for old, new in _HUNYUAN_DOUBLE:
                rest = rest.replace(old, new)
            out[c + rest] = sd.pop(key)
    singles = {k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")}
    for i in sorted(singles):
        d, c = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        fuse([d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"], c + "linear1")
        for key in [k for k in sd if k.startswith(d)]:
            rest = key[len(d):]
            for old, new in _HUNYUAN_SINGLE:
                rest = rest.replace(old, new)
            out[c + rest] = sd.pop(key)
    refiners = {k.split(".")[3] for k in sd if k.startswith("context_embedder.token_refiner.refiner_blocks.")}
    for i in sorted(refiners):
        d = f"context_embedder.token_refiner.refiner_blocks.{i}.attn."
        fuse([d + "to_q", d + "to_k", d + "to_v"], f"txt_in.individual_token_refiner.blocks.{i}.self_attn.qkv")
    for kind in ("weight", "bias"):
        scale, shift = sd.pop(f"norm_out.linear.{kind}").chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{kind}"] = torch.cat([shift, scale], dim=0)
        out[f"final_layer.linear.{kind}"] = sd.pop(f"proj_out.{kind}")
    for key, value in sd.items():
        for old, new in _HUNYUAN_TO_COMFY:
            key = key.replace(old, new)
        out[key] = value
    return out


def hunyuan_image_conditioning(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """HunyuanImage 2.1: ComfyUI's encoder gives the prompt's own Qwen tokens (no mask) and, for
    quoted text, the ByT5 tokens as `conditioning_byt5small`."""
    mask = row["prompt_mask"][0].bool()
    extras = {}
    glyph = row["glyph_mask"][0].bool()
    if bool(glyph.any()):
        extras["conditioning_byt5small"] = row["glyph_embeds"][:, glyph]
    return row["prompt_embeds"][:, mask], extras


def comfy_hunyuan_image(config: dict, state_dict: dict):
    """HunyuanImage 2.1: no converter of diffusers keys in ComfyUI; its detector hard-codes 128-wide
    heads, the RoPE axes and theta."""
    return comfy_model(hunyuan_image_diffusers_to_comfy(state_dict), mlp_ratio=config["mlp_ratio"],
                       num_heads=config["num_attention_heads"], axes_dim=list(config["rope_axes_dim"]),
                       theta=int(config["rope_theta"]))


def video_frame(output) -> torch.Tensor:
    """A video pipeline's frames [B, T, 3, H, W] -> the first frame [B, 3, H, W]."""
    return output.frames[:, 0]


def flux_kwargs(options) -> dict[str, Any]:
    return {"guidance_scale": options.guidance}


# --- the cases -------------------------------------------------------------------------------------

CASES = [
    # hidden = 64 x depth so that ComfyUI's loader detects it
    FamilyCase("sd3", "sd3", lambda tmp, seed: tiny_sd3_pipeline(tmp, seed, num_layers=2, head_dim=64, heads=2),
               comfy=comfy_sd3, train=True, train_pipeline=lambda tmp, seed: tiny_sd3_pipeline(tmp, seed),
               train_overrides={"epochs": 6, "churn_strength": 0.1}),
    FamilyCase("sd35-medium", "sd3",
               lambda tmp, seed: tiny_sd3_pipeline(tmp, seed, num_layers=2, head_dim=64, heads=2,
                                                   dual_attention_layers=(0,), qk_norm="rms_norm"),
               comfy=comfy_sd3),
    # SD3.5 Large / Large Turbo: RMS q/k-norm without Medium's dual attention (ComfyUI reads both from the keys).
    FamilyCase("sd35-large", "sd3",
               lambda tmp, seed: tiny_sd3_pipeline(tmp, seed, num_layers=2, head_dim=64, heads=2, qk_norm="rms_norm"),
               comfy=comfy_sd3),
    FamilyCase("flux-dev", "flux", lambda tmp, seed: tiny_flux_pipeline(tmp, seed), comfy=comfy_flux,
               pipeline_kwargs=flux_kwargs, train=True, train_overrides={"epochs": 16, "churn_strength": 0.02}),
    FamilyCase("flux-schnell", "flux", lambda tmp, seed: tiny_flux_pipeline(tmp, seed, guidance_embeds=False),
               comfy=comfy_flux, pipeline_kwargs=flux_kwargs),
    # Kontext's pipeline sizes its output to max_area (default 1024^2), whatever height / width say.
    FamilyCase("flux-kontext", "flux",
               lambda tmp, seed: tiny_flux_pipeline(tmp, seed, pipeline="FluxKontextPipeline"), comfy=comfy_flux,
               pipeline_kwargs=lambda options: {**flux_kwargs(options), "max_area": 64 * 64}),
]
CASES += [
    FamilyCase("qwen-image", "qwen_image", lambda tmp, seed: tiny_qwen_image_pipeline(tmp, seed), comfy=comfy_qwen_image,
               comfy_conditioning=qwen_conditioning, pipeline_kwargs=lambda options: {"true_cfg_scale": 1.0},
               # (its builder sets prompt_template_encode_start_idx for the byte tokenizer; not saved)
               folder_round_trip=False,
               train=True, train_overrides={"epochs": 4}),
]
CASES += [
    # The true 19 + 38 blocks (ComfyUI's modulation count), 16 wide; prompts are cut to 8 tokens.
    FamilyCase("chroma", "chroma", lambda tmp, seed: tiny_chroma_pipeline(tmp, seed), comfy=comfy_chroma,
               comfy_conditioning=chroma_conditioning, train=True,
               train_pipeline=lambda tmp, seed: tiny_chroma_pipeline(tmp, seed, num_layers=1, num_single_layers=1)),
]
CASES += [
    FamilyCase("hidream", "hidream", lambda tmp, seed: tiny_hidream_pipeline(tmp, seed), comfy=comfy_hidream,
               comfy_conditioning=hidream_conditioning, cfg_kwargs=lambda cfg: {"guidance_scale": cfg}, train=True),
]
# ComfyUI halves from v0.8.0 (older ComfyUI cannot load Flux.2 / Z-Image; the nodes refuse them there,
# tests/test_family_registry.py and tests/comfy_scripts/nodes_in_comfyui.py). Their text encoders
# have the layers the pipelines read hidden states from (Mistral 30, Qwen3 27). Text tokens are
# bytes: 48 hold a chat-templated prompt, Flux.2 needs 256 for its system message and the prompt.
# In ComfyUI, Flux.2's text is 512 tokens (ComfyUI pads shorter text on the left) and its time
# embedding 256 channels wide; Z-Image's prompts are cut to 32 tokens (ComfyUI and diffusers place
# pad tokens at different RoPE positions, see fdfo_core/families/z_image.py) at width 1056.
CASES += [
    FamilyCase("flux2", "flux2", lambda tmp, seed: tiny_flux2_pipeline(tmp, seed), latent_cell=16,
               pipeline_kwargs=lambda options: {"guidance_scale": options.guidance}, max_sequence_length=256,
               # (48 tokens of system message: the brightness reward ignores the prompt)
               train=True, train_max_sequence_length=48, train_overrides={"epochs": 6},
               comfy=lambda config, sd: comfy_flux2(config, sd), comfy_conditioning=lambda row: flux2_conditioning(row),
               comfy_since="0.8.0", comfy_max_sequence_length=512,
               comfy_pipeline=lambda tmp, seed: tiny_flux2_pipeline(tmp, seed, timestep_guidance_channels=256)),
    FamilyCase("flux2-klein", "flux2_klein", lambda tmp, seed: tiny_flux2_klein_pipeline(tmp, seed), latent_cell=16,
               pipeline_kwargs=lambda options: {"guidance_scale": 1.0}, max_sequence_length=48,
               cfg_kwargs=lambda cfg: {"guidance_scale": cfg},
               train=True, train_overrides={"epochs": 6},
               comfy=lambda config, sd: comfy_flux2(config, sd), comfy_conditioning=lambda row: flux2_conditioning(row),
               comfy_since="0.8.0", comfy_max_sequence_length=512,
               comfy_pipeline=lambda tmp, seed: tiny_flux2_klein_pipeline(tmp, seed, timestep_guidance_channels=256)),
    FamilyCase("z-image", "z_image", lambda tmp, seed: tiny_z_image_pipeline(tmp, seed),
               pipeline_kwargs=lambda options: {"guidance_scale": 0.0}, max_sequence_length=48,
               cfg_kwargs=lambda cfg: {"guidance_scale": cfg - 1},  # Z-Image's g: v_c + g (v_c - v_u)
               train=True, train_overrides={"epochs": 6},
               comfy=lambda config, sd: comfy_z_image(config, sd), comfy_conditioning=lambda row: z_image_conditioning(row),
               comfy_since="0.8.0", comfy_max_sequence_length=32,
               comfy_prompts=("a large red circle", "two blue squares", "a green triangle"),  # 32+ tokens each
               comfy_pipeline=lambda tmp, seed: tiny_z_image_pipeline(tmp, seed, dim=1056)),
    FamilyCase("wan21", "wan", lambda tmp, seed: tiny_wan_pipeline(tmp, seed), comfy=comfy_wan,
               comfy_conditioning=wan_conditioning, pipeline_images=video_frame,
               pipeline_kwargs=lambda options: {"guidance_scale": 1.0, "num_frames": 1}, train=True,
               train_overrides={"epochs": 4, "churn_strength": 0.1}),
    # Wan 2.2 TI2V-5B: 48 channels, the 16x residual VAE, a timestep per latent patch.
    FamilyCase("wan22-5b", "wan", lambda tmp, seed: tiny_wan_pipeline(tmp, seed, wan22_5b=True), comfy=comfy_wan,
               comfy_conditioning=wan_conditioning, pipeline_images=video_frame,
               pipeline_kwargs=lambda options: {"guidance_scale": 1.0, "num_frames": 1}, latent_cell=16,
               size_multiple=32),
]
CASES += [
    FamilyCase("lumina2", "lumina2", lambda tmp, seed: tiny_lumina2_pipeline(tmp, seed), comfy=comfy_lumina2,
               comfy_conditioning=lumina2_conditioning, max_sequence_length=48,
               # (its builder shortens the system prompt for the byte tokenizer; not saved)
               folder_round_trip=False, train=True,
               train_overrides={"epochs": 4, "churn_strength": 0.1}),
]
CASES += [
    # 128 px: 4x4 latents of the 32x VAE.
    FamilyCase("hunyuan-image", "hunyuan_image", lambda tmp, seed: tiny_hunyuan_image_pipeline(tmp, seed),
               comfy=comfy_hunyuan_image, comfy_conditioning=hunyuan_image_conditioning, pipeline_kwargs=lambda options: {},
               max_sequence_length=24, size=128, latent_cell=32, size_multiple=32,
               # (its builder sets the template's token count and the text length; not saved)
               folder_round_trip=False, train=True,
               train_overrides={"epochs": 4, "churn_strength": 0.1, "height": 64, "width": 64}),
]
CASES += __import__("family_cases_2026a").CASES  # the 2026 families, part a (issue 26)
CASES += __import__("family_cases_2026b").CASES  # the 2026 families, part b (issue 26)
CASES_BY_ID = {c.id: c for c in CASES}


# --- ComfyUI v0.8.0 and later: Flux.2 and Z-Image ----------------------------------------------------
#
# Built as `comfy_model` builds every ComfyUI fixture (ComfyUI's own detector, only the widths it
# hard-codes replaced). Z-Image needs one more step: the detector sets Z-Image's settings (time scale,
# modulation, pad tokens) and picks the `ZImage` class only at its true width, 3840, so it is asked at
# that width (shapes only, on the meta device) and the picked class is then built at the tiny width
# (`comfy_model_picked_at`).


def comfy_model_picked_at(native: dict, true_shapes: dict, **widths):
    """A ComfyUI MODEL (fp32, CPU) of the `comfy.supported_models` class ComfyUI's detector picks
    for `native` with `true_shapes` {key: shape} in place of the tiny shapes, with the detected
    unet_config's `widths` replaced after the pick."""
    import comfy.model_detection
    import comfy.model_patcher

    probe = {k: torch.empty(true_shapes.get(k, tuple(v.shape)), device="meta") for k, v in native.items()}
    picked = comfy.model_detection.model_config_from_unet(probe, "")
    if picked is None:
        raise RuntimeError("ComfyUI's detector does not recognise the model")
    config = type(picked)({**picked.unet_config, **widths})
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    missing, unexpected = base.diffusion_model.load_state_dict(native, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"ComfyUI {type(config).__name__}: weights do not fit (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def apply_comfy_key_map(state_dict: dict, key_map: dict) -> dict:
    """A diffusers state dict renamed by one of ComfyUI's `comfy.utils.*_to_diffusers` maps
    ({diffusers key: ComfyUI key, or (ComfyUI key, (dim, offset, size)) for a slice of a fused
    tensor}); a diffusers key the map lacks raises."""
    left = sorted(set(state_dict) - set(key_map))
    if left:
        raise KeyError(f"ComfyUI's key map does not cover {left[:5]}")
    out, parts = {}, {}
    for key, value in state_dict.items():
        target = key_map[key]
        if isinstance(target, str):
            out[target] = value
        else:
            parts.setdefault(target[0], []).append((target[1][1], value))
    for key, slices in parts.items():
        out[key] = torch.cat([v for _, v in sorted(slices, key=lambda s: s[0])])
    return out


# Flux.2: diffusers names -> ComfyUI's (BFL's original names); the inverse of diffusers'
# `convert_flux2_transformer_checkpoint_to_diffusers` (tests/test_families.py checks that it is).
_FLUX2_TO_COMFY = (
    ("x_embedder.", "img_in."), ("context_embedder.", "txt_in."),
    ("time_guidance_embed.timestep_embedder.linear_1.", "time_in.in_layer."),
    ("time_guidance_embed.timestep_embedder.linear_2.", "time_in.out_layer."),
    ("time_guidance_embed.guidance_embedder.linear_1.", "guidance_in.in_layer."),
    ("time_guidance_embed.guidance_embedder.linear_2.", "guidance_in.out_layer."),
    ("_modulation_img.linear.", "_modulation_img.lin."), ("_modulation_txt.linear.", "_modulation_txt.lin."),
    ("single_stream_modulation.linear.", "single_stream_modulation.lin."), ("proj_out.", "final_layer.linear."),
)
_FLUX2_DOUBLE = (
    ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"), ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
    ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
    ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
    ("attn.to_out.0.", "img_attn.proj."), ("attn.to_add_out.", "txt_attn.proj."),
    ("ff.linear_in.", "img_mlp.0."), ("ff.linear_out.", "img_mlp.2."),
    ("ff_context.linear_in.", "txt_mlp.0."), ("ff_context.linear_out.", "txt_mlp.2."),
)
_FLUX2_SINGLE = (
    ("attn.to_qkv_mlp_proj.", "linear1."), ("attn.to_out.", "linear2."),
    ("attn.norm_q.weight", "norm.query_norm.scale"), ("attn.norm_k.weight", "norm.key_norm.scale"),
)


def flux2_diffusers_to_comfy(state_dict: dict) -> dict:
    """A diffusers Flux2Transformer2DModel state dict in ComfyUI's (BFL's) key names: q, k, v fused
    per stream, the final modulation's halves swapped (diffusers: scale, shift; ComfyUI: shift,
    scale). (ComfyUI v0.8.0 has no converter of diffusers Flux.2 keys.)"""
    sd, out = dict(state_dict), {}
    for i in sorted({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")}):
        d, c = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        out[c + "img_attn.qkv.weight"] = torch.cat([sd.pop(f"{d}attn.to_{p}.weight") for p in "qkv"])
        out[c + "txt_attn.qkv.weight"] = torch.cat([sd.pop(f"{d}attn.add_{p}_proj.weight") for p in "qkv"])
        for key in [k for k in sd if k.startswith(d)]:
            rest = key[len(d):]
            for old, new in _FLUX2_DOUBLE:
                rest = rest.replace(old, new)
            out[c + rest] = sd.pop(key)
    for i in sorted({k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")}):
        d, c = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for key in [k for k in sd if k.startswith(d)]:
            rest = key[len(d):]
            for old, new in _FLUX2_SINGLE:
                rest = rest.replace(old, new)
            out[c + rest] = sd.pop(key)
    scale, shift = sd.pop("norm_out.linear.weight").chunk(2, dim=0)
    out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale], dim=0)
    for key, value in sd.items():
        for old, new in _FLUX2_TO_COMFY:
            key = key.replace(old, new)
        out[key] = value
    return out


def flux2_conditioning(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Flux.2: the stacked text-encoder states of every token, padding included (the transformer
    attends to all of them); no pooled vector."""
    return row["prompt_embeds"], {"pooled_output": None}


def comfy_flux2(config: dict, state_dict: dict):
    """Flux.2 dev / Klein: the renamed weights through ComfyUI's detector (supported_models.Flux2),
    with the tiny heads and RoPE axes in place of the 48 heads of 128 it hard-codes."""
    widths = {"num_heads": config["num_attention_heads"], "axes_dim": list(config["axes_dims_rope"]),
              "theta": config["rope_theta"]}
    return comfy_model(flux2_diffusers_to_comfy(state_dict), **widths)


def z_image_conditioning(row: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Z-Image: the prompt's own tokens (the model reads their count from the conditioning)."""
    mask = row["prompt_mask"][0].bool()
    return row["prompt_embeds"][:, mask], {}


def comfy_z_image(config: dict, state_dict: dict):
    """Z-Image: ComfyUI's own map of diffusers Z-Image keys (`comfy.utils.z_image_to_diffusers`), its
    detector asked at the true width (3840: the only width at which it sets Z-Image's time scale,
    modulation and pad tokens), then the tiny width, heads and RoPE axes."""
    import comfy.utils

    key_map = comfy.utils.z_image_to_diffusers(
        {"n_layers": config["n_layers"], "dim": config["dim"], "n_refiner_layers": config["n_refiner_layers"]})
    native = apply_comfy_key_map(state_dict, key_map)
    widths = {"dim": config["dim"], "n_heads": config["n_heads"], "n_kv_heads": config["n_kv_heads"],
              "axes_dims": list(config["axes_dims"]), "axes_lens": list(config["axes_lens"]),
              "n_refiner_layers": config["n_refiner_layers"], "rope_theta": config["rope_theta"]}
    return comfy_model_picked_at(native, {"cap_embedder.1.weight": (3840, config["cap_feat_dim"])}, **widths)
