"""diffusers + peft backend: any flow-matching pipeline of a registered family (`fdfo_core.families`).

The transformer gets a peft LoRA on its attention projections (rank 32, alpha 64, Gaussian init
by default); everything else is frozen. Text encoders and the VAE can live on the CPU between
the phases that need them, which is what lets SD3.5 / Flux train in <= 48 GB. What differs
between families (latent layout, prompt encoding, the velocity call, the time grid, the LoRA key
mapping) is the family's; this module only loads, offloads, adapts and dispatches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.utils.checkpoint

from .interface import BackendError, NamedAdapterParams, weights_digest
from ..flow.conditioning import Cond
from ..flow.image_sizes import SizeRule
from ..config import FDFOConfig
from ..families import (
    Family,
    FamilyError,
    FamilyOptions,
    family_for_pipeline,
    needs_input,
    pipeline_refusal,
    supported_families_text,
)
from .lora_files import (
    LoraFileError,
    check_family,
    comfy_to_diffusers,
    diffusers_to_comfy_module,
    fuse_lora,
    load_lora,
)
from ..files.text_files import read_json_file
from ..flow.seeds import derive_seed

ADAPTER = "fdfo"
#: Optional file in a model folder with FDFO settings the model was trained with
#: (e.g. {"max_sequence_length": 16} for the bundled toy model, which has no T5).
SETTINGS_FILE = "fdfo.json"
#: Pipelines of eps / v-prediction diffusion models people try first (their schedulers tell the rest).
_DIFFUSION_PIPELINES = {
    "StableDiffusionPipeline": "SD1.x / SD2.x", "StableDiffusionXLPipeline": "SDXL",
    "StableDiffusionXLImg2ImgPipeline": "SDXL", "StableCascadePriorPipeline": "Stable Cascade",
    "KandinskyV22Pipeline": "Kandinsky 2.2", "PixArtAlphaPipeline": "PixArt-alpha",
    "PixArtSigmaPipeline": "PixArt-sigma", "HunyuanDiTPipeline": "Hunyuan-DiT",
}


def _supported() -> str:
    return "Supported families: " + supported_families_text("diffusers") + "."


def pipeline_index(model: str | Path) -> dict[str, Any]:
    """The model_index.json of a diffusers model folder or cached hub id, with clear errors."""
    path = Path(model)
    if path.exists():
        index = path / "model_index.json"
        if not index.exists():
            if path.is_file():
                raise BackendError(
                    f"{path} is a single file; the CLI needs a diffusers pipeline folder (with model_index.json). "
                    "Load single-file checkpoints with ComfyUI's loaders and the FDFO nodes, or convert it with "
                    "diffusers' from_single_file(...).save_pretrained(folder)."
                )
            raise BackendError(f"{path} has no model_index.json: it is not a diffusers pipeline folder")
        return read_json_file(index, "pipeline index")
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(str(model)))
    except Exception as e:
        raise BackendError(
            f"cannot find model {model!r}: not a local folder, and the Hugging Face hub/cache has no such "
            f"pipeline ({type(e).__name__}: {e}). Pass a diffusers pipeline folder or hub id. {_supported()}"
        ) from e


def pipeline_class_name(model: str | Path) -> str:
    """The `_class_name` of a diffusers model folder or cached hub id, with clear errors."""
    return pipeline_index(model)["_class_name"]


def family_for_class(cls_name: str, scheduler: str | None, label: str) -> Family:
    """The family that trains pipeline class `cls_name`, or a BackendError that names the model,
    says why it is refused and lists the supported families (from the registry).

    scheduler: the pipeline's scheduler class name when known (a flow model has a FlowMatch one,
        or one its family declares in `diffusers_flow_schedulers`).
    """
    family = family_for_pipeline(cls_name)
    if family is not None:
        if scheduler is not None and not family.diffusers_flow_scheduler(scheduler):
            raise BackendError(
                f"{label} is a {cls_name} whose scheduler is {scheduler}, not a flow-matching scheduler; FDFO "
                "needs a rectified-flow model sampled with FlowMatchEulerDiscreteScheduler (restore the "
                "model's own scheduler)."
            )
        return family
    refusal = pipeline_refusal(cls_name)
    if refusal is not None:
        raise BackendError(f"{label} is a {cls_name}: {refusal}. {_supported()}")
    need = needs_input(cls_name)
    if need is not None:
        fam, what = need
        raise BackendError(
            f"{label} is a {cls_name}, an image-conditioned {fam.title} pipeline that needs {what}; FDFO trains "
            f"text-to-image and gives none. Load the text-to-image pipeline "
            f"({' / '.join(fam.diffusers_pipelines)}) of the same weights instead. {_supported()}"
        )
    if cls_name in _DIFFUSION_PIPELINES or (scheduler is not None and "FlowMatch" not in scheduler):
        kind = _DIFFUSION_PIPELINES.get(cls_name, cls_name)
        raise BackendError(
            f"{label} is a {cls_name} ({kind}) with an eps / v-prediction diffusion scheduler"
            f"{f' ({scheduler})' if scheduler else ''}: a diffusion model, not a flow-matching (rectified-flow) "
            f"model, and FDFO trains flow models only. {_supported()}"
        )
    raise BackendError(f"{label} is a {cls_name}, which FDFO does not support (yet). {_supported()}")


def _scheduler_class(index: dict[str, Any]) -> str | None:
    entry = index.get("scheduler")
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] else None


def check_supported(model: str | Path) -> str:
    """The model family name of a folder or hub id, or a BackendError naming the supported families.

    Cheap (reads model_index.json only): call it before loading rewards or weights.
    """
    index = pipeline_index(model)
    return family_for_class(index["_class_name"], _scheduler_class(index), str(model)).name


def load_pipeline(model: str | Path, dtype: torch.dtype = torch.float32):
    """Load a supported flow-matching pipeline (weights stay on the CPU; the backend moves them)."""
    index = pipeline_index(model)
    cls_name = index["_class_name"]
    family_for_class(cls_name, _scheduler_class(index), str(model))
    import diffusers

    pipe_cls = getattr(diffusers, cls_name)
    kwargs: dict[str, Any] = {"torch_dtype": dtype}  # "dtype" in diffusers >= 0.36; this spelling works on both
    # Components saved as [null, null] (SD3 without T5) must be passed explicitly as None.
    for name, value in index.items():
        if not name.startswith("_") and isinstance(value, list) and value and value[0] is None:
            kwargs[name] = None
    return pipe_cls.from_pretrained(str(model), **kwargs)


def model_settings(model: str | Path) -> dict[str, Any]:
    path = Path(model) / SETTINGS_FILE
    return read_json_file(path, "model settings file") if path.exists() else {}


def _checkpoint_block(module, *args, **kwargs):
    """diffusers' default checkpointing function (non-reentrant torch checkpoint of the block) that
    also passes keyword arguments: some transformers call it with them (HunyuanImage:
    `attention_mask=`, `image_rotary_emb=`), which the default function refuses."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False, **kwargs)


