"""Sana (1.0, 1.5): a linear-attention DiT with a Gemma-2 text encoder and the 32x DC-AE.

diffusers: `SanaPipeline` with `SanaTransformer2DModel` and `AutoencoderDC`. Latents
[B, 32, H/32, W/32] (the DC-AE compresses 32x; the transformer's patch is 1x1, no packing).
The transformer takes timestep = floor(1000 t) x `timestep_scale` (its config; 1 for Sana: the
scheduler's timesteps are int64, truncated, while it steps along the exact sigmas) and predicts
the flow v = noise - x_0 directly (the scheduler's "flow_prediction"). Its text input: Gemma-2's
last hidden state of the prompt, with the pipeline's `complex_human_instruction` (CHI) prepended
so that the causal text encoder reads the prompt in its light (Sana paper, sec. 3.1), then the
first token and the last `max_sequence_length` - 1 tokens kept, with their attention mask (the
transformer's cross-attention honours it). The pipeline encodes its negative prompt without the
instruction; FDFO does the same for the empty prompt (its unconditional row) only.
Sampling: the pipeline ships `DPMSolverMultistepScheduler` in flow mode (`use_flow_sigmas`,
`prediction_type="flow_prediction"`, `flow_shift`, 2nd order); FDFO takes its time grid
(`set_timesteps(n)`, as the pipeline calls it) and integrates it with its own solver, which
equals the pipeline's at solver order 1 (DPM-Solver++ 1st order on a rectified flow is Euler).
The pipeline's `use_resolution_binning` (on by default) silently replaces the requested size
by the nearest of its aspect-ratio bins and resizes the decoded image back: FDFO never does,
it samples the size it is given (multiples of 32 px). Decoding: raw = latents / scaling_factor.
ComfyUI (up to v0.8.0) has no Sana model: LoRA files use the original Sana checkpoint names
(`blocks.{i}.attn.qkv` / `proj`, `blocks.{i}.cross_attn.q_linear` / `kv_linear` / `proj`), what
diffusers' single-file converter reads (`convert_sana_transformer_to_diffusers`).

Refused: Sana-Sprint (`SanaSprintPipeline`: a few-step consistency-distilled model on TrigFlow
time, not a rectified flow; train Sana itself), image-conditioned Sana pipelines.
"""

from __future__ import annotations

import inspect

import torch

from .base import Family, FamilyError, FamilyOptions
from .common import scheduler_set_timesteps_sigmas
from .lora_map import LoraMap, fused


def _sana_map() -> LoraMap:
    a, c = "transformer_blocks.{i}.attn1.", "transformer_blocks.{i}.attn2."
    return LoraMap((
        fused("blocks.{i}.attn.qkv", a, ("to_q", "to_k", "to_v")),
        fused("blocks.{i}.attn.proj", a, ("to_out.0",)),
        fused("blocks.{i}.cross_attn.q_linear", c, ("to_q",)),
        fused("blocks.{i}.cross_attn.kv_linear", c, ("to_k", "to_v")),
        fused("blocks.{i}.cross_attn.proj", c, ("to_out.0",)),
    ))


def complex_human_instruction(pipe) -> list[str] | None:
    """The instruction lines `SanaPipeline.__call__` prepends to every prompt by default (read from
    its signature, so a pipeline version with another default is followed)."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get("complex_human_instruction")
    return None if parameter is None else parameter.default


class Sana(Family):
    name = "sana"
    title = "Sana (1.0, 1.5)"
    diffusers_pipelines = ("SanaPipeline",)
    diffusers_transformers = ("SanaTransformer2DModel",)
    diffusers_flow_schedulers = ("DPMSolverMultistepScheduler",)
    diffusers_needs_input = {
        "SanaControlNetPipeline": "a control image",
        "SanaSprintImg2ImgPipeline": "an input image",
    }
    latent_patch = 1  # the DC-AE's 32x latents, one token per cell
    lora_map = _sana_map()
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")  # self- and cross-attention
    fingerprint_module = "proj_out"
    max_sequence_length = 300  # the pipeline's default (after the instruction)
    preset_name = "sana"
    # Sana 1.0 / 1.5 1600M at 1024 px, the pipeline's 20 steps; FDFO trains without CFG (the published
    # default; the pipeline samples with CFG 4.5: `--cfg-scale 4.5`).
    preset = {"height": 1024, "width": 1024, "num_steps": 20}
    vram = ("1.6 B transformer (3.2 GB in bf16; Sana 1.5 4.8B: 9.6 GB) plus Gemma-2 2B (5 GB) while prompts are "
            "encoded: 16-24 GB at 1024 px with gradient checkpointing (estimates from the parameter count, "
            "not measured)")

    def diffusers_check(self, pipe) -> None:
        super().diffusers_check(pipe)
        if pipe.transformer.config.get("guidance_embeds"):
            raise FamilyError("this Sana transformer embeds a guidance value (Sana-Sprint, consistency-distilled on "
                              "TrigFlow time); FDFO trains the rectified-flow Sana models (SanaPipeline)")

    def diffusers_sigmas(self, pipe, num_steps, height, width):
        # SanaPipeline calls set_timesteps(n) (no sigmas, no mu): the scheduler's own shifted flow grid.
        return scheduler_set_timesteps_sigmas(pipe.scheduler, num_steps)

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        return {"prompt_embeds": ((max_sequence_length, int(transformer_config["caption_channels"])), "float"),
                "prompt_mask": ((max_sequence_length,), "mask")}

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        length = options.max_sequence_length
        instruction = complex_human_instruction(pipe)
        emb = mask = None
        # The instruction is the prompt's (as the pipeline does); the empty prompt, FDFO's unconditional
        # row, is encoded as the pipeline encodes its negative prompt: without it.
        for with_instruction in (True, False):
            rows = [i for i, p in enumerate(prompts) if bool(p) == with_instruction]
            if not rows:
                continue
            e, m, _, _ = pipe.encode_prompt([prompts[i] for i in rows], do_classifier_free_guidance=False,
                                            device=device, max_sequence_length=length,
                                            complex_human_instruction=instruction if with_instruction else None)
            if emb is None:
                emb = e.new_zeros(len(prompts), *e.shape[1:])
                mask = torch.zeros(len(prompts), e.shape[1], dtype=torch.long, device=e.device)
            emb[rows], mask[rows] = e, m.long()
        return {"prompt_embeds": emb, "prompt_mask": mask}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        config = pipe.transformer.config
        # The scheduler hands the model int64 timesteps, floor(1000 sigma), while it steps along the exact
        # sigmas: the same floor here (in float64, with a margin for t's float32 rounding).
        step = torch.floor(t.double() * 1000 + 1e-4)
        timestep = (step * config.get("timestep_scale", 1.0)).to(device=x.device, dtype=torch.float32)
        out = pipe.transformer(x, encoder_hidden_states=cond["prompt_embeds"], encoder_attention_mask=cond["prompt_mask"],
                               timestep=timestep, return_dict=False)[0]
        if config.out_channels // 2 == config.in_channels:  # learned sigma: the first half is the flow
            out = out.chunk(2, dim=1)[0]
        return out

    def diffusers_decode(self, pipe, latents):
        vae = pipe.vae
        return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]


FAMILY = Sana()
