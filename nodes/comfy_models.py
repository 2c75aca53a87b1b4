"""What a ComfyUI MODEL, CLIP and VAE are, and whether FDFO trains them (`comfy_backend` uses it).

Cheap checks that load nothing: the model's family (from `fdfo_core.families`) or a refusal that
says why and what is supported, the checkpoint's file name read from the queued workflow, the
family's distilled checkpoint it is, whether a VAE and a CLIP belong to it, and the parts of a
model's identity that go into the run's fingerprint (its config, upstream patches and injections).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch

import comfy.model_sampling

from ..fdfo_core.backends.interface import BackendError
from ..fdfo_core.families import Family, FamilyError, comfy_refusal, family_for_comfy_model, supported_families_text
from ..fdfo_core.families.generic import UnregisteredComfyFamily



def supported_text() -> str:
    """What the ComfyUI backend trains, from the family registry."""
    return (
        "flow-matching (rectified-flow) image models, which ComfyUI samples with CONST model sampling. "
        f"Supported families: {supported_families_text('comfyui')}; other flow image models train with a LoRA "
        "on their attention layers (untested)"
    )

#: Keys of a model's unet_config that describe how it was loaded rather than what it is.
_LOAD_KEYS = {"dtype", "device", "operations", "image_model_dtype"}


# --- recognition and checks --------------------------------------------------------------------


def model_name(model) -> str:
    base = model.model
    config = getattr(base, "model_config", None)
    return type(config).__name__ if config is not None else type(base).__name__


def comfyui_version() -> str | None:
    """The running ComfyUI's version (`comfyui_version.__version__` in its root), or None when it
    cannot be read (then no family is refused for the version)."""
    try:
        import comfyui_version as version_module
    except ImportError:
        return None
    return str(getattr(version_module, "__version__", "")) or None


def model_family(model) -> Family:
    """The family of a ComfyUI MODEL, or a BackendError that names the model, says why it is
    refused and lists the supported families. Cheap: call it before loading anything."""
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "apply_model") or not hasattr(model, "get_model_object"):
        raise BackendError(
            f"expected a ComfyUI MODEL (from Load Checkpoint, Load Diffusion Model or the FDFO toy loader), "
            f"got {type(model).__name__}"
        )
    name = model_name(model)
    sampling = model.get_model_object("model_sampling")
    if not isinstance(sampling, comfy.model_sampling.CONST):
        kinds = [c.__name__ for c in type(sampling).__mro__]
        prediction = next((k for k in ("EPS", "V_PREDICTION", "EDM", "X0", "IMG_TO_IMG", "COSMOS_RFLOW") if k in kinds),
                          type(sampling).__name__)
        raise BackendError(
            f"this MODEL is {name} with {prediction} prediction, a diffusion model, not a flow model "
            f"(SD1.5, SDXL and their fine-tunes are diffusion models). FDFO trains {supported_text()}."
        )
    problem = _not_a_velocity_flow(sampling)
    if problem:
        raise BackendError(f"this MODEL is {name}: {problem} FDFO trains {supported_text()}.")
    refused = comfy_refusal(base, comfyui_version())
    if refused is not None:
        raise BackendError(f"this MODEL is {name}: {refused[1]} FDFO trains {supported_text()}.")
    family = family_for_comfy_model(base) or UnregisteredComfyFamily(name)
    dims = getattr(getattr(base, "latent_format", None), "latent_dimensions", 2)
    if dims != 2 and not (dims == 3 and family.comfy_video_latents):
        kind = "video" if dims == 3 else f"{dims}-D (audio or 3-D)"
        raise BackendError(
            f"this MODEL ({name}) works on {kind} latents; FDFO trains image models, and video models only as "
            f"one-frame image models of a supported family. FDFO trains {supported_text()}."
        )
    try:
        family.comfy_check(base)
    except FamilyError as e:
        raise BackendError(f"{name}: {e} FDFO trains {supported_text()}.") from e
    return family


def _not_a_velocity_flow(sampling) -> str | None:
    """Why a CONST model sampling is not the flow FDFO assumes, or None.

    FDFO needs x_t = (1 - t) x0 + t eps with eps ~ N(0, 1) and a network output that is the
    velocity, denoised = x - t v: CONST's own `calculate_denoised` and `noise_scaling`, with a
    noise scale of 1. Newer ComfyUI has CONST subclasses that change these (read in its
    `comfy/model_sampling.py`: `IMG_TO_IMG_FLOW`, `IMG_TO_IMG_VELOCITY` return something else than
    x - t v; a `noise_scale` attribute, 8 for HiDream-O1, scales the noise)."""
    const = comfy.model_sampling.CONST
    kind = type(sampling)
    for method in ("calculate_denoised", "noise_scaling"):
        own = getattr(kind, method, None)
        if own is not getattr(const, method):
            where = next((c.__name__ for c in kind.__mro__ if method in vars(c)), kind.__name__)
            return (f"its model sampling ({where}) overrides {method}, so its output is not the plain flow velocity "
                    f"(denoised = x - t v, x_t = (1 - t) x0 + t noise) that FDFO trains.")
    scale = getattr(sampling, "noise_scale", 1.0)
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        return f"its model sampling has a noise scale {scale!r}; FDFO trains flows whose noise is N(0, 1) (noise scale 1)."
    if scale != 1.0:
        return f"its model sampling scales the noise by {scale:g}; FDFO trains flows whose noise is N(0, 1) (noise scale 1)."
    return None


#: Inputs of ComfyUI's loaders that name the model file (Load Checkpoint, Load Diffusion Model, ...).
_MODEL_FILE_INPUTS = ("ckpt_name", "unet_name", "model_name")


def model_file_name(graph: Mapping[str, Any] | None, node_id: Any, input_name: str = "model") -> str:
    """The file name of the checkpoint a node's MODEL input was loaded from, read from the queued
    workflow (the hidden PROMPT input): the MODEL is followed back through the nodes that pass it on
    (LoRA loaders, patches: their own "model" input) to a loader; "" when the workflow does not say."""
    graph = graph or {}
    link = (graph.get(str(node_id)) or {}).get("inputs", {}).get(input_name)
    seen: set[str] = set()
    while isinstance(link, (list, tuple)) and len(link) == 2 and str(link[0]) not in seen:
        seen.add(str(link[0]))
        inputs = (graph.get(str(link[0])) or {}).get("inputs", {})
        name = next((inputs[k] for k in _MODEL_FILE_INPUTS if isinstance(inputs.get(k), str)), None)
        if name is not None:
            return name
        link = inputs.get("model")
    return ""


def distilled_checkpoint(model, graph: Mapping[str, Any] | None = None, node_id: Any = None):
    """(family, the family's distilled checkpoint this MODEL is) by its ComfyUI config class or its
    file name in the workflow (`model_file_name`), else (family, None). Raises what `model_family` raises."""
    family = model_family(model)
    return family, family.distilled_checkpoint(model_file_name(graph, node_id), comfy_config=model_name(model))


def check_flow_model(model) -> str:
    """The model family's name ("sd3", "flux", ..., or the model's class name for a flow model no
    family module covers), or a BackendError saying what is supported."""
    return model_family(model).name


def check_vae(model, vae) -> None:
    if vae is None:
        raise BackendError("no VAE connected: connect the VAE that belongs to the model (a checkpoint loader's VAE output or Load VAE)")
    if not hasattr(vae, "decode") or not hasattr(vae, "latent_channels"):
        raise BackendError(f"expected a ComfyUI VAE, got {type(vae).__name__}")
    want = model.model.latent_format.latent_channels
    dim = getattr(vae, "latent_dim", 2)
    want_dim = getattr(model.model.latent_format, "latent_dimensions", 2)
    if dim != want_dim:
        raise BackendError(
            f"the VAE makes {dim}-D latents but {model_name(model)} works on {want_dim}-D latents; connect the VAE "
            "that belongs to the model"
        )
    if vae.latent_channels != want:
        raise BackendError(
            f"mismatched VAE: it makes {vae.latent_channels}-channel latents but {model_name(model)} works on "
            f"{want}-channel latents. Connect the VAE that belongs to the model (SD3, SD3.5 and Flux use 16-channel "
            "VAEs; SD1.5 / SDXL VAEs have 4 channels)."
        )


def check_clip(clip) -> None:
    if clip is None:
        raise BackendError(
            "no CLIP / text encoder connected (checkpoints without text encoders give none): load them with "
            "Load CLIP / DualCLIPLoader / TripleCLIPLoader and connect the CLIP output"
        )
    if not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens_scheduled"):
        raise BackendError(f"expected a ComfyUI CLIP, got {type(clip).__name__}")



# --- identity (the run's fingerprint) -------------------------------------------------------------


def _hash_patch_value(digest, value: Any) -> None:
    """Feed a ModelPatcher patch value (a tensor, a ("lora", (up, down, alpha, ...)) tuple, a
    weight adapter object with .weights, ...) into `digest`, tensors by their contents."""
    if isinstance(value, torch.Tensor):
        digest.update(repr((tuple(value.shape), str(value.dtype))).encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, (list, tuple)):
        for item in value:
            _hash_patch_value(digest, item)
    elif isinstance(value, (str, int, float, bool)) or value is None:
        digest.update(repr(value).encode())
    else:
        digest.update(type(value).__name__.encode())
        if hasattr(value, "weights"):
            _hash_patch_value(digest, value.weights)


def _hash_injection(digest, injection: Any) -> None:
    """Feed a ModelPatcher injection (a `PatcherInjection(inject, eject)`) into `digest`: the
    kind of object that injects, and every tensor it holds (its adapters' weights and
    strengths), one level of attributes deep and through modules' state dicts."""
    owner = getattr(getattr(injection, "inject", None), "__self__", None) or injection
    digest.update(type(owner).__qualname__.encode())
    values = owner.state_dict().items() if isinstance(owner, torch.nn.Module) else sorted(vars(owner).items()) \
        if hasattr(owner, "__dict__") else []
    for name, value in values:
        if callable(value) and not isinstance(value, torch.nn.Module):
            continue
        digest.update(str(name).encode())
        if isinstance(value, torch.nn.Module):
            for key, tensor in value.state_dict().items():
                digest.update(key.encode())
                _hash_patch_value(digest, tensor)
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                digest.update(str(key).encode())
                item = value[key]
                _hash_patch_value(digest, list(item.state_dict().values()) if isinstance(item, torch.nn.Module) else item)
        else:
            _hash_patch_value(digest, value)


