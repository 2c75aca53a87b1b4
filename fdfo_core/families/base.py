"""What a model family is: the one place that knows a flow model's quirks.

A family module (`fdfo_core/families/<name>.py`) subclasses `Family`, fills in the declarations
and overrides the few hooks where it differs from the defaults, and registers one instance
(`fdfo_core.families.register`). The backends, sampler and trainer never branch on a family:

- the diffusers backend calls the `diffusers_*` hooks with the pipeline (latent shape, time grid,
  prompt encoding, the velocity call, decoding) and `lora_map` to write ComfyUI-native LoRA files;
- the ComfyUI backend lets ComfyUI run the model (velocity, latent format, conditioning and time
  grid come from the MODEL) and uses the family for recognition, `lora_map` (which row slices of
  which linears get a LoRA), `comfy_check` (refusals) and `comfy_conditioning` (defaults a
  conditioning may lack, e.g. Flux's guidance value).

Nothing here imports diffusers or ComfyUI at module level: `fdfo_core` is imported inside ComfyUI,
whose environment may have no diffusers; hooks import what they need when called.

Conventions shared by every hook (the core's, see `fdfo_core.backends.interface.FlowBackend`):
- latents are float [B, C, h, w] in the model's latent space (after the VAE's scaling / shift),
  unpacked; a model that works on packed tokens or video latents [B, C, T, h, w] (T = 1) converts
  inside `diffusers_velocity` and `diffusers_decode`;
- flow time t in [0, 1], x_t = (1 - t) x_0 + t * noise, velocity v = noise - x_0 (rectified flow,
  Liu et al. 2022 / Esser et al. 2024 eq. 2-3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch

from .lora_map import LoraMap, PlannedPart
from .published import PublishedModel

#: The attention projections of an MMDiT-style block in diffusers' names.
MMDIT_ATTENTION_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
)


class FamilyError(RuntimeError):
    """A model cannot be used as this family (wrong variant, missing input); says what to do."""


@dataclass(frozen=True)
class FamilyOptions:
    """Run-time settings a family's velocity or prompt encoding reads.

    max_sequence_length: text tokens per prompt for the long text encoder (T5 / LLM), or None for
        the family's default.
    guidance: value of a guidance-distilled model's guidance embedding (Flux.1 dev: 3.5), or None
        for the family's default; models without a guidance embedding ignore it.
    """

    max_sequence_length: int | None = None
    guidance: float | None = None


#: Why training a distilled checkpoint is discouraged (issue 26 item 4), with the public reports.
DISTILLED_WHY = ("public reports agree that online RL on a few-step or guidance-distilled model blurs its images "
                 "(Flow-Factory issues #192 and #225, TDM-R1 issue #3)")


def _normalise_name(name: str) -> str:
    return str(name).lower().replace("_", "-").replace(" ", "-")


@dataclass(frozen=True)
class DistilledCheckpoint:
    """A few-step or guidance-distilled checkpoint of a family (`Family.distilled`): how to recognise
    it, what to train instead, and how it samples (what FDFO adapts to when the user trains it anyway).

    title: the checkpoint's name ("Z-Image-Turbo").
    kind: what was distilled ("step-distilled to 8 steps, no CFG").
    base_model: the model to train instead (a name and hub id, one phrase).
    settings: FDFOConfig values it samples with ({"num_steps": 9, "cfg_scale": 1.0}).
    names: lowercase substrings of a model id or folder name ("-" for "_" and spaces) that mark it.
    pipeline_config / transformer_config: values of model_index.json / the transformer's config that
        mark it (all must match), e.g. {"is_distilled": True} for Flux.2 Klein.
    comfy_configs: ComfyUI `supported_models` classes (`MODEL.model.model_config`) that mark it.
    Any one kind of hint suffices.
    """

    title: str
    kind: str
    base_model: str
    settings: Mapping[str, Any]
    names: tuple[str, ...] = ()
    pipeline_config: Mapping[str, Any] = field(default_factory=dict)
    transformer_config: Mapping[str, Any] = field(default_factory=dict)
    comfy_configs: tuple[str, ...] = ()

    def matches(self, name: str = "", pipeline_config: Mapping[str, Any] | None = None,
                transformer_config: Mapping[str, Any] | None = None, comfy_config: str | None = None) -> bool:
        """Whether a model with this id / folder / file name, model_index.json, transformer config or
        ComfyUI config class is this checkpoint."""
        key = _normalise_name(name)
        if key and any(marker in key for marker in self.names):
            return True
        for wanted, have in ((self.pipeline_config, pipeline_config), (self.transformer_config, transformer_config)):
            if wanted and have is not None and all(k in have and have[k] == v for k, v in wanted.items()):
                return True
        return comfy_config is not None and comfy_config in self.comfy_configs

    def adapted(self, values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
        """The settings to change for a run with these config `values` where the front end's
        `defaults` are what the user left alone: each of `settings` whose value is still the default
        (a value the user chose is kept; the warning names it)."""
        return {k: v for k, v in self.settings.items() if k in values and values[k] == defaults.get(k) and values[k] != v}

    def warning(self, family_title: str, given: Mapping[str, Any] | None = None) -> str:
        """The message both front ends show: what it is, why not to train it, what to train instead,
        and the settings FDFO samples it with if the user goes on (`given`: the run's values of those
        settings, to say which differ)."""
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        text = (f"this model is {self.title}, a {self.kind} checkpoint of {family_title}: {DISTILLED_WHY}. Train the "
                f"base model instead: {self.base_model}. If you go on, sample it as it was distilled to ({settings})")
        if given is not None:
            differ = [f"{k} {given[k]}" for k, v in self.settings.items() if k in given and given[k] != v]
            text += f"; this run has {', '.join(differ)}" if differ else "; this run does"
        return text + "."


class Family:
    """Base class of model families; subclasses set the class attributes and override hooks.

    Required declarations: `name`, `title`, `lora_map`, and at least one of
    `diffusers_pipelines` / `comfy_models`.
    """

    # --- identity (never rename `name`: it is written into LoRA files and checkpoints) ---------
    name: ClassVar[str]
    #: Human name with variants, for messages and docs ("Flux.1 (dev, schnell, Kontext)").
    title: ClassVar[str]

    # --- recognition --------------------------------------------------------------------------
    #: diffusers pipeline classes trained as this family (text-to-image use).
    diffusers_pipelines: ClassVar[tuple[str, ...]] = ()
    #: diffusers transformer classes of this family (checked against `pipe.transformer`).
    diffusers_transformers: ClassVar[tuple[str, ...]] = ()
    #: ComfyUI classes of this family: `comfy.model_base` classes (of `MODEL.model`) or
    #: `comfy.supported_models` classes (of `MODEL.model.model_config`, e.g. "ZImage", whose model
    #: class is Lumina 2's), matched by exact name, the config's first. A subclass of one of them
    #: that no family names is refused by name (`fdfo_core.families.comfy_refusal`).
    comfy_models: ClassVar[tuple[str, ...]] = ()
    #: diffusers pipelines of this family that need inputs FDFO does not give (an image, a mask):
    #: class name -> what it needs. They are refused with this reason.
    diffusers_needs_input: ClassVar[Mapping[str, str]] = {}
    #: ComfyUI models of this family that the ComfyUI backend refuses: model name -> why (a whole
    #: sentence that says what to do instead). The name is matched against the class of
    #: `MODEL.model.model_config` (`comfy.supported_models`, e.g. "ZImage", whose model_base class
    #: is Lumina 2's) and of `MODEL.model` (`comfy.model_base`). For families whose ComfyUI side is
    #: not tested (models newer than the ComfyUI version FDFO is tested against): without it they
    #: would train through the untested generic path (`generic.UnregisteredComfyFamily`).
    comfy_refused: ClassVar[Mapping[str, str]] = {}
    #: The first ComfyUI version FDFO trains this family in ("0.8.0"), or None (every version FDFO
    #: supports). In an older ComfyUI the backend refuses the family's models by name ("this ComfyUI
    #: (v0.3.64) predates ..."): its model code there is not what FDFO was tested against.
    comfy_since: ClassVar[str | None] = None
    #: Scheduler classes, besides diffusers' FlowMatch* ones, that this family's pipelines ship
    #: as flow samplers (Wan: UniPCMultistepScheduler in flow mode). FDFO only reads their time
    #: grid (`diffusers_sigmas`); `diffusers_check` may refuse a configuration that is not a flow one.
    diffusers_flow_schedulers: ClassVar[tuple[str, ...]] = ()

    # --- latents ------------------------------------------------------------------------------
    #: ComfyUI runs the model on video latents [B, C, T, h, w]; FDFO trains it with T = 1.
    comfy_video_latents: ClassVar[bool] = False

    #: p: the transformer takes p x p latents per token (image sizes are multiples of VAE
    #: downscale x p); None: its config's / ComfyUI model's `patch_size`.
    latent_patch: ClassVar[int | None] = None

    # --- LoRA ---------------------------------------------------------------------------------
    lora_map: ClassVar[LoraMap]
    #: Default LoRA targets (diffusers module-name suffixes, peft's rule).
    lora_targets: ClassVar[tuple[str, ...]] = MMDIT_ATTENTION_TARGETS
    #: A frozen diffusers module whose weights identify the base model in fingerprints.
    fingerprint_module: ClassVar[str] = "proj_out"

    # --- settings -----------------------------------------------------------------------------
    #: Default text tokens per prompt for the long text encoder.
    max_sequence_length: ClassVar[int] = 512
    #: Default guidance-embedding value for guidance-distilled variants (None: no such input).
    guidance: ClassVar[float | None] = None
    #: Hyperparameter preset (`fdfo train --preset <preset_name>`): changes to FDFOConfig's defaults.
    preset: ClassVar[Mapping[str, Any]] = {}
    #: Name of the preset (default: the family name).
    preset_name: ClassVar[str | None] = None
    #: One line of VRAM guidance for docs and messages.
    vram: ClassVar[str] = ""
    #: The oldest diffusers release that runs this family correctly, and why (the backend refuses
    #: older ones with this reason; the package's own floor, DIFFUSERS_FLOOR, is the default).
    min_diffusers: ClassVar[tuple[str, str] | None] = None
    #: The family's published models (transformer / VAE configs and sizes, `published.py`): what
    #: the memory estimator and the GPU profile build on the meta device.
    published_models: ClassVar[tuple[PublishedModel, ...]] = ()

    #: Distilled checkpoints of the family (few-step or guidance-distilled): recognised by name or
    #: config, warned about in both front ends, with the base model to train instead and the settings
    #: they sample with (`DistilledCheckpoint`).
    distilled: ClassVar[tuple[DistilledCheckpoint, ...]] = ()

    # --- derived ------------------------------------------------------------------------------

    def distilled_checkpoint(self, name: str = "", pipeline_config: Mapping[str, Any] | None = None,
                             transformer_config: Mapping[str, Any] | None = None,
                             comfy_config: str | None = None) -> DistilledCheckpoint | None:
        """The family's distilled checkpoint this model is (by its id / folder / file name,
        model_index.json, transformer config or ComfyUI config class), or None."""
        return next((d for d in self.distilled
                     if d.matches(name, pipeline_config, transformer_config, comfy_config)), None)

    def options(self, options: FamilyOptions | None = None) -> FamilyOptions:
        """`options` with the family's defaults filled in."""
        options = options or FamilyOptions()
        return FamilyOptions(
            # 0 is a valid length (the bundled toy appends no "T5" tokens): only None means unset.
            max_sequence_length=(self.max_sequence_length if options.max_sequence_length is None
                                 else int(options.max_sequence_length)),
            guidance=self.guidance if options.guidance is None else float(options.guidance),
        )

    def describe(self) -> str:
        """"Flux.1 (dev, schnell, Kontext) [flux]" for lists of supported families."""
        return f"{self.title} [{self.name}]"

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    def resolve_lora_targets(self, targets: Sequence[str]) -> tuple[str, ...]:
        """The LoRA targets to train: the family's own `lora_targets` when `targets` is the
        generic default (FDFOConfig's MMDiT attention names, i.e. the user chose none), else
        `targets` as given."""
        targets = tuple(targets)
        return tuple(self.lora_targets) if targets == MMDIT_ATTENTION_TARGETS else targets

    # --- diffusers hooks ----------------------------------------------------------------------

    def diffusers_prepare(self, pipe) -> None:
        """Adjust a loaded pipeline after the backend froze it and put it in eval mode (e.g. a
        module whose eval path is not differentiable). Default: nothing."""

    def diffusers_check(self, pipe) -> None:
        """Raise FamilyError if this pipeline cannot be trained as this family (default: checks
        the transformer class when `diffusers_transformers` is set, and that a scheduler of
        `diffusers_flow_schedulers` runs in flow mode: flow sigmas and flow prediction)."""
        if self.diffusers_transformers:
            name = type(pipe.transformer).__name__
            if name not in self.diffusers_transformers:
                raise FamilyError(
                    f"{type(pipe).__name__} has a {name} transformer; {self.title} expects "
                    f"{' or '.join(self.diffusers_transformers)}"
                )
        scheduler_name = type(pipe.scheduler).__name__
        scheduler = pipe.scheduler.config
        if scheduler_name in self.diffusers_flow_schedulers and not (
                scheduler.get("use_flow_sigmas") and scheduler.get("prediction_type") == "flow_prediction"):
            raise FamilyError(f"the pipeline's {scheduler_name} is not in flow mode (use_flow_sigmas and "
                              f"prediction_type 'flow_prediction', as {self.title} ships it); restore the model's "
                              "own scheduler")

    def diffusers_text_encoders(self, pipe) -> list[torch.nn.Module]:
        """Modules `diffusers_encode_prompts` uses (moved to the device around encoding when the
        backend offloads). Default: every `text_encoder*` component."""
        return [m for n, m in sorted(pipe.components.items()) if n.startswith("text_encoder") and m is not None]

    def diffusers_vae_scale(self, pipe) -> int:
        """Pixels per latent cell along each image side (the VAE's spatial downscaling). Default:
        the pipeline's `vae_scale_factor`; video pipelines name it `vae_scale_factor_spatial`."""
        return int(pipe.vae_scale_factor)

    def diffusers_flow_scheduler(self, class_name: str) -> bool:
        """Whether a pipeline of this family with scheduler class `class_name` is a flow-matching
        sampler: diffusers' FlowMatch* schedulers and the family's `diffusers_flow_schedulers`."""
        return "FlowMatch" in class_name or class_name in self.diffusers_flow_schedulers

    def diffusers_latent_shape(self, pipe, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the unpacked latent of a height x width image. Default: the VAE's
        downscaling (`diffusers_vae_scale`) of a transformer whose in_channels are the latent channels."""
        f = self.diffusers_vae_scale(pipe)
        return (pipe.transformer.config.in_channels, height // f, width // f)

    def diffusers_image_seq_len(self, pipe, height: int, width: int) -> int:
        """Image tokens the transformer sees (for resolution-dependent shift): 2x2 patches."""
        _, h, w = self.diffusers_latent_shape(pipe, height, width)
        return (h // 2) * (w // 2)

    def diffusers_sigmas(self, pipe, num_steps: int, height: int, width: int) -> torch.Tensor:
        """float32 [num_steps + 1] flow times from the pipeline's scheduler, as its pipeline
        computes them. Default (Flux-style pipelines): sigmas linspace(1, 1/n, n), shifted by
        the scheduler, with the resolution-dependent mu when the scheduler has dynamic shifting."""
        from .common import scheduler_sigmas

        return scheduler_sigmas(pipe.scheduler, num_steps, self.diffusers_image_seq_len(pipe, height, width),
                                explicit_linspace=True)

    def comfy_prompt(self, prompt: str) -> str:
        """The text the ComfyUI backend gives the CLIP's tokenizer for `prompt`, so that ComfyUI's
        text encoder sees what the family's own pipeline encodes (the same prompt means the same
        conditioning in both backends). The prompt itself for most families: ComfyUI's tokenizers
        add the chat templates (Qwen-Image, HunyuanImage, Z-Image, Flux.2) themselves, as the
        diffusers pipelines do. Lumina 2 adds its system prompt (below). The text of every family
        in both backends: docs/families.md, "The text each backend encodes" (tests/test_prompt_text.py)."""
        return prompt

    def diffusers_encode_prompts(self, pipe, prompts: list[str], device: torch.device,
                                 options: FamilyOptions) -> dict[str, torch.Tensor]:
        """Conditioning for each prompt: a dict of batch-first tensors whose non-batch shapes do
        not depend on the prompt (so rows of separate calls concatenate), on `device`."""
        raise NotImplementedError(f"{self.name}: diffusers prompt encoding is not implemented")

    def diffusers_velocity(self, pipe, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor],
                           options: FamilyOptions) -> torch.Tensor:
        """v(x, t): x [B, C, h, w] latents in the model's dtype, t [B] float32 flow times in
        (0, 1]; returns [B, C, h, w] (any float dtype)."""
        raise NotImplementedError(f"{self.name}: the diffusers velocity call is not implemented")

    def diffusers_decode(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] from [B, C, h, w] latents (gradients flow through).
        Default: SD3 / Flux VAEs, raw = latents / scaling_factor + shift_factor."""
        vae = pipe.vae
        sf = vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode((latents / sf + shift).to(vae.dtype), return_dict=False)[0]

    def conditioning_shapes(self, transformer_config: Mapping[str, Any],
                            max_sequence_length: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """The per-prompt shapes of what `diffusers_encode_prompts` returns, for a transformer of
        this config: {key: (shape without the batch dimension, kind)}, kind "float" (an embedding
        in the model's dtype) or "mask" (int64 ones). Used to stand in for the text encoders (the
        GPU profile) and to estimate memory on the meta device. Default (Flux-style): T5 tokens
        [max_sequence_length, joint_attention_dim] and a pooled CLIP vector [pooled_projection_dim]."""
        return {"prompt_embeds": ((max_sequence_length, int(transformer_config["joint_attention_dim"])), "float"),
                "pooled": ((int(transformer_config["pooled_projection_dim"]),), "float")}

    # --- ComfyUI hooks (duck-typed ComfyUI objects; no comfy import) ---------------------------

    def comfy_check(self, base) -> None:
        """Raise FamilyError if this ComfyUI model (`MODEL.model`) cannot be trained text-to-image
        as this family (e.g. an inpainting variant). Default: nothing to check."""

    def comfy_variant(self, base) -> "Family":
        """The family that trains this ComfyUI model (`MODEL.model`) when several families share one
        ComfyUI class (Flux.2 dev and Klein both run as ComfyUI's `Flux2`). Default: this family."""
        return self

    def comfy_conditioning(self, extras: dict[str, Any], options: FamilyOptions) -> dict[str, Any]:
        """Conditioning extras (`[[cond, extras]]`) with defaults the family needs; default: as is."""
        return extras

    def comfy_lora_plan(self, linears: Mapping[str, tuple[int, int]], targets: Sequence[str]) -> list[PlannedPart]:
        """The row slices of a ComfyUI model's linears that get a LoRA for `targets` (diffusers
        names). linears: {name inside diffusion_model: (in_features, out_features)}. Default: the
        family's `lora_map`, so both backends train the same projections and write the same file."""
        return self.lora_map.comfy_plan(linears, targets)
