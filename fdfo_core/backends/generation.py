"""Deterministic generation with any FlowBackend: previews, evaluation, `fdfo sample`.

Sample i starts from the noise of `torch.Generator().manual_seed(seeds[i])` and runs the plain
Euler sampler on the model's own schedule, so a (prompt, seed) pair gives the same image before
and after training, in the CLI and in the nodes.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from .interface import FlowBackend
from ..flow.image_sizes import check_backend_size
from ..flow.paired_sampler import guided, sample_euler


@torch.no_grad()
def generate_latents(
    backend: FlowBackend,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_steps: int,
    height: int,
    width: int,
    cfg_scale: float = 1.0,
    negative_prompt: str = "",
    batch_size: int = 16,
    amp: torch.dtype | None = None,
    use_adapter: bool = True,
    check_cancel: Callable[[], None] | None = None,
) -> torch.Tensor:
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds; give one seed per prompt")
    check_backend_size(backend, height, width)  # ImageSizeError with the nearest sizes that work
    device = torch.device(backend.device)
    shape = backend.latent_shape(height, width)
    sigmas = backend.sigmas(num_steps, height, width).float().cpu()
    uncond = backend.encode_prompts([negative_prompt]) if cfg_scale != 1.0 else None

    def velocity(x, t, cond):
        if check_cancel is not None:
            check_cancel()
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            return backend.velocity(x, t, cond).float()

    v = guided(velocity, cfg_scale, uncond)
    out = []
    adapter = contextlib.nullcontext() if use_adapter else backend.adapter_disabled()
    with adapter:
        for start in range(0, len(prompts), batch_size):
            p = list(prompts[start : start + batch_size])
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
            cond = backend.encode_prompts(p)
            out.append(sample_euler(v, cond, gens, shape, sigmas, device=device).cpu())
    return torch.cat(out)


@torch.no_grad()
def generate_images(
    backend: FlowBackend,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_steps: int,
    height: int,
    width: int,
    cfg_scale: float = 1.0,
    negative_prompt: str = "",
    batch_size: int = 16,
    amp: torch.dtype | None = None,
    use_adapter: bool = True,
    check_cancel: Callable[[], None] | None = None,
) -> torch.Tensor:
    """float32 images [N, 3, H, W] in [0, 1]."""
    latents = generate_latents(
        backend, prompts, seeds, num_steps, height, width, cfg_scale, negative_prompt,
        batch_size, amp, use_adapter, check_cancel,
    )
    device = torch.device(backend.device)
    images = []
    for start in range(0, latents.shape[0], batch_size):
        images.append(backend.decode(latents[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(images)
