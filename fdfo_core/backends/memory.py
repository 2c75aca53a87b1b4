"""GPU memory of an FDFO run: estimates from the model's structure, and the `--vram` chooser.

Nothing here needs a GPU. The transformer is built from its config on the meta device (tensors
with shapes and dtypes but no storage), so a 20 B model costs no memory, and its forward and
backward passes are run there under a tracker that adds up the bytes every op allocates and
subtracts them when the tensor dies (`LiveBytes`): the peak is what the same passes would hold
on a GPU, minus what the CUDA caching allocator rounds up or fragments and the kernels' own
workspaces. Attention is counted as the flash / cuDNN / memory-efficient kernels that PyTorch's
SDPA uses on a GPU hold it (q, k, v, the output and a float32 log-sum-exp per query, no
[L, L] score matrix), since the meta device would otherwise take SDPA's reference path.

What a run holds on the device (`estimate`):
- transformer weights (bf16: 2 bytes per parameter; fp8 storage: 1 byte for the weights of the
  linear layers, 2 for the rest, plus one layer upcast at a time);
- the LoRA: fp32 weights, fp32 gradients and AdamW's two fp32 moments (16 bytes per parameter);
- text encoders, VAE and reward model: all the time, or only in their phase when offloaded;
- recorded states and velocities of the epoch (2 x images x steps x latent, fp32) unless
  `storage_device` is "cpu" (then they are in host RAM, and only a micro-batch is on the device);
- the activations of the largest phase: sampling (no grad, `2 x sample_batch_size` images,
  doubled with CFG), decoding (`decode_batch_size` images), training (`train_batch_size` items,
  with or without gradient checkpointing);
- a margin: 1 GiB for the CUDA context and 10 % for the allocator.

These are estimates; `benchmarks/gpu_profile.py` measures the real peaks on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode  # torch's (semi-private) dispatch-mode base

from ..families import Family, FamilyOptions
from ..families.published import PublishedModel

GIB = 2**30
#: Fixed device memory outside tensors: the CUDA context, cuBLAS / cuDNN workspaces.
CONTEXT_BYTES = 1 * GIB
#: What the caching allocator adds on top of the live tensors (rounding, fragmentation).
ALLOCATOR_MARGIN = 0.10
#: Bytes per LoRA parameter: fp32 weight, fp32 gradient, AdamW exp_avg and exp_avg_sq.
LORA_BYTES_PER_PARAM = 16
#: A training micro-batch keeps a GPU busy from about this many image tokens on (used to prefer a
#: memory mode that allows such a micro-batch over one that only fits a smaller one).
BUSY_TOKENS = 4096


class MemoryBudgetError(RuntimeError):
    """No memory mode fits the budget; the message gives the smallest estimate and what to change."""


# --- meta-device models --------------------------------------------------------------------------


def build_model(class_name: str, config: Mapping[str, Any], device: str | torch.device = "meta",
                dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A diffusers model class (by name) built from `config` on `device` ("meta": no storage)."""
    import diffusers

    cls = getattr(diffusers, class_name)
    with torch.device(device):
        model = cls.from_config(dict(config))
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def parameter_count(module: torch.nn.Module, buffers: bool = False) -> int:
    """Parameters (and persistent buffers when `buffers`) of a module, shared ones once."""
    seen = {id(p): p.numel() for p in module.parameters()}
    if buffers:
        seen.update({id(b): b.numel() for name, b in module.named_buffers()})
    return sum(seen.values())


def _target_match(name: str, targets: Sequence[str]) -> bool:
    # peft's rule for a list of target names: the full name or a suffix after a dot.
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_parameter_count(module: torch.nn.Module, targets: Sequence[str], rank: int) -> int:
    """rank x (in + out) for every nn.Linear whose name matches a LoRA target (peft's suffix rule)."""
    return sum(rank * (m.in_features + m.out_features) for n, m in module.named_modules()
               if isinstance(m, torch.nn.Linear) and _target_match(n, targets))


