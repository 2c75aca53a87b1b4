"""Tiny ComfyUI models built the way ComfyUI's loaders build models, for the ComfyUI-gated tests.

ComfyUI's loaders never take a configuration: `comfy.model_detection.detect_unet_config` reads
it from the weights' names and shapes, and `model_config_from_unet_config` picks the family
class. Tests that built tiny models by passing a hand-written configuration to a family class
(`comfy.supported_models.Flux({...})`) broke whenever a ComfyUI release added a constructor
argument (v0.8.0: Flux's `txt_ids_dims`, Chroma's `vec_in_dim`, three HunyuanVideo arguments).
Here the detector runs on a *skeleton*: the few weight names and shapes it reads, as meta
tensors (no memory). What it hard-codes for the published full-size models (Flux's 24 heads,
RoPE axes, ...) is then replaced by the tiny model's sizes. Runs with ComfyUI's python.
"""

from __future__ import annotations

import torch


def detected_config(skeleton: dict[str, tuple[int, ...]], **full_size_only):
    """ComfyUI's model config (a `comfy.supported_models` instance, fp32) for weights with these
    names and shapes, with `full_size_only` replacing what the detector hard-codes."""
    import comfy.model_detection

    sd = {k: torch.empty(shape, device="meta") for k, shape in skeleton.items()}
    unet = comfy.model_detection.detect_unet_config(sd, "")
    if unet is None:
        raise RuntimeError(f"ComfyUI's detector does not recognise a model with weights {sorted(skeleton)[:4]}...")
    unet.update(full_size_only)
    config = comfy.model_detection.model_config_from_unet_config(unet, sd)
    if config is None:
        raise RuntimeError(f"ComfyUI has no model class for {unet.get('image_model')!r} with this configuration")
    config.set_inference_dtype(torch.float32, None)
    return config


def patcher(config, seed: int | None = None, std: float = 0.5):
    """A CPU ModelPatcher of the config's model; with `seed`, weights drawn N(0, std^2 / fan_in)
    (ComfyUI's ops leave weights uninitialised), vectors small."""
    import comfy.model_patcher

    base = config.get_model({})
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in base.diffusion_model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (std / p.shape[-1] ** 0.5 if p.ndim >= 2 else 0.02))
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def _blocks(prefix: str, count: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{i}.norm.weight": (1,) for i in range(count)}


def flux_skeleton(hidden: int, in_channels: int, context: int, vec: int, depth: int, single: int,
                  guidance: bool = True) -> dict[str, tuple[int, ...]]:
    """Flux.1 weight names the detector reads (patch 2: img_in takes 4 x in_channels)."""
    sk = {"double_blocks.0.img_attn.norm.key_norm.scale": (1,), "img_in.weight": (hidden, in_channels * 4),
          "txt_in.weight": (hidden, context), "vector_in.in_layer.weight": (hidden, vec)}
    sk.update(_blocks("double_blocks", depth))
    sk.update(_blocks("single_blocks", single))
    if guidance:
        sk["guidance_in.in_layer.weight"] = (hidden, 256)
    return sk


def tiny_flux_config(hidden=128, in_channels=16, context=32, vec=32, depth=2, single=2, heads=2, axes=(16, 24, 24),
                     mlp_ratio=2.0, guidance=True):
    """A Flux.1 (dev with guidance, else schnell; 96 input channels: Fill) config of this size."""
    return detected_config(flux_skeleton(hidden, in_channels, context, vec, depth, single, guidance),
                           num_heads=heads, axes_dim=list(axes), mlp_ratio=mlp_ratio,
                           hidden_size=hidden, context_in_dim=context)  # (v0.3.64's detector hard-codes both)


def tiny_hunyuan_video_config(hidden=64, channels=16, context=32, heads=2, axes=(8, 12, 12)):
    """HunyuanVideo (3-D patches [1, 2, 2]), one double and one single block."""
    sk = {"txt_in.individual_token_refiner.blocks.0.norm1.weight": (hidden,),
          "img_in.proj.weight": (hidden, channels, 1, 2, 2), "final_layer.linear.weight": (channels * 4, hidden),
          "txt_in.input_embedder.weight": (hidden, context), "vector_in.in_layer.weight": (hidden, 768),
          "guidance_in.in_layer.weight": (hidden, 256)}
    sk.update(_blocks("double_blocks", 1))
    sk.update(_blocks("single_blocks", 1))
    return detected_config(sk, num_heads=heads, axes_dim=list(axes), mlp_ratio=2.0)


def tiny_wan21_config(dim=32, ffn=64, heads=2, text_dim=32, channels=16):
    """Wan 2.1 text-to-video, one block."""
    sk = {"head.modulation": (1, 2, dim), "head.head.weight": (channels * 4, dim), "blocks.0.ffn.0.weight": (ffn, dim),
          "patch_embedding.weight": (dim, channels, 1, 2, 2)}
    return detected_config(sk, num_heads=heads, text_dim=text_dim)


def tiny_lumina2_config(dim=64, cap_feat=32, layers=1, heads=2, kv_heads=2, axes=(8, 12, 12), lens=(64, 64, 64)):
    """Lumina 2 (NextDiT) with one layer and one refiner layer of each kind."""
    sk = {"cap_embedder.1.weight": (dim, cap_feat)}
    sk.update(_blocks("layers", layers))
    return detected_config(sk, dim=dim, n_heads=heads, n_kv_heads=kv_heads, n_refiner_layers=1, axes_dims=list(axes),
                           axes_lens=list(lens))
