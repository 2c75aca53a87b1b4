"""Krea 2 (base and Turbo): a single-stream DiT fed a stack of Qwen3-VL hidden states.

diffusers (0.42): `Krea2Pipeline` with `Krea2Transformer2DModel` and the Qwen-Image VAE (16
channels, 8x). What differs from the families before it:
- text features are 4-D, [B, L, layers, D]: the hidden states of several text-encoder layers
  (`text_encoder_select_layers`) stacked per token, which a small text-fusion transformer inside
  the model collapses; prompts are padded *inside* the chat template ([prefix | prompt | pad |
  suffix]) to exactly `max_sequence_length` tokens, whose mask the transformer reads;
- latents [B, 16, H/8, W/8] are packed into 2x2 patch tokens (`pipe.patch_size`); RoPE ids are
  (0, row, col) for image tokens and all zero for text;
- timestep = t in [0, 1] (the model scales by 1000 inside);
- guidance: the pipeline guides whenever `guidance_scale` > 0, as v_c + g (v_c - v_u): neutral
  guidance is g = 0, not 1, so FDFO's cfg_scale = 1 + g (the published default g = 4.5 is
  cfg_scale 5.5);
- time grid: linspace(1, 1/n, n), exponentially shifted by mu from the image tokens (defaults
  base 256 / max 6400 tokens), or the fixed mu = 1.15 of the distilled Turbo checkpoint
  (`is_distilled` in the pipeline config).
VAE: raw = latents * latents_std + latents_mean on a one-frame video latent.
ComfyUI: no Krea 2 model in the ComfyUI versions FDFO is tested against; LoRA files use the
diffusers module names (`diffusion_model.transformer_blocks.0.attn.to_q...`).
"""

from __future__ import annotations

from .base import DistilledCheckpoint, Family, FamilyError, FamilyOptions
from .common import decode_one_frame, pack_2x2, scheduler_mu, scheduler_sigmas, unpack_2x2
from .lora_map import LoraMap, same_names

#: Attention projections of every attention in the model: the main blocks and the text fusion.
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
_BLOCKS = ("transformer_blocks.{i}.attn.", "text_fusion.layerwise_blocks.{i}.attn.",
           "text_fusion.refiner_blocks.{i}.attn.")

#: mu of the few-step distilled (Turbo) checkpoint (the pipeline hard-codes it).
TURBO_MU = 1.15


class Krea2(Family):
    name = "krea2"
    title = "Krea 2 (base, Turbo)"
    min_diffusers = ("0.39", "Krea2Pipeline first shipped in diffusers 0.39")
    diffusers_pipelines = ("Krea2Pipeline",)
    diffusers_transformers = ("Krea2Transformer2DModel",)
    latent_patch = 2
    fingerprint_module = "final_layer.linear"
    lora_map = LoraMap(tuple(m for prefix in _BLOCKS for m in same_names(prefix, _ATTENTION)))
    lora_targets = _ATTENTION
    # Prompts are padded (inside the template) to exactly this many tokens; longer prompts are cut.
    max_sequence_length = 512
    preset_name = "krea2"
    # The pipeline's defaults: 1024 px, 28 steps, g = 4.5 (cfg_scale 5.5).
    preset = {"height": 1024, "width": 1024, "num_steps": 28, "cfg_scale": 5.5}
    vram = ("12.8 B transformer (counted from diffusers' default config: 26 GB in bf16) plus Qwen3-VL-4B (8 GB) while "
            "prompts are encoded: 48 GB at 1024 px with gradient checkpointing and storage_device cpu, 80 GB "
            "comfortable (estimates, not measured)")

    #: Few-step distilled checkpoints: online RL blurs them (issue 26 item 4); train the base model.
    distilled_note = ("Krea 2 Turbo is a few-step distilled (TDM) checkpoint (`is_distilled` in its pipeline "
                      "config): RL on it blurs its images; train the base Krea 2 checkpoint instead, or keep its "
                      "few-step sampling (--num-steps 8 --cfg-scale 1) if you go on")
    distilled_preset = {"num_steps": 8, "cfg_scale": 1.0}
    #: The same, in the table both front ends read (`Family.distilled`).
    distilled = (DistilledCheckpoint(
        title="Krea 2 Turbo", kind="few-step distilled (TDM, 8 steps, no CFG)", base_model="Krea 2 (the base checkpoint)",
        settings=distilled_preset, names=("krea-2-turbo", "krea2-turbo"), pipeline_config={"is_distilled": True}),)

    def diffusers_distilled(self, pipe) -> str | None:
        """Why this pipeline's checkpoint is distilled (a sentence naming the model to train instead),
        or None for the base model: Turbo sets `is_distilled` in the pipeline config."""
        return self.distilled_note if bool(pipe.config.get("is_distilled", False)) else None

    def diffusers_check(self, pipe) -> None:
        super().diffusers_check(pipe)
        if int(getattr(pipe, "patch_size", 2)) != 2:
            raise FamilyError(f"this Krea2Pipeline packs {pipe.patch_size}x{pipe.patch_size} latent patches; FDFO's "
                              "Krea 2 family supports the published 2x2")

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        layers, dim = int(transformer_config["num_text_layers"]), int(transformer_config["text_hidden_dim"])
        return {"prompt_embeds": ((max_sequence_length, layers, dim), "float"),
                "prompt_mask": ((max_sequence_length,), "mask")}

    def diffusers_latent_shape(self, pipe, height, width):
        f = pipe.vae_scale_factor
        return (pipe.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2)))

    def diffusers_sigmas(self, pipe, num_steps, height, width):
        if bool(pipe.config.get("is_distilled", False)):
            mu = TURBO_MU
        else:  # the pipeline's own defaults, which differ from Flux's (max 6400 tokens)
            conf = pipe.scheduler.config
            mu = scheduler_mu(conf, self.diffusers_image_seq_len(pipe, height, width), max_seq_len_default=6400)
        return scheduler_sigmas(pipe.scheduler, num_steps, 0, explicit_linspace=True, mu=mu)

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        emb, mask = pipe.encode_prompt(prompt=list(prompts), device=device,
                                       max_sequence_length=options.max_sequence_length)
        return {"prompt_embeds": emb, "prompt_mask": mask.long()}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        emb = cond["prompt_embeds"]
        ids = pipe.prepare_position_ids(emb.shape[1], h // 2, w // 2, x.device)
        out = pipe.transformer(
            hidden_states=pack_2x2(x), encoder_hidden_states=emb, timestep=t.to(x.dtype), position_ids=ids,
            encoder_attention_mask=cond["prompt_mask"].bool(), return_dict=False,
        )[0]
        return unpack_2x2(out, h, w)

    def diffusers_decode(self, pipe, latents):
        return decode_one_frame(pipe.vae, latents)


FAMILY = Krea2()