def use_channels_last(module: torch.nn.Module) -> bool:
    """Store a 2-D convolutional network's weights channels-last (NHWC) for the CPU: oneDNN's
    convolutions then run in that layout and their outputs stay in it. The bundled toy's VAE decodes
    64 images 1.5x faster (2 threads, docs/benchmarks/speed.md); results differ by float rounding
    only (~1e-5). Modules with 3-D convolutions (video VAEs such as Wan's) and modules without
    convolutions are left as they are. Returns whether the module was converted."""
    nn = torch.nn
    kinds = [type(m) for m in module.modules()]
    if not any(issubclass(k, (nn.Conv2d, nn.ConvTranspose2d)) for k in kinds) or any(
            issubclass(k, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose3d)) for k in kinds):
        return False
    module.to(memory_format=torch.channels_last)
    return True


def pipeline_family(pipe) -> Family:
    """The family of a loaded pipeline (BackendError when it is not supported)."""
    family = family_for_class(type(pipe).__name__, type(pipe.scheduler).__name__, "this pipeline")
    try:
        family.diffusers_check(pipe)
    except FamilyError as e:
        raise BackendError(str(e)) from e
    return family


#: The oldest diffusers release the backend runs on (pyproject.toml states the same), and the
#: features that need it.
DIFFUSERS_FLOOR = ("0.33", "gradient checkpointing with our checkpoint function "
                           "(enable_gradient_checkpointing(fn)) and fp8 base weights (diffusers.hooks.apply_layerwise_casting)")


