"""Deterministic generation with any FlowBackend: the model's velocity under cancel, autocast and
CFG (`model_velocity`, what every sampler and trainer calls), an epoch's paired draw
(`epoch_pairs`, `sample_pair_batches`: what the FDFO trainer trains on and the Paired Sampler node
shows), and plain generation for previews, evaluation and `fdfo sample` (`generate_latents`).

Plain generation: sample i starts from the noise of `torch.Generator().manual_seed(seeds[i])` and
runs the plain Euler sampler on the model's own schedule, so a (prompt, seed) pair gives the same
image before and after training, in the CLI and in the nodes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .interface import FlowBackend
from ..config import FDFOConfig
from ..flow.conditioning import Cond, cond_select, cond_to
from ..flow.image_sizes import check_backend_size
from ..flow.paired_sampler import ChurnSettings, PairedRollout, VelocityFn, guided, sample_euler, sample_pairs
from ..flow.seeds import epoch_prompt_indices, generator


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. The adapter itself always stays fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ValueError(f"unknown precision {precision!r}")


def model_velocity(
    backend: FlowBackend,
    cfg_scale: float,
    uncond: Cond | None,
    amp: torch.dtype | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> VelocityFn:
    """velocity(x [B, C, h, w], t [B], cond) -> float32 [B, C, h, w]: `backend.velocity` after
    `check_cancel()` (which raises to stop), under autocast to `amp` on the backend's device (None:
    no autocast, plain fp32), with classifier-free guidance at `cfg_scale` against `uncond` (the
    negative prompt's conditioning; None when `cfg_scale` is 1, else ValueError)."""
    device_type = torch.device(backend.device).type

    def velocity(x, t, cond):
        if check_cancel is not None:
            check_cancel()
        ctx = torch.autocast(device_type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            return backend.velocity(x, t, cond).float()

    return guided(velocity, cfg_scale, uncond)


def negative_cond(backend: FlowBackend, config: FDFOConfig) -> Cond | None:
    """The conditioning of `config.negative_prompt` for CFG, None when `config.cfg_scale` is 1 (no CFG)."""
    return backend.encode_prompts([config.negative_prompt]) if config.cfg_scale != 1.0 else None


@dataclass
class EpochPairs:
    """What an epoch's pairs `lo:hi` are drawn from (`epoch_pairs`): the same for the FDFO trainer,
    each of its ranks, and the Paired Sampler node."""

    pair_ids: torch.Tensor  # [n] global pair indices lo..hi-1
    prompt_ids: torch.Tensor  # [n] index into the prompt list of each pair
    prompt_rows: torch.Tensor  # [n] row of each pair in `cond`
    cond: Cond  # one row per distinct prompt of these pairs
    uncond: Cond | None  # the negative prompt's conditioning (CFG), None when cfg_scale is 1
    latent_shape: tuple[int, int, int]
    sigmas: torch.Tensor  # float32 [num_steps + 1] on the CPU
    churn: ChurnSettings


def epoch_pairs(backend: FlowBackend, config: FDFOConfig, prompts: Sequence[str], epoch: int, lo: int = 0,
                hi: int | None = None) -> EpochPairs:
    """The prompts, conditioning, time grid and churn of pairs (groups of `config.branches`
    branches) `lo:hi` (default: all `config.groups_per_epoch`, = pairs_per_epoch for pairs) of
    `epoch`: prompt order from (seed, epoch) (`flow.seeds`)."""
    hi = config.groups_per_epoch if hi is None else hi
    prompt_idx = epoch_prompt_indices(config.seed, epoch, len(prompts), config.groups_per_epoch)[lo:hi]
    unique, rows = torch.unique(prompt_idx, return_inverse=True)
    cond = backend.encode_prompts([prompts[i] for i in unique.tolist()])
    uncond = negative_cond(backend, config)
    return EpochPairs(
        pair_ids=torch.arange(lo, hi), prompt_ids=prompt_idx, prompt_rows=rows, cond=cond, uncond=uncond,
        latent_shape=backend.latent_shape(config.height, config.width),
        sigmas=backend.sigmas(config.num_steps, config.height, config.width).float().cpu(),
        churn=ChurnSettings(config.churn, config.churn_strength, config.interval_mean, config.interval_std,
                            config.interval_width),
    )


def sample_pair_batches(
    velocity: VelocityFn,
    pairs: EpochPairs,
    config: FDFOConfig,
    epoch: int,
    device: torch.device | str,
    record: bool = True,
    storage_device: torch.device | str | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, int, PairedRollout]]:
    """Sample `pairs` in batches of `config.sample_batch_size` pairs: yields (start, stop, rollout)
    with rows start:stop of `pairs` (rollout rows: branch a of each, then b of each, ...;
    `paired_sampler.sample_pairs`). Groups of K = `config.branches` branches keep a batch's image
    count (2 x sample_batch_size, the memory estimates' batch; at least one group a batch). Pair
    (group) p draws its noise and churn from `generator(seed, "pair", epoch, p)` alone, so its images
    depend neither on the batch size nor on the rank. on_step(done, total): solver steps of all batches."""
    n = pairs.pair_ids.numel()
    lo = int(pairs.pair_ids[0]) if n else 0
    k = config.branches
    per_batch = max(1, 2 * config.sample_batch_size // k)
    steps_done, steps_total = 0, math.ceil(n / per_batch) * config.num_steps
    for start in range(0, n, per_batch):
        stop = min(n, start + per_batch)
        gens = [generator(config.seed, "pair", epoch, lo + j) for j in range(start, stop)]

        def step(i, _total, _base=steps_done):
            if on_step is not None:
                on_step(_base + i, steps_total)

        roll = sample_pairs(
            velocity, cond_to(cond_select(pairs.cond, pairs.prompt_rows[start:stop]), device), gens,
            pairs.latent_shape, pairs.sigmas, pairs.churn, device=device, record=record,
            storage_device=storage_device, on_step=step, branches=k,
        )
        yield start, stop, roll
        del roll  # the caller holds the last reference: it may free the batch before the next
        steps_done += config.num_steps


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
    v = model_velocity(backend, cfg_scale, uncond, amp, check_cancel)
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
    decode_batch_size: int | None = None,
) -> torch.Tensor:
    """float32 images [N, 3, H, W] in [0, 1]: sampled `batch_size` at a time, decoded
    `decode_batch_size` at a time (default: `batch_size`)."""
    latents = generate_latents(
        backend, prompts, seeds, num_steps, height, width, cfg_scale, negative_prompt,
        batch_size, amp, use_adapter, check_cancel,
    )
    device = torch.device(backend.device)
    images = []
    step = decode_batch_size or batch_size
    for start in range(0, latents.shape[0], step):
        images.append(backend.decode(latents[start : start + step].to(device)).float().cpu())
    return torch.cat(images)
