"""Qwen-Image 2.1 (and 2.1 Turbo): a block-causal single-stream DiT with RGBA output.

diffusers (0.42): `QwenImage21Pipeline` with `QwenImage21Transformer2DModel`, a Qwen3-VL text
encoder behind a `Qwen3VLProcessor`, and `AutoencoderKLQwenImage21`. What differs from Qwen-Image:
- latents: 64 channels at 16x compression *without* 2x2 packing, [B, 64, H/16, W/16], one token
  per latent cell (row-major); sizes are multiples of 32 px (the text/image slots of the joint
  sequence stand for 2x2 groups of cells);
- the VAE decodes *RGBA* (4 channels); FDFO composites the image over white for the reward
  ([B, 3, H, W]: rgb * alpha + (1 - alpha)), which is what the picture looks like on a page;
- one joint sequence [text | image] with *block-causal* attention (text strictly causal, the
  image bidirectional) and `causal_condition`: text tokens are modulated at t = 0, so the pipeline
  caches their keys and values across steps (`use_kv_cache`). FDFO runs the full (uncached) call,
  which gives the same velocity, and never reuses a cache across calls (the LoRA changes between
  them);
- text: the last decoder layer's hidden states *before* the final norm (the pipeline hooks the
  norm away) of the chat-templated prompt, left-padded in the encoder, the system message dropped
  by its token count; the image's RoPE frame position starts after the *padded* text, so a
  pipeline batch of prompts of different lengths gives each prompt another image than it gets
  alone. FDFO runs rows of the same prompt length together (no padding): a row's velocity is what
  the pipeline gives that prompt on its own. Prompts are padded to `max_sequence_length` tokens
  for batching and longer ones are cut (the pipeline does not cut);
- timestep = t in [0, 1] (the pipeline passes its 0-1000 timestep / 1000);
- time grid: linspace(1, 1/n, n) with the resolution-dependent mu of the image tokens (one per
  latent cell), unless the pipeline config carries the author's grid (`sample_sigmas`, e.g. a
  few-step Turbo grid), which then sets the number of steps: FDFO uses it when `num_steps` equals
  its length and refuses another step count (the pipeline would ignore it silently);
- CFG: `true_cfg_scale` s > 1 with a negative prompt samples v_u + s (v_c - v_u): FDFO's
  cfg_scale = s (the model is meant to be sampled without CFG).
ComfyUI: not covered (issue 26 items 1 and 3); LoRA files use the diffusers module names
(`diffusion_model.transformer_blocks.0.attn.to_q...`).
"""

from __future__ import annotations

import torch

from .base import DistilledCheckpoint, Family, FamilyError, FamilyOptions
from .common import decode_one_frame, scheduler_mu
from .lora_map import LoraMap, same_names

_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def composite_over_white(rgba: torch.Tensor) -> torch.Tensor:
    """[B, 4, H, W] RGBA in [-1, 1] -> [B, 3, H, W] RGB in [-1, 1], composited over white."""
    rgb, alpha = rgba[:, :3], (rgba[:, 3:4] + 1) / 2
    return rgb * alpha + (1 - alpha)