def linear_parameter_count(module: torch.nn.Module, skip: Sequence[str] = ()) -> int:
    """Weights of the nn.Linear layers (what fp8 storage shrinks), except names matching `skip`."""
    import re

    pats = [re.compile(p) for p in skip]
    return sum(m.weight.numel() for n, m in module.named_modules()
               if isinstance(m, torch.nn.Linear) and not any(p.search(n) for p in pats))


# --- counting live tensor bytes ------------------------------------------------------------------


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensors created inside the mode while they are alive; `peak` is the
    most at any time (tensors that existed before, e.g. weights, are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func._schema.is_mutable:  # in-place ops and out= reuse their storage
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t._base is None:  # a view shares its base's storage
                    n = t.untyped_storage().nbytes()
                    self.current += n
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(t, self._free, n)
        return out

    def _free(self, n: int) -> None:
        self.current -= n


class _FlashAttention(torch.autograd.Function):
    """What SDPA's fused kernels hold: saves q, k, v, out and a float32 log-sum-exp per query."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def fused_attention_model() -> Iterator[None]:
    """Inside: `F.scaled_dot_product_attention` on meta tensors costs what the GPU's fused kernels
    hold (shapes only; for estimates on the meta device, never for real tensors)."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        if query.device.type != "meta":
            return original(query, key, value, *args, **kwargs)
        if key.shape[-3] != query.shape[-3]:  # grouped-query attention: k / v repeated per head group
            rep = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
        return _FlashAttention.apply(query, key, value)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of the tensors `fn` creates (on any device; meant for the meta device)."""
    with fused_attention_model(), LiveBytes() as live:
        fn()
    return live.peak


# --- one model's measured structure --------------------------------------------------------------


def stand_in_conditioning(family: Family, transformer_config: Mapping[str, Any], batch: int, max_sequence_length: int,
                          device: str | torch.device, dtype: torch.dtype,
                          generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Conditioning of the right shapes for `family` (`Family.conditioning_shapes`): random
    embeddings (unit normal; empty on the meta device) and all-ones masks (kept on the CPU for
    the meta device, where a family may read them)."""
    device = torch.device(device)
    out = {}
    for key, (shape, kind) in family.conditioning_shapes(transformer_config, max_sequence_length).items():
        if kind == "mask":
            out[key] = torch.ones((batch, *shape), dtype=torch.long,
                                  device="cpu" if device.type == "meta" else device)
        elif device.type == "meta":
            out[key] = torch.empty((batch, *shape), dtype=dtype, device=device)
        else:
            out[key] = torch.randn((batch, *shape), generator=generator, dtype=torch.float32).to(device, dtype)
    return out


@dataclass
class ModelMemory:
    """A model's memory facts, per image / item at one resolution (bytes unless said otherwise).

    Activation figures are peaks measured on the meta device at batches 1 and 2 (`measure_model`),
    as (fixed, per image): a batch of B costs fixed + B x per image (`at`).
    """

    name: str
    transformer_params: int
    linear_params: int  # of which in linear layers (fp8 storage applies to these)
    largest_linear: int  # parameters of the largest linear layer (upcast one at a time under fp8)
    lora_params: int
    text_encoder_params: int
    vae_params: int
    reward_bytes: int
    latent_shape: tuple[int, int, int]
    image_tokens: int
    # (fixed, per image) peak bytes of: a no-grad velocity call; a training forward + backward with
    # the LoRA trainable; the same with gradient checkpointing; a VAE decode.
    sample: tuple[int, int]
    train: tuple[int, int]
    train_checkpointed: tuple[int, int]
    decode: tuple[int, int]
    weight_bytes: int = 2  # bytes per transformer / encoder parameter (bf16)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def at(fit: tuple[int, int], batch: int) -> int:
        """Bytes of a (fixed, per image) peak at a batch of `batch` (0 when batch is 0)."""
        return fit[0] + fit[1] * batch if batch > 0 else 0


class _MetaPipe:
    """A pipeline as the family hooks see it during an estimate: the given attributes (meta
    copies of the transformer and VAE), everything else from the real pipeline if there is one."""

    def __init__(self, pipe: Any, **attributes: Any) -> None:
        self._pipe = pipe
        self.__dict__.update(attributes)

    def __getattr__(self, name: str) -> Any:
        if self._pipe is None:
            raise AttributeError(name)
        return getattr(self._pipe, name)


def affine_peak(fn: Callable[[int], Any]) -> tuple[int, int]:
    """(fixed, per item) of the peak bytes of fn(batch), from batches 1 and 2."""
    p1, p2 = peak_bytes(lambda: fn(1)), peak_bytes(lambda: fn(2))
    per = max(0, p2 - p1)
    return max(0, p1 - per), per


def measure_model(family: Family, transformer: torch.nn.Module, height: int, width: int, max_sequence_length: int,
                  lora_rank: int, lora_targets: Sequence[str], vae: torch.nn.Module | None = None,
                  text_encoder_params: int = 0, reward_bytes: int = 0, vae_scale_factor: int = 8,
                  name: str = "model", options: FamilyOptions | None = None,
                  fp8_skip: Sequence[str] = (), pipe: Any = None,
                  cond_example: Mapping[str, torch.Tensor] | None = None) -> ModelMemory:
    """Measure a transformer's (and VAE's) memory per image on the meta device.

    transformer / vae: diffusers models of the true config (any device: a meta copy is built from
    their class and config, so a loaded model is not touched). Raises whatever the family's
    velocity call raises for an impossible size.
    pipe: the loaded pipeline, when there is one: the family's hooks see it with the transformer
    and VAE replaced by their meta copies (for attributes such as the VAE's scale factors).
    cond_example: one prompt's conditioning as the family encodes it (batch 1): its floating
    tensors become meta tensors of the same shape, the others (masks, ids) are used as they are.
    Without it, `Family.conditioning_shapes` stands in.
    """
    from peft import LoraConfig

    dtype = torch.bfloat16
    meta = build_model(type(transformer).__name__, transformer.config, dtype=dtype)
    params = parameter_count(meta, buffers=True)
    linears = [m for m in meta.modules() if isinstance(m, torch.nn.Linear)]
    lora = lora_parameter_count(meta, lora_targets, lora_rank)
    meta.requires_grad_(False)
    meta.add_adapter(LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=list(lora_targets)),
                     adapter_name="estimate")
    for n, p in meta.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)
    real_pipe = pipe
    pipe = _MetaPipe(real_pipe, transformer=meta, vae_scale_factor=vae_scale_factor)
    options = family.options(options or FamilyOptions(max_sequence_length))
    latent = tuple(family.diffusers_latent_shape(pipe, height, width))
    if cond_example is not None:
        cond = {k: (torch.empty(v.shape, device="meta", dtype=dtype) if v.is_floating_point() else v.cpu())
                for k, v in cond_example.items()}
    else:
        cond = stand_in_conditioning(family, meta.config, 1, options.max_sequence_length, "meta", dtype)

    def velocity(b: int) -> torch.Tensor:
        x = torch.empty((b, *latent), device="meta", dtype=dtype)
        t = torch.empty((b,), device="meta", dtype=torch.float32)
        c = {k: v.expand(b, *v.shape[1:]) for k, v in cond.items()}
        return family.diffusers_velocity(pipe, x, t, c, options)

    def sample(b: int) -> None:
        with torch.no_grad():
            velocity(b)

    def train(b: int) -> None:
        velocity(b).float().pow(2).mean().backward()

    sample_b = affine_peak(sample)
    train_b = affine_peak(train)
    meta.enable_gradient_checkpointing()
    meta.train()  # diffusers checkpoints only in training mode on some models
    train_ckpt = affine_peak(train)
    decode_b = (0, 0)
    vae_params = 0
    if vae is not None:
        vae_meta = build_model(type(vae).__name__, vae.config, dtype=dtype)
        vae_params = parameter_count(vae_meta)
        vae_pipe = _MetaPipe(real_pipe, vae=vae_meta, transformer=meta, vae_scale_factor=vae_scale_factor)

        def decode(b: int) -> None:
            with torch.no_grad():
                family.diffusers_decode(vae_pipe, torch.empty((b, *latent), device="meta", dtype=dtype))

        decode_b = affine_peak(decode)
    patch = family.latent_patch or int(meta.config.get("patch_size", 1) or 1)
    return ModelMemory(
        name=name, transformer_params=params, linear_params=linear_parameter_count(meta, fp8_skip),
        largest_linear=max((m.weight.numel() for m in linears), default=0), lora_params=lora,
        text_encoder_params=int(text_encoder_params), vae_params=vae_params, reward_bytes=int(reward_bytes),
        latent_shape=latent, image_tokens=(latent[1] // patch) * (latent[2] // patch),
        sample=sample_b, train=train_b, train_checkpointed=train_ckpt, decode=decode_b)


def measure_published(model: PublishedModel, family: Family, height: int | None = None, width: int | None = None,
                      max_sequence_length: int | None = None, lora_rank: int = 32,
                      lora_targets: Sequence[str] | None = None, small: bool = False) -> ModelMemory:
    """`measure_model` for a published model of `family`, built from its config on the meta device."""
    from .fp8 import fp8_skip_patterns

    transformer = build_model(model.transformer, model.config(small))
    vae = build_model(model.vae, model.vae_config_for(small))
    h = height or (64 if small else model.resolution)
    length = family.max_sequence_length if max_sequence_length is None else max_sequence_length
    return measure_model(
        family, transformer, h, width or h, length, lora_rank,
        family.resolve_lora_targets(lora_targets) if lora_targets else family.lora_targets, vae=vae,
        text_encoder_params=0 if small else int(model.text_encoders_b * 1e9),
        vae_scale_factor=model.vae_scale_factor, name=model.key, fp8_skip=fp8_skip_patterns(transformer))


# --- what a run holds, per memory mode ----------------------------------------------------------


@dataclass(frozen=True)
class MemoryMode:
    """The memory settings of a run (the FDFOConfig fields of the same names, plus `offload`:
    text encoders, VAE and reward model leave the device between their phases)."""

    base_weights: str = "auto"  # "auto" (bf16 on a GPU) or "fp8"
    gradient_checkpointing: bool = False
    storage_device: str = "auto"  # "auto" (the device) or "cpu"
    offload: bool = True
    sample_batch_size: int = 8
    train_batch_size: int = 16
    decode_batch_size: int = 16

    def describe(self) -> str:
        parts = ["fp8 base weights" if self.base_weights == "fp8" else "base weights in the load dtype (bf16 on a GPU)"]
        if self.gradient_checkpointing:
            parts.append("gradient checkpointing")
        parts.append("recorded states in host RAM" if self.storage_device == "cpu" else "recorded states on the device")
        parts.append("encoders / VAE / reward offloaded between phases" if self.offload else
                     "encoders / VAE / reward resident")
        parts.append(f"micro-batches: sample {self.sample_batch_size} pairs, train {self.train_batch_size} items, "
                     f"decode {self.decode_batch_size} images")
        return ", ".join(parts)

    def config_changes(self) -> dict[str, Any]:
        return {"base_weights": self.base_weights, "gradient_checkpointing": self.gradient_checkpointing,
                "storage_device": self.storage_device, "sample_batch_size": self.sample_batch_size,
                "train_batch_size": self.train_batch_size, "decode_batch_size": self.decode_batch_size}


@dataclass
class Estimate:
    """Estimated device memory of a run in one mode (bytes), by phase; `peak` includes the margins."""

    mode: MemoryMode
    weights: int
    lora: int
    resident_others: int
    states_device: int
    states_host: int
    phases: dict[str, int] = field(default_factory=dict)  # phase -> bytes beyond the resident ones
    peak: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["peak_gib"] = self.peak / GIB
        d["states_host_gib"] = self.states_host / GIB
        return d


def estimate(mem: ModelMemory, mode: MemoryMode, pairs_per_rank: int, num_steps: int, cfg_scale: float = 1.0,
             steps_per_sample: int = 0) -> Estimate:
    """Estimated peak device memory of an FDFO run on one device in `mode` (see the module doc)."""
    wb = mem.weight_bytes
    if mode.base_weights == "fp8":
        weights = mem.linear_params * 1 + (mem.transformer_params - mem.linear_params) * wb + mem.largest_linear * wb
    else:
        weights = mem.transformer_params * wb
    lora = mem.lora_params * LORA_BYTES_PER_PARAM
    text = mem.text_encoder_params * wb
    vae = mem.vae_params * wb
    latent = math.prod(mem.latent_shape) * 4  # fp32
    images = 2 * pairs_per_rank
    states = 2 * images * num_steps * latent + images * latent  # states, velocities, final latents
    states_device = 0 if mode.storage_device == "cpu" else states
    states_host = states if mode.storage_device == "cpu" else 0
    cfg = 2 if cfg_scale != 1.0 else 1
    sample_images = min(mode.sample_batch_size, pairs_per_rank) * 2 * cfg
    micro = 3 * latent  # x, recorded velocity, endpoint difference of a training item
    train_fit = mem.train_checkpointed if mode.gradient_checkpointing else mem.train
    fp8_upcast = 0
    if mode.base_weights == "fp8":
        # Autograd keeps each layer's upcast weight for the backward pass: all of them without
        # checkpointing, one block's worth (bounded here by the largest layer x 16) with it.
        fp8_upcast = (16 * mem.largest_linear if mode.gradient_checkpointing else mem.linear_params) * wb
    phases = {
        "encode": text if mode.offload else 0,
        "sample": mem.at(mem.sample, sample_images) + sample_images * 2 * latent * (
            num_steps + 1 if mode.storage_device != "cpu" else 1),
        "decode": (vae + mem.reward_bytes if mode.offload else 0) + mem.at(mem.decode, min(mode.decode_batch_size,
                                                                                             images)),
        "train": mem.at(train_fit, mode.train_batch_size * cfg) + mode.train_batch_size * cfg * micro + fp8_upcast,
    }
    resident = 0 if mode.offload else text + vae + mem.reward_bytes
    live = weights + lora + resident + states_device + max(phases.values())
    peak = int(live * (1 + ALLOCATOR_MARGIN)) + CONTEXT_BYTES
    return Estimate(mode=mode, weights=weights, lora=lora, resident_others=resident, states_device=states_device,
                    states_host=states_host, phases=phases, peak=peak)


# --- the chooser ---------------------------------------------------------------------------------


def _halvings(n: int) -> list[int]:
    out = []
    while n >= 1:
        out.append(n)
        n //= 2
    return out


#: The memory modes, cheapest in time first: each rung gives up speed for memory.
LADDER: tuple[dict[str, Any], ...] = (
    {"base_weights": "auto", "storage_device": "auto", "gradient_checkpointing": False},
    {"base_weights": "auto", "storage_device": "cpu", "gradient_checkpointing": False},
    {"base_weights": "auto", "storage_device": "cpu", "gradient_checkpointing": True},
    {"base_weights": "fp8", "storage_device": "cpu", "gradient_checkpointing": False},
    {"base_weights": "fp8", "storage_device": "cpu", "gradient_checkpointing": True},
)


@dataclass
class Plan:
    """What the chooser picked: the mode, its estimate, and the lines to print."""

    mode: MemoryMode
    estimate: Estimate
    budget_bytes: int
    tried: list[Estimate]

    def message(self) -> str:
        e = self.estimate
        lines = [f"--vram {self.budget_bytes / GIB:g} GB: {self.mode.describe()}",
                 f"  expected peak {e.peak / GIB:.1f} GiB (weights {e.weights / GIB:.1f}, LoRA + AdamW "
                 f"{e.lora / GIB:.2f}, states {e.states_device / GIB:.1f}, largest phase "
                 f"{max(e.phases, key=e.phases.get)} {max(e.phases.values()) / GIB:.1f}; estimate, not measured)"]
        if e.states_host:
            lines.append(f"  host RAM for the recorded states: {e.states_host / GIB:.1f} GiB")
        return "\n".join(lines)


def choose_mode(mem: ModelMemory, budget_gb: float, pairs_per_rank: int, num_steps: int, cfg_scale: float = 1.0,
                sample_batch_size: int = 8, train_batch_size: int = 16, decode_batch_size: int = 16,
                allow_fp8: bool = True, base_weights: str | None = None) -> Plan:
    """The fastest memory mode whose estimated peak fits `budget_gb` (GiB of device memory).

    Walks `LADDER` (bf16 with everything on the device; recorded states in host RAM; gradient
    checkpointing; fp8 base weights; fp8 and checkpointing) and, within a rung, the largest
    micro-batches up to the given ones (training first, then sampling, then decoding). A rung is
    taken when its training micro-batch still keeps the GPU busy (>= BUSY_TOKENS image tokens, or
    the given size); otherwise the next rung is tried, and if none does, the first rung that fits
    at all. Raises MemoryBudgetError with the smallest estimate when nothing fits.

    base_weights: only rungs with these weights ("auto" / "fp8"), when the front end does not
    choose them (ComfyUI: the loader's weight dtype); allow_fp8=False leaves out the fp8 rungs.
    """
    budget = int(budget_gb * GIB)
    tried: list[Estimate] = []
    busy = min(train_batch_size, max(1, math.ceil(BUSY_TOKENS / max(1, mem.image_tokens))))
    fallback: Plan | None = None
    for rung in LADDER:
        if (rung["base_weights"] == "fp8" and not allow_fp8) or (base_weights and rung["base_weights"] != base_weights):
            continue
        fit = None
        for tb in _halvings(train_batch_size):
            for sb in _halvings(sample_batch_size):
                for db in _halvings(decode_batch_size):
                    mode = MemoryMode(sample_batch_size=sb, train_batch_size=tb, decode_batch_size=db, **rung)
                    e = estimate(mem, mode, pairs_per_rank, num_steps, cfg_scale)
                    if e.peak <= budget:
                        fit = e
                        break
                    if db == 1:
                        tried.append(e)
                if fit:
                    break
            if fit:
                break
        if fit is None:
            continue
        plan = Plan(fit.mode, fit, budget, tried)
        if fit.mode.train_batch_size >= busy:
            return plan
        fallback = fallback or plan
    if fallback is not None:
        return fallback
    if not tried:
        raise MemoryBudgetError(f"no memory mode to try for {mem.name} (base weights {base_weights!r} not allowed)")
    smallest = min(tried, key=lambda e: e.peak)
    raise MemoryBudgetError(
        f"{mem.name} does not fit in {budget_gb:g} GB in any memory mode: the smallest estimate is "
        f"{smallest.peak / GIB:.1f} GiB ({smallest.mode.describe()}; weights {smallest.weights / GIB:.1f} GiB, "
        f"largest phase {max(smallest.phases.values()) / GIB:.1f} GiB). Use a GPU with more memory, train at a lower "
        "resolution (--height / --width), or a smaller model of the family"
        + ("" if allow_fp8 else "; fp8 base weights were not allowed") + ".")


# --- the model a backend trains (for the run-time estimate and LoRA metadata) --------------------


def transformer_module(backend: Any) -> torch.nn.Module | None:
    """The diffusion transformer of a backend (diffusers: `.transformer`; ComfyUI: its MODEL's
    `diffusion_model`), or None."""
    module = getattr(backend, "transformer", None)
    if isinstance(module, torch.nn.Module):
        return module
    module = getattr(getattr(backend, "base", None), "diffusion_model", None)
    return module if isinstance(module, torch.nn.Module) else None


def tokens_per_image(backend: Any, latent_shape: tuple[int, ...], cond: Any) -> int | None:
    """Image tokens (latent cells over the family's patch) plus text tokens (the longest sequence in
    the conditioning), or None when the conditioning is not a dict of tensors."""
    family = getattr(backend, "model_family", None)
    module = transformer_module(backend)
    config = getattr(module, "config", None)
    patch = getattr(family, "latent_patch", None) or (int(config.get("patch_size", 1) or 1)
                                                     if isinstance(config, dict) or hasattr(config, "get") else 1)
    cells = 1
    for n in latent_shape[-2:]:
        cells *= int(n)
    image = cells // (patch * patch)
    if not isinstance(cond, dict):
        return None
    text = max((int(v.shape[1]) for v in cond.values() if isinstance(v, torch.Tensor) and v.ndim == 3), default=0)
    return image + text
