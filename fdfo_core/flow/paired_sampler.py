"""Paired flow sampling with churn (ALGORITHM.md, "Paired sampling").

Each pair shares one initial noise; both branches are re-noised slightly at the prior and after
every solver step ("churn"), so they end as two similar, counterfactual images whose difference
is the finite-difference direction FDFO trains along. With churn 0 the sampler is exactly the
plain Euler sampler. A group of K > 2 branches (`branches`, an extension beyond the paper;
`methods.fdfo_objective.group_deltas`) is the same with K branches sharing the initial noise.

Randomness is drawn on the CPU from one generator per pair, seeded from the pair's global index,
so a pair's noise does not depend on the batch it was sampled in, on the device, or on the number
of ranks (EDM2's per-sample generators).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .conditioning import Cond, cond_cat, cond_expand
from .schedules import ChurnSchedule, churn_strengths

#: velocity(x [B, C, h, w], t [B], cond) -> v [B, C, h, w]
VelocityFn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def overshoot_time(s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """r = s / (1 + g (1 - s)): the time the Euler step aims at before re-noising back to s."""
    return s / (1 + g * (1 - s))


def prior_churn(x: torch.Tensor, g: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x / (1 + g) + sqrt((1 + g)^2 - 1) / (1 + g) * noise; keeps unit variance at t = 1.

    g: [B] (or scalar) churn strengths, broadcast over the latent dimensions.
    """
    g = _per_sample(g, x)
    return x / (1 + g) + torch.sqrt((1 + g) ** 2 - 1) / (1 + g) * noise