class QwenImage21(Family):
    name = "qwen_image21"
    title = "Qwen-Image 2.1 (base, Turbo)"
    min_diffusers = ("0.41", "QwenImage21Pipeline first shipped in diffusers 0.41")
    diffusers_pipelines = ("QwenImage21Pipeline",)
    diffusers_transformers = ("QwenImage21Transformer2DModel",)
    latent_patch = 2  # cells are tokens, but the joint sequence's slots stand for 2x2 groups: 32 px
    lora_map = LoraMap(tuple(same_names("transformer_blocks.{i}.attn.", _ATTENTION)))
    lora_targets = _ATTENTION
    max_sequence_length = 512
    preset_name = "qwen-image21"
    # The pipeline's defaults: 1024 px, 40 steps, no CFG.
    preset = {"height": 1024, "width": 1024, "num_steps": 40}
    #: Recognised by name before loading (`Family.distilled`; `diffusers_distilled` also reads the loaded
    #: grid). Its step count is its own `sample_sigmas` grid, so only CFG is adapted.
    distilled = (DistilledCheckpoint(
        title="Qwen-Image 2.1 Turbo", kind="few-step distilled", base_model="Qwen-Image 2.1 (the base checkpoint)",
        settings={"cfg_scale": 1.0}, names=("turbo",)),)
    vram = ("7.1 B transformer (counted from diffusers' default config: 14 GB in bf16) plus the Qwen3-VL text encoder "
            "while prompts are encoded: 48 GB at 1024 px with gradient checkpointing, 80 GB comfortable (estimates, "
            "not measured)")

    def diffusers_distilled(self, pipe) -> str | None:
        """A sentence when the checkpoint is the few-step distilled Turbo (its name says so, or its
        pipeline config carries a grid of 8 steps or fewer), else None."""
        name = str(getattr(pipe, "name_or_path", "") or "")
        grid = pipe.config.get("sample_sigmas", None)
        if "turbo" in name.lower() or (grid is not None and len(grid) <= 8):
            return ("this Qwen-Image 2.1 checkpoint is the few-step distilled Turbo: RL on it blurs its images; "
                    "train the base Qwen-Image-2.1 instead")
        return None

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        return {"prompt_embeds": ((max_sequence_length, int(transformer_config["context_in_dim"])), "float"),
                "prompt_mask": ((max_sequence_length,), "mask")}

    def diffusers_vae_scale(self, pipe):
        return int(pipe.vae_scale_factor)  # 16

    def diffusers_latent_shape(self, pipe, height, width):
        f = self.diffusers_vae_scale(pipe)
        return (pipe.transformer.config.in_channels, 2 * (height // (2 * f)), 2 * (width // (2 * f)))

    def diffusers_image_seq_len(self, pipe, height, width):
        _, h, w = self.diffusers_latent_shape(pipe, height, width)
        return h * w  # one token per latent cell

    def diffusers_sigmas(self, pipe, num_steps, height, width):
        import numpy as np

        grid = pipe.config.get("sample_sigmas", None)
        if grid is not None and len(grid) != num_steps:
            raise FamilyError(
                f"this Qwen-Image 2.1 checkpoint samples with its author's {len(grid)}-step grid (`sample_sigmas` in its "
                f"pipeline config), which its pipeline uses whatever the step count; set --num-steps {len(grid)}")
        sigmas = list(grid) if grid is not None else np.linspace(1.0, 1 / num_steps, num_steps)
        fresh = type(pipe.scheduler).from_config(pipe.scheduler.config)
        conf = fresh.config
        mu = scheduler_mu(conf, self.diffusers_image_seq_len(pipe, height, width))
        fresh.set_timesteps(sigmas=sigmas, mu=mu)
        return fresh.sigmas.float().cpu()

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        length = options.max_sequence_length
        emb, mask, _ = pipe.encode_prompt(prompt=list(prompts), device=device)
        b, n, d = emb.shape
        mask = torch.ones(b, n, dtype=torch.long, device=emb.device) if mask is None else mask.long()
        n = min(n, length)
        out = emb.new_zeros(b, length, d)
        out_mask = torch.zeros(b, length, dtype=torch.long, device=emb.device)
        out[:, :n], out_mask[:, :n] = emb[:, :n], mask[:, :n]
        return {"prompt_embeds": out, "prompt_mask": out_mask}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        lengths = cond["prompt_mask"].sum(dim=1)
        tokens = x.reshape(b, c, h * w).transpose(1, 2)
        out = torch.empty_like(tokens)
        for n in lengths.unique().tolist():  # rows of one prompt length: no padding shifts the image's RoPE
            rows = (lengths == n).nonzero(as_tuple=True)[0]
            k, n = len(rows), int(n)
            img_mask = torch.cat([torch.zeros(k, n, dtype=torch.bool, device=x.device),
                                  torch.ones(k, h * w // 4, dtype=torch.bool, device=x.device)], dim=1)
            pred = pipe.transformer(
                hidden_states=tokens[rows], timestep=t[rows].to(x.dtype),
                encoder_hidden_states=cond["prompt_embeds"][rows, :n].to(x.dtype), encoder_hidden_states_mask=None,
                img_shapes=[[(1, h, w)]] * k, img_mask=img_mask, return_dict=False,
            )[0]
            out[rows] = pred[:, -h * w:].to(out.dtype)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def diffusers_decode(self, pipe, latents):
        return composite_over_white(decode_one_frame(pipe.vae, latents))


FAMILY = QwenImage21()
