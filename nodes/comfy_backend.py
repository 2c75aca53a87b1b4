"""`FlowBackend` over ComfyUI's own MODEL, CLIP and VAE (the second backend, next to diffusers).

Whatever the artist loaded (single-file checkpoint, diffusion model + text encoders, fp8 weights,
an upstream LoRA) is trained as ComfyUI runs it: the MODEL is cloned, the FDFO LoRA is attached
with `ModelPatcher.add_weight_wrapper` (ComfyUI's own trainer mechanism, `comfy.weight_adapter`),
memory is left to `comfy.model_management.load_models_gpu`, and everything is undone in
`session()`'s `finally`.

Conventions, checked against ComfyUI's code:
- Velocity. Flow models use CONST model sampling: the network output is the velocity
  v = eps - x0 of x_t = (1 - t) x0 + t eps, sigma is the flow time t, and `apply_model` returns
  denoised = x - sigma * v (`comfy.model_sampling.CONST.calculate_denoised`). So
  v = (x - denoised) / sigma, in float32 (sigma > 0 at every point the samplers evaluate).
- Latents. The MODEL works in its latent format's space: process_latent_in(VAE latent) (for SD3:
  (raw - 0.0609) * 1.5305). Pure noise at t = 1 is N(0, 1) in that space (ComfyUI adds noise after
  process_latent_in), and decode(x) = VAE.decode(process_latent_out(x)).
- Conditioning. Each prompt goes through CLIP.tokenize / encode_from_tokens_scheduled (what
  CLIPTextEncode does) and the model's `extra_conds` (what the samplers do), and is cached on the
  CPU in an LRU cache bounded by bytes (`fdfo_core.backends.prompt_cache`, 2 GB by default); a prompt
  dropped from it is encoded again when it is next needed (same result: the encoders are
  deterministic). The Cond handed to the core is only a row of prompt ids, so prompts whose token
  counts differ can share a batch: `velocity` runs rows with equally shaped conditioning together
  (exact; no padding or token repetition).
- Families. What is specific to a model family (recognition, refusals, conditioning defaults,
  the LoRA layout) comes from its module in `fdfo_core.families`; this backend never branches on
  a family. Models whose ComfyUI latents are video latents [B, C, T, h, w] run with T = 1.
- LoRA layout. For a registered family the adapter is the diffusers backend's: rank r on every
  targeted diffusers projection (to_q, to_k, to_v, ...), i.e. row slices of ComfyUI's fused
  linears (the family's `lora_map`), so both backends train the same function class and write the
  same file. Flow models no family module covers get rank r on every linear layer inside an
  attention module (`fdfo_core.families.generic`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

import comfy.model_base
import comfy.model_management as mm
import comfy.model_sampling
import comfy.samplers

from ..fdfo_core.backends.interface import BackendError, NamedAdapterParams, weights_digest
from ..fdfo_core.backends.gradient_checkpointing import CopyOnInplace
from ..fdfo_core.config import FDFOConfig
from ..fdfo_core.families import (
    Family,
    FamilyError,
    FamilyOptions,
    FusedPart,
    PlannedPart,
    comfy_refusal,
    family_for_comfy_model,
    supported_families_text,
)
from ..fdfo_core.families.generic import UnregisteredComfyFamily
from ..fdfo_core.flow.image_sizes import SizeRule
from ..fdfo_core.backends.lora_files import fuse_parts
from ..fdfo_core.backends.prompt_cache import DEFAULT_PROMPT_CACHE_BYTES, MB, PromptCache, compact
from ..fdfo_core.flow.seeds import derive_seed
from .comfy_layers import dequantized_weight, is_quantized, linear_features, post_function_scale
from .model_caches import caches_off
from .training_mode import training_mode

try:  # ComfyUI >= 0.3.30: the base class of trainable weight adapters
    from comfy.weight_adapter import WeightAdapterTrainBase as _AdapterBase
except ImportError:  # pragma: no cover - older ComfyUI
    _AdapterBase = torch.nn.Module

log = logging.getLogger("fdfo")



def supported_text() -> str:
    """What the ComfyUI backend trains, from the family registry."""
    return (
        "flow-matching (rectified-flow) image models, which ComfyUI samples with CONST model sampling. "
        f"Supported families: {supported_families_text('comfyui')}; other flow image models train with a LoRA "
        "on their attention layers (untested)"
    )

#: Keys of a model's unet_config that describe how it was loaded rather than what it is.
_LOAD_KEYS = {"dtype", "device", "operations", "image_model_dtype"}


# --- checks --------------------------------------------------------------------------------------


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


def _storage_ptr(t: torch.Tensor) -> int | None:
    """The address of a tensor's storage, or None for tensors without one (wrapper subclasses
    such as ComfyUI's QuantizedTensor, whose data lives in inner tensors)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


