"""The FDFO update (ALGORITHM.md, "The update"), checkable line by line against the spec.

For a pair with rewards R_a, R_b and final latents x_a, x_b:
    dR_a = (R_a - R_b) / 2,  dx_a = (x_a - x_b) / 2,  (b gets the negatives)
    dxn  = dx / (mean(dx^2) + 1e-6)
    v_target = v_recorded - dxn          at every recorded step of both samples
    L = mean((v - v_target)^2),  L_ref = mean(dxn^2),  ratio = exp(L_ref - L)
    loss = -dR * ratio + |dR| / (2 clip_range) * (ratio - 1)^2   (+ kl_weight * mean((v - v_base)^2))

Groups of K > 2 branches (`group_deltas`, an extension beyond the paper) replace a pair's (dR, dxn)
by a least-squares finite-difference estimate on the span of the group's K - 1 differences; with
K = 2 that estimate is the pair's, and `group_deltas` returns `pair_deltas` itself.
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


def group_deltas(
    rewards: torch.Tensor, final: torch.Tensor, branches: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite differences of B groups of K = `branches` branches, rows [branch 0 of groups 0..B-1,
    branch 1 of groups 0..B-1, ..., branch K-1 ...] (K = 2: `pair_deltas`' [a..., b...]).

    rewards: [KB]; final: [KB, C, h, w]. Returns (reward_delta [KB] float32, dxn [KB, C, h, w]
    float32) for `fdfo_loss`, one row per branch. K = 2 returns `pair_deltas(rewards, final)`
    itself (the paper's update, bit for bit). Raises ValueError for K < 2 or rows not K * B.

    The estimate (K >= 3; written with <u, w> = mean(u * w) over the N latent elements, the inner
    product in which the paper's dxn = dx / mean(dx^2) is a gradient):
      centre on the group mean:  D_k = x_k - mean_j x_j,  r_k = R_k - mean_j R_j;
      Gram matrix  G_jk = <D_j, D_k>  (K x K, rank K - 1: the D_k sum to zero);
      the gradient estimate on span{D_k}:  g = sum_k c_k D_k  with  (G + lam I) c = r,
      lam = 1e-6 * K / (K - 1)  (`DX_EPS`, scaled so that K = 2 gives the paper's 1e-6).
    g is the minimum-norm least-squares solution of <g, x_i - x_j> = R_i - R_j for every pair of
    the group (with K points in K - 1 dimensions the fit is exact up to lam): the reward's slope
    measured along K - 1 directions per K evaluations, where a pair measures 1 per 2. When the D_k
    are near-orthogonal with a common mean square m, G ~ m K / (K - 1) (I - 11^T / K) and
    g ~ (K - 1) / K * sum_k r_k D_k / m: the pair estimates averaged over the branches.
    Every branch's velocity target moves along this one estimate: with rho = sqrt(mean_k r_k^2),
      dR_k = sign(r_k) rho  (sign(0) = +1),   dxn_k = g / dR_k   (0 when rho = 0),
    so dR_k * dxn_k = g for every branch, as in a pair.
    K = 2 (ALGORITHM.md, "The update"; arXiv 2603.12893, the pair update): D_a = dx_a = (x_a - x_b) / 2,
    r_a = dR_a, G = m [[1, -1], [-1, 1]] with m = mean(dx_a^2), lam = 2e-6, c = (r_a, -r_a) / (2 m + 2e-6),
    g = dR_a dx_a / (m + 1e-6) = dR_a dxn_a; rho = |dR_a|, so dR_k and dxn_k are the paper's.
    """
    if int(branches) == 2:
        return pair_deltas(rewards, final)
    return least_squares_deltas(rewards, final, branches)


def least_squares_deltas(
    rewards: torch.Tensor, final: torch.Tensor, branches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`group_deltas`' least-squares estimate for any K >= 2 (K = 2: the pair update up to float
    rounding; `group_deltas` uses `pair_deltas` there). Shapes, layout and errors as `group_deltas`."""
    k = int(branches)
    if k < 2:
        raise ValueError(f"a group needs at least 2 branches, got {branches}")
    b = rewards.shape[0] // k
    if rewards.shape[0] != k * b or final.shape[0] != k * b:
        raise ValueError(f"group_deltas expects {k}B rewards and {k}B final latents, branch 0 first")
    r = rewards.double().reshape(k, b)
    r = r - r.mean(dim=0, keepdim=True)  # [K, B]
    x = final.float().reshape(k, b, -1)
    n_el = x.shape[-1]
    lam = DX_EPS * k / (k - 1)
    eye = torch.eye(k, dtype=torch.float64)
    reward_delta = torch.empty(k, b, dtype=torch.float64)
    dxn = torch.empty_like(x)
    for i in range(b):  # one group at a time: a [K, N] float64 copy, never the whole epoch's
        d = x[:, i].double()
        d = d - d.mean(dim=0, keepdim=True)
        gram = d @ d.T / n_el
        c = torch.linalg.solve(gram + lam * eye, r[:, i])
        g = c @ d  # [N]
        rho = r[:, i].pow(2).mean().sqrt()
        sign = torch.where(r[:, i] >= 0, 1.0, -1.0).double()
        dr = sign * rho
        reward_delta[:, i] = dr
        scale = torch.where(rho > 0, 1.0 / torch.where(rho > 0, dr, torch.ones_like(dr)), torch.zeros_like(dr))
        dxn[:, i] = (scale[:, None] * g[None, :]).float()
    return reward_delta.reshape(-1).float(), dxn.reshape(final.shape)


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
