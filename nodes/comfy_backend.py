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
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

import comfy.model_base
import comfy.model_management as mm
import comfy.model_sampling
import comfy.samplers

from ..fdfo_core.backends.interface import BackendError, NamedAdapterParams, weights_digest
from ..fdfo_core.backends.gradient_checkpointing import CopyOnInplace
from ..fdfo_core.config import FDFOConfig
from ..fdfo_core.families import FamilyOptions, FusedPart, PlannedPart, supported_families_text
from ..fdfo_core.families.generic import UnregisteredComfyFamily
from ..fdfo_core.flow.image_sizes import SizeRule
from ..fdfo_core.backends.lora_files import fuse_parts
from ..fdfo_core.backends.prompt_cache import DEFAULT_PROMPT_CACHE_BYTES, MB, PromptCache, compact
from ..fdfo_core.flow.seeds import derive_seed
from .comfy_layers import dequantized_weight, is_quantized, linear_features, post_function_scale
from .comfy_lora import FDFOLoRA
from .comfy_models import (
    check_clip, check_vae, model_family, model_name, unet_config_digest, upstream_patches_digest,
)
from .model_caches import caches_off
from .training_mode import training_mode

log = logging.getLogger("fdfo")


def _storage_ptr(t: torch.Tensor) -> int | None:
    """The address of a tensor's storage, or None for tensors without one (wrapper subclasses
    such as ComfyUI's QuantizedTensor, whose data lives in inner tensors)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


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
        last = None
        for name, module in self.base.diffusion_model.named_modules():
            if linear_features(module) is not None and name not in self.adapters:
                last = module
        # rounded to e4m3 first: the same whether the loader's weight dtype is default or fp8_e4m3fn
        # (quantized weights, ComfyUI >= 0.8, dequantized first)
        weights = "none" if last is None else weights_digest(dequantized_weight(last))
        return {
            "family": self.family,
            "model": model_name(self.source_model),
            "unet_config": unet_config_digest(self.base),
            "weights": weights,
            # Upstream patches (a LoRA loaded before FDFO) change the model being trained.
            "patches": upstream_patches_digest(self.patcher),
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
