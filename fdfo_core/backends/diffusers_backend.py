"""diffusers + peft backend: StableDiffusion3Pipeline (SD3, SD3.5) and FluxPipeline (Flux.1).

The transformer gets a peft LoRA on its attention projections (rank 32, alpha 64, Gaussian init
by default); everything else is frozen. Text encoders and the VAE can live on the CPU between
the phases that need them, which is what lets SD3.5 / Flux train in <= 48 GB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch

from ..backend import BackendError, NamedAdapterParams
from ..conditioning import Cond
from ..image_size import SizeRule
from ..config import FDFOConfig
from ..lora_files import (
    LoraFileError,
    check_family,
    comfy_to_diffusers,
    fuse_lora,
    load_lora,
)
from ..textfiles import read_json_file
from ..trainer import derive_seed

#: diffusers pipeline class -> model family.
SUPPORTED_PIPELINES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
ADAPTER = "fdfo"
#: Optional file in a model folder with FDFO settings the model was trained with
#: (e.g. {"max_sequence_length": 16} for the bundled toy model, which has no T5).
SETTINGS_FILE = "fdfo.json"


def _supported_text() -> str:
    return "StableDiffusion3Pipeline (SD3 / SD3.5) and FluxPipeline (Flux.1)"


def pipeline_class_name(model: str | Path) -> str:
    """The `_class_name` of a diffusers model folder or cached hub id, with clear errors."""
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
        return read_json_file(index, "pipeline index")["_class_name"]
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(str(model))
    except Exception as e:
        raise BackendError(
            f"cannot find model {model!r}: not a local folder, and the Hugging Face hub/cache has no such "
            f"pipeline ({type(e).__name__}: {e}). Pass a diffusers folder of an {_supported_text()} model."
        ) from e
    return config["_class_name"]


def check_supported(model: str | Path) -> str:
    """The model family of a folder or hub id, or a BackendError naming the supported pipelines.

    Cheap (reads model_index.json only): call it before loading rewards or weights.
    """
    cls_name = pipeline_class_name(model)
    if cls_name not in SUPPORTED_PIPELINES:
        raise BackendError(
            f"{model} is a {cls_name}; FDFO trains flow-matching (rectified-flow) models and supports "
            f"{_supported_text()}. Diffusion models such as SD1.5 / SDXL are not flow models."
        )
    return SUPPORTED_PIPELINES[cls_name]


def load_pipeline(model: str | Path, dtype: torch.dtype = torch.float32):
    """Load a supported flow-matching pipeline (weights stay on the CPU; the backend moves them)."""
    cls_name = pipeline_class_name(model)
    check_supported(model)
    import diffusers

    pipe_cls = getattr(diffusers, cls_name)
    kwargs: dict[str, Any] = {"torch_dtype": dtype}  # "dtype" in diffusers >= 0.36; this spelling works on both
    path = Path(model)
    if path.exists():
        index = read_json_file(path / "model_index.json", "pipeline index")
        # Components saved as [null, null] (SD3 without T5) must be passed explicitly as None.
        for name, value in index.items():
            if not name.startswith("_") and isinstance(value, list) and value[0] is None:
                kwargs[name] = None
    return pipe_cls.from_pretrained(str(model), **kwargs)


def model_settings(model: str | Path) -> dict[str, Any]:
    path = Path(model) / SETTINGS_FILE
    return read_json_file(path, "model settings file") if path.exists() else {}


def pipeline_family(pipe) -> str:
    name = type(pipe).__name__
    if name not in SUPPORTED_PIPELINES:
        raise BackendError(f"unsupported pipeline {name}; FDFO supports {_supported_text()}")
    scheduler = type(pipe.scheduler).__name__
    if "FlowMatch" not in scheduler:
        raise BackendError(
            f"the pipeline's scheduler is {scheduler}, not a flow-matching scheduler; FDFO needs a "
            "rectified-flow model with FlowMatchEulerDiscreteScheduler"
        )
    return SUPPORTED_PIPELINES[name]


class DiffusersBackend(NamedAdapterParams):
    """FlowBackend over a diffusers SD3 / Flux pipeline with a peft LoRA on the transformer."""

    def __init__(
        self,
        pipe,
        config: FDFOConfig,
        device: str | torch.device = "cpu",
        max_sequence_length: int | None = None,
        flux_guidance: float = 3.5,
        offload: bool | None = None,
        lora_init: str = "gaussian",
        add_adapter: bool = True,
    ):
        self.pipe = pipe
        self.family = pipeline_family(pipe)
        self.device = torch.device(device)
        self.transformer = pipe.transformer
        self.model_dtype = self.transformer.dtype
        if max_sequence_length is None:
            max_sequence_length = 256 if self.family == "sd3" else 512
        self.max_sequence_length = max_sequence_length
        self.flux_guidance = flux_guidance
        # Text encoders and VAE leave the accelerator when they are not needed.
        self.offload = (self.device.type == "cuda") if offload is None else offload
        self.config = config

        for module in self._frozen_modules():
            module.requires_grad_(False)
            module.eval()
        self.transformer.requires_grad_(False)
        self.transformer.eval()
        self._params: dict[str, torch.nn.Parameter] = {}
        if add_adapter:
            self._add_adapter(config, lora_init)
        self.transformer.to(self.device)
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if not self.offload:
            for module in self._frozen_modules():
                module.to(self.device)

    def _frozen_modules(self) -> list[torch.nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")
        return [m for m in (getattr(self.pipe, n, None) for n in names) if m is not None]

    # --- adapter -------------------------------------------------------------------------------

    def _add_adapter(self, config: FDFOConfig, init: str) -> None:
        from peft import LoraConfig

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            init_lora_weights=init,
            target_modules=list(config.lora_targets),
        )
        try:
            # peft draws the initial LoRA from the global RNG: seed it from the run's seed (without
            # disturbing the caller's RNG) so a run repeats in a fresh process.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(config.seed, "lora-init"))
                self.transformer.add_adapter(lora, adapter_name=ADAPTER)
        except ValueError as e:
            raise BackendError(f"cannot attach LoRA to targets {list(config.lora_targets)}: {e}") from e
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
        return fuse_lora(self.family, factors, scale, self._out_features)

    def fingerprint(self) -> dict[str, str]:
        cfg = dict(self.transformer.config)
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        proj = self.transformer.get_submodule("proj_out").weight.detach().float().cpu().numpy().tobytes()
        return {
            "family": self.family,
            "transformer": type(self.transformer).__name__,
            "transformer_config": hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16],
            "weights": hashlib.sha256(proj).hexdigest()[:16],
            "lora": f"rank={self.config.lora_rank} alpha={self.config.lora_alpha:g} targets={','.join(self.config.lora_targets)}",
        }

    # --- sampling interface ---------------------------------------------------------------------

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        if self.family == "flux":
            c = self.transformer.config.in_channels // 4
            return (c, 2 * (height // (f * 2)), 2 * (width // (f * 2)))
        return (self.transformer.config.in_channels, height // f, width // f)

    def image_size_rule(self) -> SizeRule:
        """Sizes this model makes: multiples of the VAE's downscale x the transformer's patch (2x2
        latent packing for Flux), at least one patch, at most `pos_embed_max_size` patches (SD3)."""
        f = int(self.pipe.vae_scale_factor)
        config = self.transformer.config
        patch = 2 if self.family == "flux" else int(config.get("patch_size", 1) or 1)
        max_patches = config.get("pos_embed_max_size")
        return SizeRule(
            multiple=f * patch, minimum=f * patch, maximum=int(max_patches) * f * patch if max_patches else None,
            why=f"the VAE downscales by {f} and the transformer takes {patch}x{patch} latent patches",
        )

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        if self.family == "flux":
            import numpy as np
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            c, h, w = self.latent_shape(height, width)
            seq_len = (h // 2) * (w // 2)
            conf = scheduler.config
            mu = calculate_shift(seq_len, conf.get("base_image_seq_len", 256), conf.get("max_image_seq_len", 4096),
                                 conf.get("base_shift", 0.5), conf.get("max_shift", 1.15))
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
        else:
            scheduler.set_timesteps(num_steps)
        return scheduler.sigmas.float().cpu()

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
        p = self.pipe
        if self.family == "sd3":
            with self._on_device(p.text_encoder, p.text_encoder_2, getattr(p, "text_encoder_3", None)):
                emb, _, pooled, _ = p.encode_prompt(
                    prompt=prompts, prompt_2=None, prompt_3=None, device=self.device,
                    do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
                )
        else:
            with self._on_device(p.text_encoder, p.text_encoder_2):
                emb, pooled, _ = p.encode_prompt(
                    prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length,
                )
        return {"prompt_embeds": emb.to(self.model_dtype), "pooled": pooled.to(self.model_dtype)}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self.model_dtype
        if self.family == "sd3":
            out = self.transformer(
                hidden_states=x.to(dtype),
                timestep=(t * 1000).to(dtype),
                encoder_hidden_states=cond["prompt_embeds"],
                pooled_projections=cond["pooled"],
                return_dict=False,
            )[0]
            return out.float()
        b, c, h, w = x.shape
        p = self.pipe
        packed = p._pack_latents(x.to(dtype), b, c, h, w)
        img_ids = p._prepare_latent_image_ids(b, h // 2, w // 2, x.device, dtype)
        txt_ids = torch.zeros(cond["prompt_embeds"].shape[1], 3, device=x.device, dtype=dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.flux_guidance, device=x.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=packed, timestep=t.to(dtype), guidance=guidance,
            pooled_projections=cond["pooled"], encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]
        f = p.vae_scale_factor
        return p._unpack_latents(out, h * f, w * f, f).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        # No torch.no_grad here: the reward-gradient baselines differentiate through the decoder.
        # Callers that only score run under no_grad themselves.
        vae = self.pipe.vae
        sf = vae.config.scaling_factor
        shift = vae.config.shift_factor or 0.0
        with self._on_device(vae):
            images = vae.decode((latents / sf + shift).to(vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)


def build_backend(model: str | Path, config: FDFOConfig, device: str | torch.device = "cpu", **kwargs) -> DiffusersBackend:
    """Load a model folder or hub id and wrap it. bf16 weights on CUDA (unless precision is fp32),
    fp32 on the CPU."""
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
    return DiffusersBackend(pipe, config, device=device, **kwargs)


def lora_to_diffusers_state_dict(pipe, lora_path: str | Path) -> dict[str, torch.Tensor]:
    """Convert an FDFO (ComfyUI-format) LoRA file into the peft keys `pipe.load_lora_weights` takes.

    The scale alpha / rank is folded into lora_B, so the result loads at the right strength
    without alpha keys.
    """
    family = pipeline_family(pipe)
    tensors, meta = load_lora(lora_path)
    check_family(meta, family, lora_path)
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
    pipe.load_lora_weights(sd, adapter_name=adapter_name)
    if scale != 1.0:
        pipe.set_adapters([adapter_name], adapter_weights=[scale])
