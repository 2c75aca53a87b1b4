"""The FDFO update (ALGORITHM.md, "The update"), checkable line by line against the spec.

For a pair with rewards R_a, R_b and final latents x_a, x_b:
    dR_a = (R_a - R_b) / 2,  dx_a = (x_a - x_b) / 2,  (b gets the negatives)
    dxn  = dx / (mean(dx^2) + 1e-6)
    v_target = v_recorded - dxn          at every recorded step of both samples
    L = mean((v - v_target)^2),  L_ref = mean(dxn^2),  ratio = exp(L_ref - L)
    loss = -dR * ratio + |dR| / (2 clip_range) * (ratio - 1)^2   (+ kl_weight * mean((v - v_base)^2))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Keeps dxn finite when the two branches end (almost) identical.
DX_EPS = 1e-6


def pair_deltas(
    rewards: torch.Tensor, final: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite differences of B pairs laid out as rows [a_0..a_{B-1}, b_0..b_{B-1}].

    rewards: [2B]; final: [2B, C, h, w]. Returns (reward_delta [2B], endpoint_delta_normalized
    [2B, C, h, w]). Computed in float32 (float64 for the reward difference): the two endpoints
    are close, so their difference must not be taken in low precision.
    """
    b = rewards.shape[0] // 2
    if rewards.shape[0] != 2 * b or final.shape[0] != 2 * b:
        raise ValueError("pair_deltas expects 2B rewards and 2B final latents, branch a first")
    r = rewards.double()
    reward_delta_a = (r[:b] - r[b:]) / 2
    x = final.float()
    endpoint_delta_a = (x[:b] - x[b:]) / 2
    dims = tuple(range(1, x.ndim))
    dxn_a = endpoint_delta_a / (endpoint_delta_a.pow(2).mean(dim=dims, keepdim=True) + DX_EPS)
    reward_delta = torch.cat([reward_delta_a, -reward_delta_a]).float()
    return reward_delta, torch.cat([dxn_a, -dxn_a])


def v_target(v_recorded: torch.Tensor, dxn: torch.Tensor) -> torch.Tensor:
    """The velocity that moves the endpoint toward the better branch: v_recorded - dxn."""
    return v_recorded - dxn


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # [b] per-item loss (sum/mean it yourself; the trainer normalises globally)
    ratio: torch.Tensor  # [b] detached
    clipped: torch.Tensor  # [b] bool, detached: |ratio - 1| > clip_range
    kl: torch.Tensor | None  # [b] detached mean((v - v_base)^2) when a base velocity was given


def fdfo_loss(
    v: torch.Tensor,
    v_recorded: torch.Tensor,
    dxn: torch.Tensor,
    reward_delta: torch.Tensor,
    clip_range: float = 0.03,
    v_base: torch.Tensor | None = None,
    kl_weight: float = 0.0,
) -> ObjectiveOutput:
    """Per-item SPO-style surrogate.

    v: [b, C, h, w] current prediction at the recorded (x_t, t) (after CFG if training with CFG);
    v_recorded, dxn: [b, C, h, w]; reward_delta: [b].
    """
    if clip_range <= 0:
        raise ValueError(f"clip_range must be positive, got {clip_range}")
    dims = tuple(range(1, v.ndim))
    d = v.float() - v_recorded.float()
    dxn = dxn.float()
    # L_ref - L without cancellation: with v - v_target = d + dxn,
    # L_ref - L = mean(dxn^2) - mean((d + dxn)^2) = -mean(d * (d + 2 dxn)).
    # Forming L and L_ref separately loses digits: mean(dxn^2) ~ 1 / mean(dx^2) is large when the
    # branches are close, while their difference (the log-ratio) is O(clip_range).
    log_ratio = -(d * (d + 2 * dxn)).mean(dim=dims)
    ratio = torch.exp(log_ratio)
    dr = reward_delta.float().to(ratio.device)
    loss = -dr * ratio + dr.abs() / (2 * clip_range) * (ratio - 1) ** 2
    kl = None
    if v_base is not None:
        kl_items = (v.float() - v_base.float()).pow(2).mean(dim=dims)
        if kl_weight:
            loss = loss + kl_weight * kl_items
        kl = kl_items.detach()
    ratio_d = ratio.detach()
    return ObjectiveOutput(loss=loss, ratio=ratio_d, clipped=(ratio_d - 1).abs() > clip_range, kl=kl)