def unet_config_digest(base) -> str:
    """16 hex digits of sha256 over the model's unet_config, without the keys that say how it was
    loaded (dtype, device, ...): what the model is."""
    config = getattr(base, "model_config", None)
    unet = {k: v for k, v in (getattr(config, "unet_config", None) or {}).items() if k not in _LOAD_KEYS}
    return hashlib.sha256(json.dumps(unet, sort_keys=True, default=str).encode()).hexdigest()[:16]


def upstream_patches_digest(patcher) -> str:
    """16 hex digits of sha256 over a ModelPatcher's patches and injections (a LoRA loaded before
    FDFO: keys, strengths and contents), or "none" when it has neither. FDFO's own adapter lives in
    weight_wrapper_patches and does not count."""
    digest = hashlib.sha256()
    for key in sorted(patcher.patches):
        digest.update(key.encode())
        for patch in patcher.patches[key]:
            digest.update(repr((float(patch[0]), float(patch[2]), patch[3])).encode())
            _hash_patch_value(digest, patch[1])
    # ComfyUI >= 0.8: patches that enter the forward pass as injections (newer ComfyUI loads
    # bypass LoRAs this way, `load_bypass_lora_for_models`) change the model as much.
    injections = getattr(patcher, "injections", None) or {}
    for key in sorted(injections):
        digest.update(f"injection:{key}".encode())
        for injection in injections[key]:
            _hash_injection(digest, injection)
    patches = bool(patcher.patches) or any(injections.values())
    return digest.hexdigest()[:16] if patches else "none"