# --- the adapter ---------------------------------------------------------------------------------



class FDFOLoRA(_AdapterBase):
    """Weight wrapper W -> W + (alpha / r) * sum_p pad_p(B_p) @ A_p over the parts p of one linear.

    A_p [r, in] starts Gaussian with std 1 / r and B_p [rows, r] at zero (peft's "gaussian" init,
    as the diffusers backend), so training starts from the base model. Parameters are fp32; the
    update is computed in fp32 outside autocast and added in the weight's own dtype, as ComfyUI's
    LoRA adapters do.

    weight_scale: the factor s a scaled-fp8 layer multiplies the weight functions' output by
    (`comfy_layers.post_function_scale`); the update is added as dW / s there, so the layer acts as
    s W_raw + dW, which is what the saved file does in ComfyUI's LoRA loaders.
    """

    def __init__(self, module: str, out_features: int, in_features: int, parts: list[PlannedPart], rank: int,
                 alpha: float, generator: torch.Generator, device: torch.device,
                 weight_scale: torch.Tensor | None = None):
        super().__init__()
        self.module = module
        # A normal float32 copy: the layer's own may be an inference tensor (loaded under inference mode).
        self.weight_scale = None if weight_scale is None else weight_scale.detach().float().clone()
        self.parts = list(parts)
        self.out_features = out_features
        self.scale = float(alpha) / rank
        self.enabled = True
        self.lora_A = torch.nn.ParameterList(
            [torch.nn.Parameter((torch.randn(rank, in_features, generator=generator) / rank).to(device)) for _ in parts]
        )
        self.lora_B = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(p.rows, rank, device=device)) for p in parts]
        )

    def delta(self) -> torch.Tensor:
        """The fp32 weight update [out, in]."""
        ups = [F.pad(b, (0, 0, p.offset, self.out_features - p.offset - p.rows)) for p, b in zip(self.parts, self.lora_B)]
        up = ups[0] if len(ups) == 1 else torch.cat(ups, dim=1)
        down = self.lora_A[0] if len(self.lora_A) == 1 else torch.cat(list(self.lora_A), dim=0)
        return (up @ down) * self.scale

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        with torch.autocast(w.device.type, enabled=False):
            d = self.delta().to(w.device)
            if self.weight_scale is not None:
                d = d / self.weight_scale.to(w.device)
        return (w + d.reshape(w.shape)).to(w.dtype)

    def passive_memory_usage(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def move_to(self, device) -> int:
        with torch.inference_mode(False):  # ComfyUI may load models under inference mode: stay trainable
            self.to(device)
        return self.passive_memory_usage()


# --- prompt conditioning cache -------------------------------------------------------------------


@dataclass
class _PromptConds:
    signature: tuple  # shapes, dtypes and constants: rows with equal signatures batch together
    tensors: dict[str, torch.Tensor]  # model kwarg -> [1, ...] on the CPU
    constants: dict[str, Any]


class ComfyBackend(NamedAdapterParams):
    """FlowBackend for a ComfyUI MODEL + CLIP + VAE. Use it inside `with backend.session(train=...)`."""

    def __init__(
        self,
        model,
        clip,
        vae,
        config: FDFOConfig,
        *,
        scheduler: str = "simple",
        flux_guidance: float = 3.5,
        full_load: bool = False,
        check_cancel: Callable[[], None] | None = None,
        prompt_cache_bytes: int | None = DEFAULT_PROMPT_CACHE_BYTES,
    ):
        # Validate everything before any model is loaded or anything is allocated.
        self.model_family = model_family(model)
        self.family = self.model_family.name
        if isinstance(self.model_family, UnregisteredComfyFamily):
            log.warning("FDFO: %s has no family module; training a LoRA on its attention layers in ComfyUI's names "
                        "(untested; the file loads in ComfyUI only). Supported families: %s",
                        model_name(model), supported_families_text("comfyui"))
        check_vae(model, vae)
        check_clip(clip)
        if scheduler not in comfy.samplers.SCHEDULER_NAMES:
            raise BackendError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(comfy.samplers.SCHEDULER_NAMES)}")
        self.source_model = model
        self.clip = clip
        self.vae = vae
        self.config = config
        self.scheduler = scheduler
        self.flux_guidance = float(flux_guidance)
        self.options = self.model_family.options(FamilyOptions(guidance=self.flux_guidance))
        self.full_load = full_load
        self.check_cancel = check_cancel
        # Never mutate the incoming MODEL: everything below patches a clone.
        self.patcher = model.clone()
        self.base = self.patcher.model
        # Newer ComfyUI's dynamic VRAM patcher (ModelPatcherDynamic, the default on NVIDIA after
        # v0.8.0, read in its model_patcher.py) keeps the weights memory-mapped and casts what each
        # layer needs on the fly, applying weight functions (our LoRA) to the cast copies.
        self.dynamic_vram = bool(getattr(self.patcher, "is_dynamic", lambda: False)())
        if self.dynamic_vram and full_load:
            log.warning("FDFO: full_load has no effect on this model: ComfyUI's dynamic VRAM manages its weights "
                        "(start ComfyUI with --disable-dynamic-vram to load it whole)")
        self.device = torch.device(self.patcher.load_device)
        # ComfyUI runs some image models (Qwen-Image) on video latents [B, C, T, h, w]: T = 1.
        self._one_frame = getattr(self.base.latent_format, "latent_dimensions", 2) == 3
        self.adapters: dict[str, FDFOLoRA] = {}
        self._params: dict[str, torch.nn.Parameter] = {}
        self._prompt_ids: dict[str, int] = {}
        self._texts: list[str] = []
        self.prompt_cache: PromptCache[int, _PromptConds] = PromptCache(prompt_cache_bytes)
        self._cond_dtype = self._cond_storage_dtype()
        self._warned_thrash = False
        self._needs_reload = False
        self._fingerprint: dict[str, str] | None = None
        self._transformer_options: dict[str, Any] | None = None
        self._sample_sigmas: torch.Tensor | None = None
        self._in_session = False
        self._wrapped: list[tuple[torch.nn.Module, Any]] = []

    # --- session: attach, load, undo ----------------------------------------------------------

    @contextlib.contextmanager
    def session(self, train: bool) -> Iterator["ComfyBackend"]:
        """Attach the adapter (when training), load the model through ComfyUI's model management,
        and undo every patch on exit. Runs with inference mode off (nodes run under inference mode)
        and ComfyUI in training mode (`training_mode`: differentiable code instead of fused
        inference kernels, for sampling too, so recorded and trained velocities agree), with the
        model's own prefix / K/V caches off (`caches_off`: they would hold an earlier LoRA's values)."""
        with torch.inference_mode(False), training_mode(), caches_off(self.base):
            self._in_session = True
            try:
                if train:
                    self._attach_adapters()
                    self._wrap_blocks(checkpointing=self.config.gradient_checkpointing)
                self._load(offload_others=True)
                if train:
                    self._make_tensors_autograd_safe()
                self._transformer_options = self._base_transformer_options()
                self._fingerprint = self._compute_fingerprint()
                yield self
            finally:
                self._in_session = False
                self._unwrap_blocks()
                self._detach_adapters()
                self._repair_quantized_weights()

    def _memory_required(self) -> int:
        cfg = self.config
        rows = max(cfg.train_batch_size, 2 * cfg.sample_batch_size) * (2 if cfg.cfg_scale != 1.0 else 1)
        shape = list(self._model_shape(rows, cfg.height, cfg.width))
        try:
            return int(self.base.memory_required(shape))
        except Exception:  # models without an estimate
            return 0

    def _load(self, offload_others: bool = False) -> None:
        if offload_others and self.device.type != "cpu":
            # Text encoders, VAE and other models leave the GPU before training starts; they come
            # back when they are needed (encoding new prompts, decoding) and leave again after.
            mm.free_memory(1e30, self.device)
        mm.load_models_gpu([self.patcher], memory_required=self._memory_required(), force_full_load=self.full_load)
        self._needs_reload = False

    def _ensure_loaded(self) -> None:
        if self._needs_reload:
            self._load()

    def _make_tensors_autograd_safe(self) -> None:
        """Tensors created under inference mode (ComfyUI loads models there) cannot be saved for
        backward; replace such parameters and buffers of the diffusion model by identical normal
        tensors. Values do not change, so other users of the model see no difference.

        Under dynamic VRAM the parameters stay as they are: they are memory-mapped (a copy would
        load the whole model into RAM) and the forward pass only ever sees cast copies of them."""
        with torch.no_grad():
            for module in self.base.diffusion_model.modules():
                for name, p in ([] if self.dynamic_vram else list(module._parameters.items())):
                    # Quantized weights are never saved for backward (ComfyUI dequantizes them into
                    # new tensors first); a clone of one would break ComfyUI's own use of it.
                    if p is not None and p.is_inference() and not is_quantized(p):
                        module._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                for name, b in list(module._buffers.items()):
                    if b is not None and b.is_inference():
                        module._buffers[name] = b.clone()

    def _repair_quantized_weights(self) -> None:
        """ComfyUI runs its nodes under inference mode. A quantized weight (ComfyUI >= 0.8's
        QuantizedTensor) that ComfyUI moved or cast while this session ran (outside inference
        mode) comes back as a normal tensor around inference-mode data, which ComfyUI's next use
        under inference mode refuses ("Cannot set version_counter for inference tensor", e.g. in
        LoraLoaderModelOnly). Such weights get an inference-mode copy with the same values."""
        with torch.inference_mode():
            for module in self.base.diffusion_model.modules():
                for name, p in list(module._parameters.items()):
                    if p is None or not is_quantized(p) or p.is_inference():
                        continue
                    try:
                        p.detach()
                    except RuntimeError:
                        module._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)

    def _base_transformer_options(self) -> dict[str, Any]:
        import comfy.model_patcher
        import comfy.patcher_extension

        options = comfy.model_patcher.create_model_options_clone(self.patcher.model_options)
        to = options.setdefault("transformer_options", {})
        comfy.patcher_extension.merge_nested_dicts(to.setdefault("wrappers", {}), self.patcher.wrappers, copy_dict1=False)
        return options

    # --- adapters -----------------------------------------------------------------------------

    def lora_plan(self) -> list[tuple[str, torch.nn.Module, list[PlannedPart]]]:
        """[(ComfyUI module name inside diffusion_model, module, parts)] for `config.lora_targets`,
        from the family's LoRA layout (`Family.comfy_lora_plan`)."""
        modules = dict(self.base.diffusion_model.named_modules())
        # By what a layer does, not its class: quantized layers (MixedPrecisionOps) are no nn.Linear.
        linears = {n: f for n, f in ((n, linear_features(m)) for n, m in modules.items()) if f is not None}
        plan: dict[str, list[PlannedPart]] = OrderedDict()
        for part in self.model_family.comfy_lora_plan(linears, self.model_family.resolve_lora_targets(self.config.lora_targets)):
            plan.setdefault(part.comfy_module, []).append(part)
        out = []
        for name, parts in plan.items():
            module = modules[name]
            if not hasattr(module, "weight_function"):
                raise BackendError(f"module {name} of {model_name(self.source_model)} is not a ComfyUI op; cannot attach a LoRA")
            out.append((name, module, sorted(parts, key=lambda p: p.offset)))
        return out

    def _attach_adapters(self) -> None:
        cfg = self.config
        plan = self.lora_plan()
        if not plan:
            raise BackendError(
                f"no LoRA target modules found in {model_name(self.source_model)} for targets {list(self.model_family.resolve_lora_targets(cfg.lora_targets))}"
            )
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "lora-init"))
        for name, module, parts in plan:
            adapter = FDFOLoRA(name, module.out_features, module.in_features, parts, cfg.lora_rank, cfg.lora_alpha, g, self.device,
                               weight_scale=post_function_scale(module))
            self.patcher.add_weight_wrapper(f"diffusion_model.{name}.weight", adapter)
            self.adapters[name] = adapter
            for part, a, b in zip(parts, adapter.lora_A, adapter.lora_B):
                self._params[f"{part.name}.lora_A"] = a
                self._params[f"{part.name}.lora_B"] = b

    def _detach_adapters(self) -> None:
        """Remove our weight functions from the (shared) modules and the clone's wrapper list, so
        the incoming MODEL and other clones never see them."""
        if not self.adapters:
            return
        ours = {id(a) for a in self.adapters.values()}
        for module in self.base.diffusion_model.modules():
            functions = getattr(module, "weight_function", None)
            if isinstance(functions, list) and any(id(f) in ours for f in functions):
                module.weight_function = [f for f in functions if id(f) not in ours]
        for key in [f"diffusion_model.{name}.weight" for name in self.adapters]:
            kept = [f for f in self.patcher.weight_wrapper_patches.get(key, []) if id(f) not in ours]
            if kept:
                self.patcher.weight_wrapper_patches[key] = kept
            else:
                self.patcher.weight_wrapper_patches.pop(key, None)
        for adapter in self.adapters.values():
            adapter.requires_grad_(False)

    def _wrap_blocks(self, checkpointing: bool) -> None:
        """Make each transformer block safe to differentiate, and optionally recompute it in the
        backward pass (gradient checkpointing saves activation memory).

        ComfyUI's blocks are written for inference and some update their inputs in place (Flux:
        `x += ...` after `pre_norm(x)` saved x for the backward pass; `txt += ...`), which makes
        autograd refuse (or, under checkpointing, recompute from the updated input). So a block
        gets copies of its tensor inputs inside the recomputed function (checkpointing), or a
        snapshot of any saved tensor that shares memory with an input (no checkpointing) as long
        as it has been seen to update an input: the first differentiated call of each block finds
        out, later calls of blocks that leave their inputs alone cost nothing. Under checkpointing
        the backward pass recomputes a block and keeps what the recomputation saves by reference;
        a block that later updates such a tensor in place (Chroma: `img.addcmul_` after
        `img_norm1(img)`) would corrupt it, so the recomputation runs under `CopyOnInplace`."""
        from torch.utils.checkpoint import checkpoint

        def recompute_contexts():
            return contextlib.nullcontext(), CopyOnInplace()

        def copies(values):
            return [v.clone() if isinstance(v, torch.Tensor) else v for v in values]

        for child in self.base.diffusion_model.children():
            if not isinstance(child, torch.nn.ModuleList):
                continue
            for block in child:
                previous = block.__dict__.get("forward")
                original = block.forward
                seen = {"updates_inputs": None}  # unknown until the first differentiated call

                def on_copies(*args, _original=original, **kwargs):
                    return _original(*copies(args), **dict(zip(kwargs, copies(kwargs.values()))))

                def forward(*args, _original=original, _on_copies=on_copies, _seen=seen, **kwargs):
                    if not torch.is_grad_enabled():
                        return _original(*args, **kwargs)
                    if checkpointing:
                        return checkpoint(_on_copies, *args, use_reentrant=False, context_fn=recompute_contexts, **kwargs)
                    if _seen["updates_inputs"] is False:
                        return _original(*args, **kwargs)
                    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.numel()]
                    versions = [v._version for v in tensors]
                    inputs = {_storage_ptr(v) for v in tensors} - {None}

                    def pack(t):
                        return t.clone() if t.numel() and _storage_ptr(t) in inputs else t

                    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                        out = _original(*args, **kwargs)
                    if _seen["updates_inputs"] is None:
                        _seen["updates_inputs"] = any(v._version != n for v, n in zip(tensors, versions))
                    return out

                block.forward = forward
                self._wrapped.append((block, previous))

    def _unwrap_blocks(self) -> None:
        for block, previous in reversed(self._wrapped):
            if previous is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = previous
        self._wrapped.clear()

    # --- FlowBackend: adapter API -------------------------------------------------------------

    @contextlib.contextmanager
    def adapter_disabled(self):
        previous = {name: a.enabled for name, a in self.adapters.items()}
        for a in self.adapters.values():
            a.enabled = False
        try:
            yield
        finally:
            for name, a in self.adapters.items():
                a.enabled = previous[name]

    def lora_file_tensors(self) -> dict[str, torch.Tensor]:
        """ComfyUI-native LoRA tensors (`diffusion_model.<module>.lora_up/.lora_down/.alpha`)."""
        cfg = self.config
        groups = {}
        for name, adapter in self.adapters.items():
            groups[name] = [
                (FusedPart(name, part.offset, part.rows, adapter.out_features), a.detach().float().cpu(), b.detach().float().cpu())
                for part, a, b in zip(adapter.parts, adapter.lora_A, adapter.lora_B)
            ]
        return fuse_parts(groups, cfg.lora_alpha / cfg.lora_rank)

    def sampling_options(self) -> dict[str, Any]:
        """What sampling needs beyond the config (LoRA metadata): the guidance-embedding value for
        families that have one (the text length is the CLIP's own here)."""
        return {"flux_guidance": self.options.guidance} if self.model_family.guidance is not None else {}

    def fingerprint(self) -> dict[str, str]:
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return dict(self._fingerprint)

    def _compute_fingerprint(self) -> dict[str, str]:
        cfg = self.config
        config = getattr(self.base, "model_config", None)
        unet = {k: v for k, v in (getattr(config, "unet_config", None) or {}).items() if k not in _LOAD_KEYS}
        last = None
        for name, module in self.base.diffusion_model.named_modules():
            if linear_features(module) is not None and name not in self.adapters:
                last = module
        # rounded to e4m3 first: the same whether the loader's weight dtype is default or fp8_e4m3fn
        # (quantized weights, ComfyUI >= 0.8, dequantized first)
        weights = "none" if last is None else weights_digest(dequantized_weight(last))
        # Upstream patches (a LoRA loaded before FDFO) change the model being trained: their keys,
        # strengths and contents count. (FDFO's own adapter lives in weight_wrapper_patches.)
        digest = hashlib.sha256()
        for key in sorted(self.patcher.patches):
            digest.update(key.encode())
            for patch in self.patcher.patches[key]:
                digest.update(repr((float(patch[0]), float(patch[2]), patch[3])).encode())
                _hash_patch_value(digest, patch[1])
        # ComfyUI >= 0.8: patches that enter the forward pass as injections (newer ComfyUI loads
        # bypass LoRAs this way, `load_bypass_lora_for_models`) change the model as much.
        injections = getattr(self.patcher, "injections", None) or {}
        for key in sorted(injections):
            digest.update(f"injection:{key}".encode())
            for injection in injections[key]:
                _hash_injection(digest, injection)
        patches = bool(self.patcher.patches) or any(injections.values())
        return {
            "family": self.family,
            "model": model_name(self.source_model),
            "unet_config": hashlib.sha256(json.dumps(unet, sort_keys=True, default=str).encode()).hexdigest()[:16],
            "weights": weights,
            "patches": digest.hexdigest()[:16] if patches else "none",
            "lora": f"rank={cfg.lora_rank} alpha={cfg.lora_alpha:g} targets={','.join(self.model_family.resolve_lora_targets(cfg.lora_targets))}",
            "backend": "comfyui",
        }

    # --- FlowBackend: sampling API ------------------------------------------------------------

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = int(self.vae.spacial_compression_decode())
        if height % f or width % f:
            raise BackendError(f"image size {width}x{height} is not a multiple of the VAE's {f}x downscaling")
        return (int(self.base.latent_format.latent_channels), height // f, width // f)

    def _model_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of a latent batch as the MODEL takes it ([B, C, 1, h, w] for video-latent models)."""
        c, h, w = self.latent_shape(height, width)
        return (batch, c, 1, h, w) if self._one_frame else (batch, c, h, w)

    def image_size_rule(self) -> SizeRule:
        """Sizes this model makes (fdfo_core.flow.image_sizes): multiples of the VAE's downscale x the
        transformer's patch (at least the family's `latent_patch`: Flux packs 2x2 latents into one
        token), at least one patch, and for an MMDiT with a stored position table (SD3) at most
        `pos_embed_max_size` patches per side (ComfyUI asserts on larger ones)."""
        f = int(self.vae.spacial_compression_decode())
        dm = self.base.diffusion_model
        patch = getattr(dm, "patch_size", 1)
        patch = int(patch[-1] if isinstance(patch, (tuple, list)) else patch or 1)
        patch = max(patch, self.model_family.latent_patch or 1)
        max_patches = getattr(dm, "pos_embed_max_size", None) if getattr(dm, "pos_embed", None) is not None else None
        return SizeRule(multiple=f * patch, minimum=f * patch,
                        maximum=int(max_patches) * f * patch if max_patches else None,
                        why=f"the VAE downscales by {f} and the model takes {patch}x{patch} latent patches")

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        sampling = self.patcher.get_model_object("model_sampling")
        s = comfy.samplers.calculate_sigmas(sampling, self.scheduler, num_steps).float().cpu()
        if s.shape[0] != num_steps + 1 or float(s[-1]) != 0.0 or not bool((s[1:] < s[:-1]).all()) or float(s[0]) > 1.0 + 1e-4:
            raise BackendError(
                f"scheduler {self.scheduler!r} gives {s.shape[0]} times from {float(s[0]):.4g} to {float(s[-1]):.4g}; FDFO "
                f"needs {num_steps + 1} decreasing flow times from at most 1 to 0 (try 'simple' or 'beta')"
            )
        self._sample_sigmas = s
        return s

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        ids = []
        for p in prompts:
            if p not in self._prompt_ids:
                self._prompt_ids[p] = len(self._texts)
                self._texts.append(p)
            ids.append(self._prompt_ids[p])
        unique = list(dict.fromkeys(ids))
        for i in unique:
            self._entry(i)
        self._warn_if_cache_too_small(unique)
        return {"prompt_id": torch.tensor(ids, dtype=torch.long)}

    def _entry(self, i: int) -> _PromptConds:
        entry = self.prompt_cache.get(i)
        if entry is None:
            if self.check_cancel is not None:
                self.check_cancel()
            entry = self.prompt_cache.put(i, self._encode(self._texts[i]))
        return entry

    def _warn_if_cache_too_small(self, ids: list[int]) -> None:
        """Once: the bound cannot hold the prompts of one call (one epoch's), so they are
        re-encoded during the epoch, which is slow (the text encoder moves back on every miss)."""
        if self._warned_thrash or all(i in self.prompt_cache for i in ids):
            return
        self._warned_thrash = True
        cache = self.prompt_cache
        per_prompt = cache.bytes / max(1, len(cache))
        need = per_prompt * len(ids) / MB
        log.warning(
            "FDFO: the prompt cache bound (%.0f MB) is smaller than the %d prompts of one epoch (about %.0f MB): "
            "prompts are encoded again during the epoch, which is slow. Raise prompt_cache_mb (FDFO Training "
            "Options) to at least %.0f.", (cache.max_bytes or 0) / MB, len(ids), need, need * 1.25 + 1)

    def _cond_storage_dtype(self) -> torch.dtype | None:
        """The dtype cached conditioning is stored in: the model's compute dtype when that is
        exact, else None (keep what the encoder returned).

        `BaseModel._apply_model` casts the context and every floating extra conditioning tensor
        to the model's compute dtype (`manual_cast_dtype`, else the weights' dtype) before the
        network sees them. Rounding once when caching instead of on every call gives the same
        values bit for bit, and halves the cache for bf16 / fp16 models (ComfyUI's text encoders
        return float32). Not exact, and so not done, when something sees the conditioning before
        that cast: a model that overrides `_apply_model`, or an apply-model wrapper from another
        node."""
        import comfy.patcher_extension

        base = self.base
        if type(base)._apply_model is not comfy.model_base.BaseModel._apply_model:
            return None
        if self.patcher.model_options.get("model_function_wrapper") is not None:
            return None
        apply_wrappers = comfy.patcher_extension.get_all_wrappers(
            comfy.patcher_extension.WrappersMP.APPLY_MODEL, self.patcher.model_options, is_model_options=True)
        patcher_wrappers = self.patcher.wrappers.get(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {})
        if apply_wrappers or any(patcher_wrappers.values()):
            return None
        dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
        return dtype if dtype in (torch.float16, torch.bfloat16) else None

    @torch.no_grad()
    def _encode(self, text: str) -> _PromptConds:
        import comfy.conds
        import comfy.sampler_helpers

        self._needs_reload = True  # the text encoder may push the diffusion model off the GPU
        # The family's text for the prompt (Lumina 2: its system prompt first), as its pipeline encodes it.
        conditioning = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(self.model_family.comfy_prompt(text)))
        if len(conditioning) != 1:
            log.warning("FDFO: the CLIP returned %d scheduled conditionings; training uses the first", len(conditioning))
        cond, extras = conditioning[0][0], dict(conditioning[0][1])
        extras = self.model_family.comfy_conditioning(extras, self.options)
        cfg = self.config
        noise = torch.zeros(self._model_shape(1, cfg.height, cfg.width), device=self.device)
        converted = comfy.sampler_helpers.convert_cond([[cond, extras]])
        encoded = comfy.samplers.encode_model_conds(self.base.extra_conds, converted, noise, self.device, "positive")
        tensors, constants = {}, {}
        for key, c in encoded[0]["model_conds"].items():
            if isinstance(c, comfy.conds.CONDConstant):
                constants[key] = c.cond
                continue
            processed = c.process_cond(batch_size=1, device=self.device, area=None)
            if not isinstance(processed.cond, torch.Tensor):
                raise BackendError(
                    f"the conditioning input {key!r} ({type(c).__name__}) is not supported for training; "
                    "use plain text conditioning (no reference images / lists)"
                )
            tensors[key] = compact(processed.cond, self._cond_dtype)
        signature = (
            tuple((k, tuple(v.shape[1:]), str(v.dtype)) for k, v in sorted(tensors.items())),
            tuple(sorted((k, repr(v)) for k, v in constants.items())),
        )
        return _PromptConds(signature, tensors, constants)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """v(x, t) = (x - denoised) / t from ComfyUI's `apply_model` (CONST sampling, sigma = t)."""
        if not self._in_session:
            raise RuntimeError("ComfyBackend.velocity must run inside `with backend.session(...)`")
        if bool((t <= 0).any()):
            raise ValueError("the velocity of a flow model is only defined for t > 0")
        # Fetch (and, after an eviction, re-encode) the conditioning first: encoding may move the
        # diffusion model off the GPU, and it must be back before the forward pass.
        entries = [self._entry(i) for i in cond["prompt_id"].tolist()]
        self._ensure_loaded()
        if not self._params:  # nothing to train: never record a graph (weights may be inference tensors)
            with torch.no_grad():
                return self._velocity(x, t, entries)
        return self._velocity(x, t, entries)

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, entries: list[_PromptConds]) -> torch.Tensor:
        groups: OrderedDict[tuple, list[int]] = OrderedDict()
        for row, e in enumerate(entries):
            groups.setdefault(e.signature, []).append(row)
        outs, order = [], []
        for rows in groups.values():
            whole = len(groups) == 1
            index = None if whole else torch.tensor(rows, device=x.device)
            xs = x if whole else x[index]
            ts = t if whole else t[index]
            kwargs = {k: torch.cat([entries[r].tensors[k] for r in rows]).to(self.device) for k in entries[rows[0]].tensors}
            kwargs.update(entries[rows[0]].constants)
            denoised = self._apply_model(xs, ts, kwargs)
            outs.append((xs.float() - denoised.float()) / ts.float().reshape(-1, *([1] * (xs.ndim - 1))))
            order += rows
        if len(outs) == 1:
            return outs[0]
        inverse = torch.argsort(torch.tensor(order, device=x.device))
        return torch.cat(outs)[inverse]

    def _apply_model(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        options = self._transformer_options or {}
        to = dict(options.get("transformer_options", {}))
        to["sigmas"] = t
        to["cond_or_uncond"] = [0] * x.shape[0]
        if self._sample_sigmas is not None:
            to["sample_sigmas"] = self._sample_sigmas.to(x.device)
        x = x.to(self.device)
        t = t.to(self.device)
        if self._one_frame:
            x = x.unsqueeze(2)
        wrapper = options.get("model_function_wrapper")
        if wrapper is not None:  # e.g. patches from other nodes that wrap the model call
            out = wrapper(self.base.apply_model, {"input": x, "timestep": t, "c": {**kwargs, "transformer_options": to},
                                                  "cond_or_uncond": to["cond_or_uncond"]})
        else:
            out = self.base.apply_model(x, t, transformer_options=to, **kwargs)
        return out.squeeze(2) if self._one_frame else out

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """float32 images [B, 3, H, W] in [0, 1]: VAE.decode(process_latent_out(x))."""
        self._needs_reload = True  # the VAE may push the diffusion model off the GPU
        latents = latents.float()
        raw = self.base.process_latent_out(latents.unsqueeze(2) if self._one_frame else latents)
        images = self.vae.decode(raw)
        if images.ndim == 5:  # [B, T, H, W, C] from a video VAE, T = 1
            images = images.reshape(-1, *images.shape[-3:])
        return images[..., :3].movedim(-1, 1).float().clamp(0, 1)