def churn_step(
    x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, v: torch.Tensor, g: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """One overshoot-and-renoise step from time t to time s < t (ALGORITHM.md step 3).

    x_r = x_t + (r - t) v, then x_s = x_r / (1 + g r) + r sqrt((1 + g)^2 - 1) / (1 + g r) * noise.
    If x_t has signal 1 - t and noise t, x_s has signal 1 - s and noise s (the marginal of s);
    with g = 0 it is bit-for-bit the Euler step x_t + (s - t) v.
    t, s, g: [B] or scalars.
    """
    t, s, g = _per_sample(t, x), _per_sample(s, x), _per_sample(g, x)
    r = overshoot_time(s, g)
    x_r = x + (r - t) * v
    return x_r / (1 + g * r) + r * torch.sqrt((1 + g) ** 2 - 1) / (1 + g * r) * noise


def _per_sample(a, x: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    return a.reshape(-1, *([1] * (x.ndim - 1))) if a.ndim == 1 else a


def guided(velocity: VelocityFn, cfg_scale: float, uncond: Cond | None) -> VelocityFn:
    """Classifier-free guidance v_u + w (v_c - v_u) around `velocity`; identity when w = 1."""
    if cfg_scale == 1.0:
        return velocity
    if uncond is None:
        raise ValueError("cfg_scale != 1 needs an unconditional (negative prompt) conditioning")

    def v_cfg(x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        n = x.shape[0]
        v = velocity(torch.cat([x, x]), torch.cat([t, t]), cond_cat([cond, cond_expand(uncond, n)]))
        v_c, v_u = v.float().chunk(2)
        return v_u + cfg_scale * (v_c - v_u)

    return v_cfg


@dataclass
class PairedRollout:
    """The result of sampling B pairs (groups of K branches). Rows 0..B-1 are branch a (branch 0),
    rows B..2B-1 branch b (branch 1), ..., rows (K-1)B..KB-1 branch K-1."""

    final: torch.Tensor  # [KB, C, h, w] float32 final latents
    states: torch.Tensor | None  # [KB, S, C, h, w] x_t before each solver step
    velocities: torch.Tensor | None  # [KB, S, C, h, w] velocity used at that step (after CFG)
    sigmas: torch.Tensor  # [S + 1]


@dataclass
class ChurnSettings:
    schedule: ChurnSchedule = "raw"
    strength: float = 0.0025
    interval_mean: float = 0.0
    interval_std: float = 1.0
    interval_width: float = 0.5


def sample_pairs(
    velocity: VelocityFn,
    cond: Cond,
    generators: Sequence[torch.Generator],
    latent_shape: tuple[int, int, int],
    sigmas: torch.Tensor,
    churn: ChurnSettings,
    device: torch.device | str = "cpu",
    record: bool = True,
    storage_device: torch.device | str | None = None,
    on_step: Callable[[int, int], None] | None = None,
    branches: int = 2,
) -> PairedRollout:
    """Sample one pair (a group of `branches` >= 2 branches) per generator.

    velocity: the (already guided) velocity function; cond: conditioning with one row per pair;
    generators: one CPU generator per pair, freshly seeded (it supplies the shared initial noise,
    the interval churn centre and every churn noise of all branches: per churned step one draw of
    shape [branches, C, h, w], so with branches = 2 the draws are those of a pair, bit for bit).
    Raises ValueError for branches < 2.
    """
    if branches < 2:
        raise ValueError(f"a group needs at least 2 branches, got {branches}")
    k = branches
    device = torch.device(device)
    storage_device = torch.device(storage_device) if storage_device is not None else device
    b = len(generators)
    sigmas = sigmas.float()
    n_steps = sigmas.shape[0] - 1

    # Draw what is shared by the two branches first, so the order of draws is fixed per pair.
    x0 = torch.stack([torch.randn(latent_shape, generator=g) for g in generators])
    churns = [
        churn_strengths(
            churn.schedule, sigmas, churn.strength, generator=g,
            interval_mean=churn.interval_mean, interval_std=churn.interval_std, interval_width=churn.interval_width,
        )
        for g in generators
    ]
    g_prior = torch.tensor([c[0] for c in churns]).repeat(k)
    g_steps = torch.stack([c[1] for c in churns]).repeat(k, 1)  # [KB, S]

    def fresh_noise(active: torch.Tensor) -> torch.Tensor:
        # Per pair: branch a's noise, then branch b's (then the group's further branches), from the
        # pair's own generator. A pair without churn at this point draws nothing, so its stream
        # never depends on its batch.
        pairs = [
            torch.randn((k, *latent_shape), generator=g) if on else torch.zeros((k, *latent_shape))
            for g, on in zip(generators, active.tolist())
        ]
        return torch.cat([torch.stack([p[j] for p in pairs]) for j in range(k)])

    x = x0.repeat(k, 1, 1, 1)
    if bool((g_prior > 0).any()):
        x = prior_churn(x, g_prior, fresh_noise(g_prior[:b] > 0))
    x = x.to(device)
    cond2 = cond_cat([cond] * k)

    # On a GPU, host <-> device copies go through pinned memory without blocking, so the step loop
    # never waits for the GPU (the records are read only after the final synchronisation).
    overlap = device.type == "cuda"
    pin = overlap and storage_device.type == "cpu"
    states = torch.empty((k * b, n_steps, *latent_shape), device=storage_device, pin_memory=pin) if record else None
    vels = torch.empty_like(states, pin_memory=pin) if record else None

    def to_device(a: torch.Tensor) -> torch.Tensor:
        return a.pin_memory().to(device, non_blocking=True) if overlap else a.to(device)

    for i in range(n_steps):
        t = to_device(sigmas[i].expand(k * b))
        s = to_device(sigmas[i + 1].expand(k * b))
        v = velocity(x, t, cond2).float()
        if record:
            states[:, i].copy_(x, non_blocking=pin)
            vels[:, i].copy_(v, non_blocking=pin)
        g = g_steps[:, i]
        if bool((g > 0).any()):
            x = churn_step(x, t, s, v, to_device(g), to_device(fresh_noise(g[:b] > 0)))
        else:
            x = x + (s - t).reshape(-1, 1, 1, 1) * v
        if on_step is not None:
            on_step(i + 1, n_steps)
    if pin:
        torch.cuda.current_stream(device).synchronize()
    return PairedRollout(final=x, states=states, velocities=vels, sigmas=sigmas)


def sample_euler(
    velocity: VelocityFn,
    cond: Cond,
    generators: Sequence[torch.Generator],
    latent_shape: tuple[int, int, int],
    sigmas: torch.Tensor,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Plain Euler sampling, one sample per generator (initial noise = the generator's first draw,
    the same noise `sample_pairs` starts both branches from): final latents [B, C, h, w] on
    `device`. Differentiable when `velocity` is (autograd is left as the caller set it).
    on_step(i, x, v): x [B, C, h, w] before solver step i and the velocity v it steps with."""
    device = torch.device(device)
    x = torch.stack([torch.randn(latent_shape, generator=g) for g in generators]).to(device)
    for i in range(sigmas.shape[0] - 1):
        t = sigmas[i].expand(x.shape[0]).to(device)
        s = sigmas[i + 1].expand(x.shape[0]).to(device)
        v = velocity(x, t, cond).float()
        if on_step is not None:
            on_step(i, x, v)
        x = x + (s - t).reshape(-1, 1, 1, 1) * v
    return x
