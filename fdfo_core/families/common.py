"""Small pieces several families share: the flow-matching time grid and 2x2 latent packing."""

from __future__ import annotations

import torch

from ..flow.schedules import flux_mu


def image_position_ids(rows: int, cols: int, device, dtype: torch.dtype) -> torch.Tensor:
    """RoPE position ids [rows * cols, 3] of an image's tokens, (0, row, col) in row-major order, as
    FluxPipeline's `_prepare_latent_image_ids` makes them (Flux, Chroma, Ovis-Image, Bria FIBO)."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def scheduler_mu(conf, image_seq_len: int, max_seq_len_default: int = 4096, max_shift_default: float = 1.15) -> float:
    """Flux's resolution-dependent shift mu (`flow.schedules.flux_mu`) with the line a diffusers
    scheduler config gives (`base_image_seq_len`, `max_image_seq_len`, `base_shift`, `max_shift`;
    the defaults where it has none: the pipeline's)."""
    return flux_mu(image_seq_len, conf.get("base_image_seq_len", 256), conf.get("max_image_seq_len", max_seq_len_default),
                   conf.get("base_shift", 0.5), conf.get("max_shift", max_shift_default))


def scheduler_sigmas(scheduler, num_steps: int, image_seq_len: int, explicit_linspace: bool,
                     max_shift_default: float = 1.15, mu: float | None = None) -> torch.Tensor:
    """float32 [num_steps + 1] flow times of a diffusers FlowMatchEulerDiscreteScheduler as a
    pipeline sets them: a fresh copy of `scheduler` (its state is never touched), sigmas
    linspace(1, 1/n, n) when `explicit_linspace` (Flux / Qwen-Image pipelines; not when the
    scheduler makes its own flow sigmas, `use_flow_sigmas`) or the scheduler's own grid (SD3
    pipelines), shifted, with the given `mu` or one from `image_seq_len` (`scheduler_mu`) when
    the scheduler has dynamic shifting. Ends with 0."""
    import numpy as np

    fresh = type(scheduler).from_config(scheduler.config)
    conf = fresh.config
    kwargs = {}
    if conf.get("use_dynamic_shifting", False):
        kwargs["mu"] = mu if mu is not None else scheduler_mu(conf, image_seq_len, max_shift_default=max_shift_default)
    if explicit_linspace and not conf.get("use_flow_sigmas", False):
        fresh.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), **kwargs)
    else:
        fresh.set_timesteps(num_steps, **kwargs)
    return fresh.sigmas.float().cpu()


def scheduler_set_timesteps_sigmas(scheduler, num_steps: int) -> torch.Tensor:
    """float32 [num_steps + 1] flow times of any diffusers flow scheduler after its own
    `set_timesteps(num_steps)` (pipelines that pass no sigmas and no mu, e.g. WanPipeline with
    FlowMatchEulerDiscreteScheduler or UniPCMultistepScheduler in flow mode), on a fresh copy so the
    pipeline's scheduler state is never touched. Ends with 0."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(num_steps)
    sigmas = fresh.sigmas.float().cpu()
    if sigmas.shape[0] != num_steps + 1 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"{type(scheduler).__name__} gives {sigmas.shape[0]} sigmas ending at {float(sigmas[-1]):.4g}; "
                         f"expected {num_steps + 1} ending at 0")
    return sigmas


def pack_2x2(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] latents -> [B, (h/2)(w/2), 4C] tokens of 2x2 patches, row-major, channels
    outermost within a patch (diffusers' Flux / Qwen-Image `_pack_latents`)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"2x2 packing needs even latent sizes, got {h}x{w}")
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_2x2(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack_2x2`: [B, (h/2)(w/2), 4C] -> [B, C, h, w]."""
    b, n, d = tokens.shape
    c = d // 4
    x = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def decode_one_frame(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decode image latents with a Wan-type video VAE (`AutoencoderKLWan`, `AutoencoderKLQwenImage`,
    ...) as a one-frame video.

    latents: (B, C, H, W) in the transformer's normalised latent space; the VAE's per-channel
    `latents_mean` / `latents_std` (config, length C = `z_dim`) undo the normalisation:
    raw = latents * std + mean. Returns (B, channels, H * f, W * f), the VAE's output range
    (usually [-1, 1]; RGBA VAEs return 4 channels).
    """
    z = latents.unsqueeze(2).to(vae.dtype)  # (B, C, 1, H, W): one frame
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(shape)
    return vae.decode(z * std + mean, return_dict=False)[0][:, :, 0]


def pad_text_rows(rows: list[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-prompt text features of different lengths, zero-padded at the end.

    rows: one [T_i, D] tensor per prompt, T_i <= length. Returns (embeds [B, length, D] in the rows'
    dtype, mask [B, length] long: 1 on a prompt's own tokens, 0 on padding).
    """
    out = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
    for i, e in enumerate(rows):
        out[i, : len(e)] = e
        mask[i, : len(e)] = 1
    return out, mask
