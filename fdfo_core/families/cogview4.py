"""CogView4 (6B): a single-stream DiT (text and image tokens through the same projections) with a
GLM-4 9B text encoder and a 16-channel 8x VAE.

diffusers: `CogView4Pipeline` with `CogView4Transformer2DModel`. Latents [B, 16, H/8, W/8]
unpacked (the transformer patchifies 2x2 itself). What it does differently:
- **time**: the pipeline hands the transformer the *unshifted* integer step
  tau = int(linspace(1000, 1, n)) while the scheduler steps along sigma = shift_mu(tau / 1000)
  (both passed to `set_timesteps`); mu = base_shift + max_shift sqrt(tokens / base_image_seq_len)
  (its own `calculate_shift`, not Flux's), with the scheduler's linear (or exponential) time
  shift. FDFO's velocity gets sigma and inverts the shift to give the model 1000 tau;
- **size micro-conditions**: original_size = target_size = (H, W) in pixels, crop (0, 0), as
  SDXL does; FDFO passes the sampled size;
- **text**: GLM-4's second-to-last hidden state; prompts are left-padded with the pad token to a
  multiple of 16 and the text encoder and the transformer attend to the padding (no mask). In a
  pipeline batch the shorter prompts are padded to the longest, so a prompt's image depends on
  its batch-mates; FDFO encodes each prompt alone (its own padding to a multiple of 16) and runs
  the transformer per group of equal text length;
- CFG: the pipeline's guidance_scale is FDFO's cfg_scale (negative prompt "" by default).
Decoding: raw = latents / scaling_factor. ComfyUI (up to v0.8.0) has no CogView4 model: LoRA files
use diffusers' module names (`transformer_blocks.{i}.attn1.to_q` ...).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import Family, FamilyError, FamilyOptions
from .common import pad_text_rows
from .lora_map import LoraMap, same_names


def cogview4_mu(image_seq_len: int, base_seq_len: int = 256, base_shift: float = 0.25, max_shift: float = 0.75) -> float:
    """CogView4's resolution-dependent shift (diffusers `pipeline_cogview4.calculate_shift`):
    mu = max_shift sqrt(tokens / base_seq_len) + base_shift."""
    return (image_seq_len / base_seq_len) ** 0.5 * max_shift + base_shift


def _shift_factor(config, mu: float) -> float:
    """m with sigma = m tau / (1 + (m - 1) tau) for the scheduler's time shift (linear: mu,
    exponential: e^mu, no dynamic shifting: its `shift`)."""
    if not config.get("use_dynamic_shifting", False):
        return float(config.get("shift", 1.0))
    return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else float(mu)


class CogView4(Family):
    name = "cogview4"
    title = "CogView4"
    diffusers_pipelines = ("CogView4Pipeline",)
    diffusers_transformers = ("CogView4Transformer2DModel",)
    diffusers_needs_input = {"CogView4ControlPipeline": "a control image"}
    latent_patch = 2
    lora_map = LoraMap(tuple(same_names("transformer_blocks.{i}.attn1.", ("to_q", "to_k", "to_v", "to_out.0"))))
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    max_sequence_length = 1024  # the pipeline's default (tokens before padding to a multiple of 16)
    preset_name = "cogview4"
    # The pipeline's 1024 px and 50 steps; FDFO trains without CFG (the published default; the pipeline
    # samples with CFG 5: `--cfg-scale 5`).
    preset = {"height": 1024, "width": 1024, "num_steps": 50}
    vram = ("6.4 B transformer (13 GB in bf16) plus GLM-4 9B (19 GB) while prompts are encoded: 32-48 GB at 1024 px "
            "with gradient checkpointing (estimates from the parameter count, not measured)")

    def diffusers_check(self, pipe) -> None:
        super().diffusers_check(pipe)
        config = pipe.scheduler.config
        for option in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"):
            if config.get(option):
                raise FamilyError(f"this CogView4Pipeline's scheduler sets {option}: the model's step time cannot be "
                                  "recovered from its sigmas; restore the model's own scheduler")

    def _mu(self, pipe, h: int, w: int) -> float:
        config = pipe.scheduler.config
        tokens = h * w // pipe.transformer.config.patch_size ** 2
        return cogview4_mu(tokens, config.get("base_image_seq_len", 256), config.get("base_shift", 0.25),
                           config.get("max_shift", 0.75))

    def diffusers_image_seq_len(self, pipe, height, width):
        _, h, w = self.diffusers_latent_shape(pipe, height, width)
        return h * w // pipe.transformer.config.patch_size ** 2

    def diffusers_sigmas(self, pipe, num_steps, height, width):
        _, h, w = self.diffusers_latent_shape(pipe, height, width)
        fresh = type(pipe.scheduler).from_config(pipe.scheduler.config)
        steps = np.linspace(fresh.config.num_train_timesteps, 1.0, num_steps).astype(np.int64).astype(np.float32)
        fresh.set_timesteps(timesteps=steps, sigmas=steps / fresh.config.num_train_timesteps, mu=self._mu(pipe, h, w))
        return fresh.sigmas.float().cpu()

    def model_time(self, pipe, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The transformer's timestep 1000 tau for flow times t (sigmas) of an h x w latent: the
        inverse of the scheduler's shift, tau = sigma / (m - (m - 1) sigma)."""
        m = _shift_factor(pipe.scheduler.config, self._mu(pipe, h, w))
        s = t.double()
        return s / (m - (m - 1) * s) * pipe.scheduler.config.num_train_timesteps

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        length = -(-max_sequence_length // 16) * 16
        return {"prompt_embeds": ((length, int(transformer_config["text_embed_dim"])), "float"),
                "prompt_mask": ((length,), "mask")}

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        length = -(-options.max_sequence_length // 16) * 16  # the longest padded prompt
        rows = []
        for prompt in prompts:  # one at a time: a prompt's padding must not depend on its batch-mates
            emb, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device=device,
                                        max_sequence_length=options.max_sequence_length)
            rows.append(emb[0])
        out, mask = pad_text_rows(rows, length)
        return {"prompt_embeds": out, "prompt_mask": mask}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, _, h, w = x.shape
        f = self.diffusers_vae_scale(pipe)
        size = torch.tensor([[h * f, w * f]], dtype=x.dtype, device=x.device).expand(b, 2)
        crop = torch.zeros(b, 2, dtype=x.dtype, device=x.device)
        timestep = self.model_time(pipe, t, h, w).to(device=x.device, dtype=torch.float32)
        lengths = cond["prompt_mask"].sum(dim=1)
        out = None
        for n in sorted(set(lengths.tolist())):  # the transformer attends to every text token: equal lengths only
            rows = (lengths == n).nonzero().flatten()
            v = pipe.transformer(hidden_states=x[rows], encoder_hidden_states=cond["prompt_embeds"][rows, : int(n)],
                                 timestep=timestep[rows], original_size=size[rows], target_size=size[rows],
                                 crop_coords=crop[rows], return_dict=False)[0]
            if out is None:
                out = v.new_zeros(b, *v.shape[1:])
            out = out.index_copy(0, rows, v)
        return out

    def diffusers_decode(self, pipe, latents):
        vae = pipe.vae
        return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]


FAMILY = CogView4()