def check_diffusers_version(family: Family, version: str | None = None) -> None:
    """Raise BackendError when the installed diffusers (or `version`) is older than the package's
    floor or the family's `min_diffusers`, naming the feature that needs the newer release."""
    from packaging.version import Version

    if version is None:
        import diffusers

        version = diffusers.__version__
    needs = [DIFFUSERS_FLOOR] + ([family.min_diffusers] if family.min_diffusers else [])
    for floor, why in needs:
        if Version(version) < Version(floor):
            raise BackendError(f"{family.title} on diffusers {version}: diffusers >= {floor} is needed ({why}). "
                               f"Upgrade it: pip install -U 'diffusers>={floor}'")


class DiffusersBackend(NamedAdapterParams):
    """FlowBackend over a diffusers flow-matching pipeline with a peft LoRA on the transformer.

    max_sequence_length / guidance: the family's run-time options (`FamilyOptions`); None = the
    family's default (e.g. 256 text tokens for SD3, 512 and guidance 3.5 for Flux.1 dev).
    """

    def __init__(
        self,
        pipe,
        config: FDFOConfig,
        device: str | torch.device = "cpu",
        max_sequence_length: int | None = None,
        guidance: float | None = None,
        offload: bool | None = None,
        lora_init: str = "gaussian",
        add_adapter: bool = True,
    ):
        self.pipe = pipe
        self.model_family = pipeline_family(pipe)
        check_diffusers_version(self.model_family)
        self.family = self.model_family.name
        self.device = torch.device(device)
        self.transformer = pipe.transformer
        self.model_dtype = self.transformer.dtype
        self.options = self.model_family.options(FamilyOptions(max_sequence_length, guidance))
        # Text encoders and VAE leave the accelerator when they are not needed.
        self.offload = (self.device.type == "cuda") if offload is None else offload
        self.config = config

        for module in self._frozen_modules():
            module.requires_grad_(False)
            module.eval()
        self.transformer.requires_grad_(False)
        self.transformer.eval()
        self.model_family.diffusers_prepare(pipe)
        self.lora_targets = self.model_family.resolve_lora_targets(config.lora_targets)
        self._params: dict[str, torch.nn.Parameter] = {}
        if add_adapter:
            self._add_adapter(config, lora_init)
        # The weights' digest before any storage cast: fp8 storage may change on resume (and an fp32
        # checkpoint cast to fp8 directly is not what its bf16 rounding would give).
        ident = self.transformer.get_submodule(self.model_family.fingerprint_module)
        self._weights_digest = weights_digest(getattr(ident, "base_layer", ident).weight)
        if config.base_weights == "fp8":
            from .fp8 import enable_fp8_storage, fp8_available

            if not fp8_available():
                raise BackendError(f"base_weights fp8 needs torch >= 2.1 (float8 tensors); this is torch "
                                   f"{torch.__version__}. Use base_weights auto.")
            # Cast here, on the CPU, so the bf16 copy never reaches the device.
            enable_fp8_storage(self.transformer, compute_dtype=self.model_dtype)
        self.transformer.to(self.device)
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing(_checkpoint_block)
        if config.compile:
            # In place (nn.Module.compile): the family hooks keep calling pipe.transformer.
            self.transformer.compile()
        if not self.offload:
            for module in self._frozen_modules():
                module.to(self.device)
        if self.device.type == "cpu" and isinstance(getattr(pipe, "vae", None), torch.nn.Module):
            use_channels_last(pipe.vae)

    @property
    def max_sequence_length(self) -> int:
        return self.options.max_sequence_length

    def sampling_options(self) -> dict[str, Any]:
        """What `fdfo sample --lora` needs beyond the config to sample as this LoRA was trained
        (written into its metadata): the text length and, for families with a guidance embedding,
        its value (under the key "flux_guidance", as recorded since Flux was the first)."""
        out: dict[str, Any] = {"max_sequence_length": self.options.max_sequence_length}
        if self.model_family.guidance is not None:
            out["flux_guidance"] = self.options.guidance
        return out

    def _frozen_modules(self) -> list[torch.nn.Module]:
        """Every model component but the transformer (text encoders, VAE, image encoders)."""
        return [m for n, m in sorted(self.pipe.components.items())
                if isinstance(m, torch.nn.Module) and m is not self.transformer]

    # --- adapter -------------------------------------------------------------------------------

    def _add_adapter(self, config: FDFOConfig, init: str) -> None:
        from peft import LoraConfig

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            init_lora_weights=init,
            target_modules=list(self.lora_targets),
        )
        try:
            # peft draws the initial LoRA from the global RNG: seed it from the run's seed (without
            # disturbing the caller's RNG) so a run repeats in a fresh process.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(config.seed, "lora-init"))
                self.transformer.add_adapter(lora, adapter_name=ADAPTER)
        except ValueError as e:
            raise BackendError(
                f"cannot attach LoRA to targets {list(self.lora_targets)}: {e}. {self.model_family.title} "
                f"uses {list(self.model_family.lora_targets)}"
            ) from e
        for name, _ in self.lora_layers():
            try:  # fail now, not when the LoRA file is written after training
                diffusers_to_comfy_module(self.model_family, name, self._out_features)
            except LoraFileError as e:
                raise BackendError(f"LoRA target {name!r} cannot be saved as a ComfyUI LoRA: {e}") from e
        for name, p in self.transformer.named_parameters():
            if "lora_" in name:
                # fp32 master weights for the adapter, whatever the model's dtype (bf16 on GPU).
                p.data = p.data.float()
                p.requires_grad_(True)
                self._params[name] = p

    def lora_layers(self) -> Iterator[tuple[str, Any]]:
        from peft.tuners.lora import LoraLayer

        for name, module in self.transformer.named_modules():
            if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
                yield name, module

    @contextlib.contextmanager
    def adapter_disabled(self):
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    def _out_features(self, name: str) -> int:
        module = self.transformer.get_submodule(name)
        module = getattr(module, "base_layer", module)
        return module.out_features

    def lora_file_tensors(self) -> dict[str, torch.Tensor]:
        factors = {}
        scale = None
        for name, layer in self.lora_layers():
            factors[name] = (layer.lora_A[ADAPTER].weight.detach().cpu(), layer.lora_B[ADAPTER].weight.detach().cpu())
            scale = layer.scaling[ADAPTER]
        return fuse_lora(self.model_family, factors, scale, self._out_features)

    def fingerprint(self) -> dict[str, str]:
        cfg = dict(self.transformer.config)
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        return {
            "family": self.family,
            "transformer": type(self.transformer).__name__,
            "transformer_config": hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16],
            # taken before the fp8 cast and rounded to e4m3 (backend.weights_digest): the same with
            # fp8 / bf16 / fp32 storage, which may change on resume
            "weights": self._weights_digest,
            "lora": f"rank={self.config.lora_rank} alpha={self.config.lora_alpha:g} targets={','.join(self.lora_targets)}",
        }

    # --- sampling interface ---------------------------------------------------------------------

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return tuple(self.model_family.diffusers_latent_shape(self.pipe, height, width))

    def image_size_rule(self) -> SizeRule:
        """Sizes this model makes: multiples of the VAE's downscale x the transformer's patch (the
        family's `latent_patch`, e.g. 2x2 latent packing for Flux), at least one patch, at most
        `pos_embed_max_size` patches (SD3)."""
        f = self.model_family.diffusers_vae_scale(self.pipe)
        config = self.transformer.config
        patch = self.model_family.latent_patch or int(config.get("patch_size", 1) or 1)
        max_patches = config.get("pos_embed_max_size")
        return SizeRule(
            multiple=f * patch, minimum=f * patch, maximum=int(max_patches) * f * patch if max_patches else None,
            why=f"the VAE downscales by {f} and the transformer takes {patch}x{patch} latent patches",
        )

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        return self.model_family.diffusers_sigmas(self.pipe, num_steps, height, width).float().cpu()

    @contextlib.contextmanager
    def _on_device(self, *modules):
        modules = [m for m in modules if m is not None]
        if self.offload:
            for m in modules:
                m.to(self.device)
        try:
            yield
        finally:
            if self.offload:
                for m in modules:
                    m.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Cond:
        family = self.model_family
        with self._on_device(*family.diffusers_text_encoders(self.pipe)):
            cond = family.diffusers_encode_prompts(self.pipe, list(prompts), self.device, self.options)
        # Embeddings in the model's dtype; masks and ids keep theirs.
        return {k: v.to(self.model_dtype) if v.is_floating_point() else v for k, v in cond.items()}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        out = self.model_family.diffusers_velocity(self.pipe, x.to(self.model_dtype), t, cond, self.options)
        return out.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        # No torch.no_grad here: the reward-gradient baselines differentiate through the decoder.
        # Callers that only score run under no_grad themselves.
        with self._on_device(self.pipe.vae):
            images = self.model_family.diffusers_decode(self.pipe, latents)
        # contiguous: a channels-last VAE (use_channels_last) returns NHWC-strided images
        return (images.float() / 2 + 0.5).clamp(0, 1).contiguous()


