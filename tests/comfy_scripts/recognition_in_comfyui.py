"""Run with ComfyUI's python: the nodes' recognition of ComfyUI's own model classes, at their true widths.

    <comfyui python> tests/comfy_scripts/recognition_in_comfyui.py COMFYUI_ROOT

Each model is built the way ComfyUI's loaders build it: its state dict's keys and shapes (on the
meta device: no memory, no weights) go through ComfyUI's detector
(`comfy.model_detection.model_config_from_unet`), whose `comfy.supported_models` class makes the
model (on the meta device too). The ComfyUI backend's recognition (`model_family`) must then train
Flux.2 dev and Z-Image as their families (and refuse them by name when told the ComfyUI is v0.3.64),
and refuse Chroma Radiance and Kandinsky 5 Image by name with the reason. A model whose classes this
ComfyUI lacks is reported as skipped. Prints one line `RESULT {"check", "ok", ...}` per check.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import traceback
from pathlib import Path

comfy_root = sys.argv[1]
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, comfy_root)
sys.argv = [sys.argv[0], "--cpu"]

import torch  # noqa: E402

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
try:
    import utils.install_util  # noqa: E402,F401  (ComfyUI's start-up imports it before `nodes`)
except ImportError:
    pass
import comfy.model_detection  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402

PKG = "comfyui_fdfo_nodepack"
spec = importlib.util.spec_from_file_location(PKG, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
pack = importlib.util.module_from_spec(spec)
sys.modules[PKG] = pack
spec.loader.exec_module(pack)

import comfyui_fdfo_nodepack.nodes.comfy_models as models_module  # noqa: E402
from comfyui_fdfo_nodepack.fdfo_core.backends.interface import BackendError  # noqa: E402

META = torch.device("meta")


def report(name, ok, **figures):
    print("RESULT " + json.dumps({"check": name, "ok": bool(ok), **figures}), flush=True)


def detected(shapes: dict[str, tuple[int, ...]]):
    """A ComfyUI MODEL on the meta device from ComfyUI's detector, given a state dict's key shapes."""
    sd = {k: torch.empty(s, device=META) for k, s in shapes.items()}
    config = comfy.model_detection.model_config_from_unet(sd, "")
    if config is None:
        raise RuntimeError("ComfyUI's detector does not recognise these keys")
    config.set_inference_dtype(torch.bfloat16, None)
    base = config.get_model(sd, device=META)
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def flux_keys(hidden: int, context: int, extra: dict) -> dict:
    """The keys ComfyUI's detector reads for a Flux-type model with one double and one single block."""
    return {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "single_blocks.0.norm.key_norm.scale": (128,),
            "txt_in.weight": (hidden, context), **extra}


MODELS = {
    # Flux.2 dev: 48 heads of 128 (6144 wide), Mistral Small 3.1 features (3 x 5120), a guidance embedding.
    "Flux2": lambda: detected(flux_keys(6144, 15360, {
        "img_in.weight": (6144, 128), "double_stream_modulation_img.lin.weight": (6 * 6144, 6144),
        "guidance_in.in_layer.weight": (6144, 256)})),
    # Z-Image: width 3840, Qwen3-4B features (2560), pad tokens.
    "ZImage": lambda: detected({"cap_embedder.1.weight": (3840, 2560), "layers.0.attention.qkv.weight": (3 * 3840, 3840),
                                "cap_pad_token": (1, 3840)}),
    # Chroma Radiance: Chroma's blocks (3072 wide, T5 features) with the NeRF pixel head.
    "ChromaRadiance": lambda: detected(flux_keys(3072, 4096, {
        "distilled_guidance_layer.norms.0.scale": (5120,), "nerf_blocks.0.norm.scale": (64,)})),
    # Kandinsky 5 Image (lite): model width 2560, 64 visual channels (16 x 2 x 2).
    "Kandinsky5Image": lambda: detected({
        "visual_transformer_blocks.0.cross_attention.key_norm.weight": (128,), "visual_embeddings.in_layer.bias": (2560,),
        "visual_embeddings.in_layer.weight": (2560, 64), "time_embeddings.in_layer.bias": (512,),
        "visual_transformer_blocks.0.feed_forward.in_layer.weight": (10240, 2560),
        "text_transformer_blocks.0.feed_forward.in_layer.weight": (10240, 2560)}),
}

#: model -> (family it trains as, or None when refused; words the refusal must contain)
EXPECTED = {
    "Flux2": ("flux2", ()),
    "ZImage": ("z_image", ()),
    "ChromaRadiance": (None, ("ChromaRadiance", "Chroma Radiance", "pixel-space")),
    "Kandinsky5Image": (None, ("Kandinsky5Image", "Kandinsky 5 Image", "fdfo train", "Kandinsky5T2IPipeline")),
}


def recognition(name: str):
    family, words = EXPECTED[name]
    if not hasattr(comfy.supported_models, name):
        report(name, True, skipped=f"this ComfyUI has no supported_models.{name}")
        return
    model = MODELS[name]()
    config_class = type(model.model.model_config).__name__
    try:
        got = models_module.model_family(model).name
        message = None
    except BackendError as e:
        got, message = None, str(e)
    ok = config_class == name and got == family and (message is None or all(w in message for w in words))
    if family is not None:  # the same model in a ComfyUI that reports v0.3.64: refused by name, "predates"
        real = models_module.comfyui_version
        models_module.comfyui_version = lambda: "0.3.64"
        try:
            models_module.model_family(model)
            old_message = None
        except BackendError as e:
            old_message = str(e)
        finally:
            models_module.comfyui_version = real
        ok = ok and old_message is not None and "this ComfyUI (v0.3.64) predates" in old_message and "fdfo train" in old_message
        report(name, ok, config=config_class, model=type(model.model).__name__, family=got, message=message,
               as_v0364=old_message and old_message[:400])
        return
    report(name, ok, config=config_class, model=type(model.model).__name__, family=got, message=message and message[:600])


if __name__ == "__main__":
    for name in MODELS:
        try:
            recognition(name)
        except Exception as e:
            report(name, False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
