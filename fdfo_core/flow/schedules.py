"""Flow-matching time grids and churn schedules.

Convention (SD3 / diffusers): x_t = (1 - t) * x_0 + t * eps, t = 1 is pure noise, t = 0 data.
A schedule is a decreasing tensor of `num_steps + 1` times from about 1 down to exactly 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ChurnSchedule = Literal["raw", "interval", "prior"]
CHURN_SCHEDULES: tuple[str, ...] = ("raw", "interval", "prior")


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift t' = shift * t / (1 + (shift - 1) * t) (Esser et al. 2024, Eq. 23).

    Same formula as diffusers' FlowMatchEulerDiscreteScheduler (static shift) and ComfyUI's
    `time_snr_shift`; shift 1 is the identity.
    """
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def exponential_time_shift(t: torch.Tensor, mu: float) -> torch.Tensor:
    """Flux's shift t' = e^mu / (e^mu + (1 / t - 1)); keeps t = 0 and t = 1 fixed."""
    t = t.double()
    out = torch.zeros_like(t)
    pos = t > 0
    out[pos] = math.exp(mu) / (math.exp(mu) + (1 / t[pos] - 1))
    return out.float()


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's resolution-dependent shift: mu is linear in the number of image tokens."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


def flow_sigmas(
    num_steps: int,
    shift: float = 1.0,
    mu: float | None = None,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """The inference time grid of diffusers' FlowMatchEulerDiscreteScheduler, without its state.

    With a static `shift` (SD3/SD3.5) the smallest training time 1/1000 is shifted when the
    scheduler is built and the grid is shifted again after spacing, exactly as diffusers does, so
    our samplers see the model's own timesteps. With `mu` (Flux dynamic shifting) the grid is
    linear from 1 to 1/num_steps, as FluxPipeline passes it, and then shifted exponentially.
    Returns float32 [num_steps + 1], ending in 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if mu is None:
        t_min = float(time_shift(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64), shift))
        ts = time_shift(torch.linspace(1.0, t_min, num_steps, dtype=torch.float64), shift)
    else:
        ts = exponential_time_shift(torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64), mu)
    return torch.cat([ts.float(), torch.zeros(1)])


def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def churn_strengths(
    schedule: ChurnSchedule,
    sigmas: torch.Tensor,
    strength: float,
    generator: torch.Generator | None = None,
    interval_mean: float = 0.0,
    interval_std: float = 1.0,
    interval_width: float = 0.5,
) -> tuple[float, torch.Tensor]:
    """Churn of one pair: (g at the prior, g for each of the len(sigmas) - 1 solver steps).

    - "raw": the published default, a constant g on every step and at the prior.
    - "interval": churn concentrated around one random time t* drawn logit-normal
      (logit t* ~ N(interval_mean, interval_std)); step i gets
      g * exp(-(logit t_i - logit t*)^2 / (2 width^2)), no prior churn.
    - "prior": churn at t = 1 only; the rest of the chain is deterministic.
    The final step (to t = 0) never churns: its overshoot time would be 0 anyway.
    """
    if strength < 0:
        raise ValueError(f"churn strength must be >= 0, got {strength}")
    n = sigmas.shape[0] - 1
    g = torch.zeros(n)
    if schedule == "raw":
        g[:] = strength
        prior = strength
    elif schedule == "prior":
        prior = strength
    elif schedule == "interval":
        z = torch.randn(1, generator=generator).item() * interval_std + interval_mean
        t = sigmas[:-1].double().clamp(1e-6, 1 - 1e-6)
        g = (strength * torch.exp(-0.5 * ((logit(t) - z) / interval_width) ** 2)).float()
        prior = 0.0
    else:
        raise ValueError(f"unknown churn schedule {schedule!r}; choose one of {CHURN_SCHEDULES}")
    g[-1] = 0.0
    return prior, g