def build_backend(model: str | Path, config: FDFOConfig, device: str | torch.device = "cpu", vram: float | None = None,
                  reward=None, world_size: int = 1, log=print, **kwargs) -> DiffusersBackend:
    """Load a model folder or hub id and wrap it. bf16 weights on CUDA (unless precision is fp32),
    fp32 on the CPU.

    vram: a device memory budget in GiB: the memory settings (fp8 / bf16 base weights, gradient
    checkpointing, storage device, micro-batches) are chosen from estimates for that budget
    (`choose_memory_mode`), printed with `log`, and are in the backend's `config`. Raises
    fdfo_core.backends.memory.MemoryBudgetError when nothing fits.
    """
    device = torch.device(device)
    dtype = torch.float32
    if device.type == "cuda" and config.precision in ("auto", "bf16"):
        dtype = torch.bfloat16
    elif device.type == "cuda" and config.precision == "fp16":
        dtype = torch.float16
    pipe = load_pipeline(model, dtype=dtype)
    settings = model_settings(model) if Path(model).exists() else {}
    if kwargs.get("max_sequence_length") is None:
        kwargs["max_sequence_length"] = settings.get("max_sequence_length")
    if vram is not None:
        config, plan = choose_memory_mode(pipe, config, vram, reward=reward, world_size=world_size,
                                          max_sequence_length=kwargs.get("max_sequence_length"))
        if log is not None:
            log(plan.message())
        kwargs["offload"] = plan.mode.offload
    return DiffusersBackend(pipe, config, device=device, **kwargs)


def module_bytes(obj: Any, dtype_bytes: int | None = None) -> int:
    """Bytes of the torch modules an object holds (itself, its attributes, lists / dicts of them;
    one level deep, shared modules once): what a reward model or encoder costs on the device."""
    found: dict[int, torch.nn.Module] = {}

    def visit(x: Any, depth: int) -> None:
        if isinstance(x, torch.nn.Module):
            found[id(x)] = x
        elif depth > 0 and isinstance(x, (list, tuple)):
            for y in x:
                visit(y, depth - 1)
        elif depth > 0 and isinstance(x, dict):
            for y in x.values():
                visit(y, depth - 1)
        elif depth > 0 and hasattr(x, "__dict__") and not isinstance(x, type):
            for y in vars(x).values():
                visit(y, depth - 1)

    visit(obj, 2)
    params: dict[int, torch.Tensor] = {}
    for m in found.values():
        params.update({id(p): p for p in m.parameters()})
    return sum(p.numel() * (dtype_bytes or p.element_size()) for p in params.values())


def pipeline_memory(pipe, config: FDFOConfig, max_sequence_length: int | None = None, reward=None):
    """fdfo_core.backends.memory.ModelMemory of a loaded pipeline at the config's resolution and LoRA
    (a meta-device copy of its transformer and VAE is measured; the pipeline is not touched)."""
    from .memory import measure_model
    from .fp8 import fp8_skip_patterns

    family = pipeline_family(pipe)
    vae = pipe.vae
    encoders = [m for m in family.diffusers_text_encoders(pipe)]
    text_params = sum(p.numel() for m in encoders for p in m.parameters())
    options = family.options(FamilyOptions(max_sequence_length))
    # One prompt through the family's own encoding gives the conditioning's exact shapes and masks.
    with torch.no_grad():
        example = family.diffusers_encode_prompts(pipe, ["a photo"], torch.device("cpu"), options)
    scale = getattr(pipe, "vae_scale_factor", None) or getattr(pipe, "vae_scale_factor_spatial", 8)
    return measure_model(
        family, pipe.transformer, config.height, config.width, options.max_sequence_length, config.lora_rank,
        family.resolve_lora_targets(config.lora_targets), vae=vae, text_encoder_params=text_params,
        reward_bytes=module_bytes(reward, 2) if reward is not None else 0, vae_scale_factor=int(scale),
        name=type(pipe.transformer).__name__, fp8_skip=fp8_skip_patterns(pipe.transformer), pipe=pipe, cond_example=example)


def choose_memory_mode(pipe, config: FDFOConfig, vram_gb: float, reward=None, world_size: int = 1,
                       max_sequence_length: int | None = None):
    """(config with the chosen memory settings, fdfo_core.backends.memory.Plan) for a budget of `vram_gb`
    GiB per device; MemoryBudgetError when no mode fits."""
    from .memory import MemoryBudgetError, choose_mode

    try:
        mem = pipeline_memory(pipe, config, max_sequence_length, reward)
    except Exception as e:  # a family's velocity call that cannot run on shapes alone
        raise MemoryBudgetError(
            f"cannot estimate the memory of this {type(pipe.transformer).__name__} on the meta device "
            f"({type(e).__name__}: {e}); leave out --vram and set the memory flags (--gradient-checkpointing, "
            "--storage-device, --base-weights, batch sizes) by hand") from e
    pairs = -(-config.pairs_per_epoch // max(1, world_size))
    plan = choose_mode(mem, vram_gb, pairs, config.num_steps, config.cfg_scale, config.sample_batch_size,
                       config.train_batch_size, config.decode_batch_size)
    return config.replace(**plan.mode.config_changes()).validate(), plan


def lora_to_diffusers_state_dict(pipe, lora_path: str | Path) -> dict[str, torch.Tensor]:
    """Convert an FDFO (ComfyUI-format) LoRA file into the peft keys `pipe.load_lora_weights` takes.

    The scale alpha / rank is folded into lora_B, so the result loads at the right strength
    without alpha keys.
    """
    family = pipeline_family(pipe)
    tensors, meta = load_lora(lora_path)
    check_family(meta, family.name, lora_path)
    transformer = pipe.transformer
    names = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]

    def out_features(name: str) -> int:
        m = transformer.get_submodule(name)
        return getattr(m, "base_layer", m).out_features

    factors = comfy_to_diffusers(family, tensors, names, out_features)
    sd = {}
    for name, (a, b) in factors.items():
        sd[f"transformer.{name}.lora_A.weight"] = a
        sd[f"transformer.{name}.lora_B.weight"] = b
    return sd


def load_lora_into_pipeline(pipe, lora_path: str | Path, adapter_name: str = "fdfo", scale: float = 1.0) -> None:
    """One line to use an FDFO LoRA in diffusers: ``load_lora_into_pipeline(pipe, "lora.safetensors")``."""
    sd = lora_to_diffusers_state_dict(pipe, lora_path)
    if not sd:
        raise LoraFileError(f"{lora_path} has no LoRA weights for this model")
    if hasattr(pipe, "load_lora_weights"):
        pipe.load_lora_weights(sd, adapter_name=adapter_name)
        if scale != 1.0:
            pipe.set_adapters([adapter_name], adapter_weights=[scale])
        return
    # Pipelines without diffusers' LoRA loader mixin (HunyuanImage): the transformer's own peft loader.
    transformer = pipe.transformer
    if not hasattr(transformer, "load_lora_adapter"):
        raise LoraFileError(f"{type(pipe).__name__} and its {type(transformer).__name__} cannot load LoRA weights "
                            "in this diffusers version")
    transformer.load_lora_adapter(sd, prefix="transformer", adapter_name=adapter_name)
    if scale != 1.0:
        transformer.set_adapters([adapter_name], weights=[scale])
