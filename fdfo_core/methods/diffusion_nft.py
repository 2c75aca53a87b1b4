"""DiffusionNFT (Zheng et al. 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward
Process", arXiv 2509.16117, ICLR 2026) as a baseline sharing FDFO's models, prompts, rewards and loop.

Written from the paper's method section; the defaults are its published SD3.5-Medium settings.
One epoch:
  1. The sampling ("old") policy v_old draws G clean images per prompt with any solver (here the
     plain Euler ODE on the model's own grid, where the paper uses a 2nd-order DPM solver) and no
     CFG; only the clean images are kept.
  2. Raw rewards become optimality probabilities (paper, Sec. 4):
         r = 1/2 + 1/2 clip((R - mean of the prompt's group) / Z, -1, 1),
     with Z = `nft_reward_clip` x std (the global std of the epoch's rewards, or the group's).
  3. Every image x0 is noised on the forward process at k flow times t of the sampling grid,
     x_t = (1 - t) x0 + t eps, whose flow-matching target is v = eps - x0. The current policy
     v_theta defines the implicit positive and negative policies (paper, Eq. 6)
         v+ = (1 - beta) v_old + beta v_theta,     v- = (1 + beta) v_old - beta v_theta
     and the loss is  r ||v+ - v||^2 + (1 - r) ||v- - v||^2  (divided by beta, see `nft_loss`).
     Adaptive weighting (paper, Sec. 4): each squared error is measured on the x0 prediction
     x0_hat = x_t - t v' and divided by its own detached mean absolute error, instead of a
     hand-tuned weight w(t).
  4. After the epoch's optimizer steps, the sampling policy follows the trained one softly
     (paper, Sec. 4): theta_old <- eta theta_old + (1 - eta) theta, with eta growing with the
     optimizer step i: eta = min(rate * (i - delay), eta_max), 0 before `delay`.

Why it works (paper, Thm. 1): the loss is minimised by v_theta = v_old + (2 / beta) Delta, Delta the
reward-weighted difference between the positive-split and the old velocity: no likelihoods, no
trajectories, no SDE. Expanding the squares shows the two roles of r:
  (1 / beta) [r |d + e|^2 + (1 - r) |e - d|^2] = beta |v_theta - v_old|^2 + 2 (2r - 1) (v_theta - v_old).e + |e|^2 / beta
with d = beta (v_theta - v_old), e = v_old - v: equal rewards (r = 1/2) leave the plain flow-matching
regression of v_theta onto v_old; r > 1/2 pulls v_theta toward the sample's own target v, r < 1/2
pushes it away; beta sets the trust region.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..flow.conditioning import cond_select, cond_to
from ..flow.paired_sampler import sample_euler
from ..flow.seeds import epoch_prompt_indices, generator
from ..run.stats import ItemStats
from ..run.trainer import RunLoop
from ..run.hooks import TrainingError
from .common import finite_groups, score_latents

#: Floor of the adaptive weight (mean absolute x0 error), so a perfect prediction cannot divide by 0.
ADAPTIVE_WEIGHT_FLOOR = 1e-5


def optimality_probability(rewards: torch.Tensor, group_size: int, clip: float = 5.0,
                           global_std: bool = True) -> torch.Tensor:
    """Map raw rewards to optimality probabilities r in [0, 1] (DiffusionNFT, Sec. 4).

    rewards: [N] laid out group by group (N = groups x group_size, one prompt per group).
    r = 1/2 + 1/2 clip((R - group mean) / (clip * (std + 1e-4)), -1, 1), std over the whole batch
    (`global_std`, the published default) or within the group. A group of equal rewards gets
    r = 1/2 everywhere. Raises ValueError if N is not a multiple of group_size.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    r = rewards.double().reshape(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    if global_std:
        std = (r.std() if r.numel() > 1 else torch.zeros((), dtype=r.dtype)).expand_as(mean)
    else:
        std = r.std(dim=1, keepdim=True)
    adv = (r - mean) / (std + 1e-4)
    return (0.5 + 0.5 * (adv / clip).clamp(-1.0, 1.0)).reshape(-1).float()


def implicit_policies(v: torch.Tensor, v_old: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(v+, v-) = ((1 - beta) v_old + beta v, (1 + beta) v_old - beta v)  (DiffusionNFT, Eq. 6)."""
    return v_old + beta * (v - v_old), v_old - beta * (v - v_old)


def nft_loss(v: torch.Tensor, v_old: torch.Tensor, v_target: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
             beta: float = 1.0, adaptive: bool = True) -> torch.Tensor:
    """Per-item DiffusionNFT loss (1 / beta) [r L(v+) + (1 - r) L(v-)]  ->  [b].

    v: [b, C, h, w] current velocity at the forward-noised x_t (carries the gradient); v_old: the
    sampling policy's velocity there (no gradient); v_target: eps - x0; t: [b] flow times in (0, 1];
    r: [b] optimality probabilities in [0, 1].
    L(v') = mean((v' - v_target)^2) without adaptive weighting; with it, the squared error of the
    x0 prediction x_t - t v' divided by its detached mean absolute error. Since x0_hat - x0 = t
    (v_target - v'), that is t * mean((v' - v_target)^2) / mean|v' - v_target|.
    The 1 / beta keeps the first-order pull (2r - 1) (v_target - v_old) independent of beta, so
    beta only sets the strength of the quadratic trust region beta |v - v_old|^2. (The authors'
    released training script also multiplies the loss by the advantage clip, 5; under Adam that
    constant only changes what gradient-norm clipping sees, and it is left out here.)
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    dims = tuple(range(1, v.ndim))
    v_pos, v_neg = implicit_policies(v.float(), v_old.float(), beta)
    target = v_target.float()

    def branch(vp: torch.Tensor) -> torch.Tensor:
        err = vp - target
        sq = err.pow(2).mean(dim=dims)
        if not adaptive:
            return sq
        tt = t.float().reshape(-1)
        weight = (tt * err.detach().abs().mean(dim=dims)).clamp_min(ADAPTIVE_WEIGHT_FLOOR)
        return tt**2 * sq / weight  # |x0_hat - x0|^2 / sg(mean |x0_hat - x0|)

    r = r.float().reshape(-1)
    return (r * branch(v_pos) + (1 - r) * branch(v_neg)) / beta


def soft_update_eta(step: int, rate: float, eta_max: float, delay: int = 0) -> float:
    """eta of the sampling policy's soft update after `step` optimizer steps (DiffusionNFT, Sec. 4):
    0 before `delay`, then min(rate * (step - delay), eta_max). eta = 0 is fully on-policy."""
    if step < delay:
        return 0.0
    return min(rate * (step - delay), eta_max)


@torch.no_grad()
def soft_update_(old: list[torch.Tensor], new: list[torch.Tensor], eta: float) -> None:
    """old <- eta * old + (1 - eta) * new, in place (the sampling policy trails the trained one)."""
    if len(old) != len(new):
        raise ValueError(f"{len(old)} old tensors vs {len(new)} new ones")
    for o, n in zip(old, new):
        o.mul_(eta).add_(n.detach().to(o), alpha=1.0 - eta)


class DiffusionNFTTrainer(RunLoop):
    """DiffusionNFT (`method="diffusion_nft"`): flow matching on the forward process with implicit
    positive and negative policies; the sampling policy is a soft (EMA) copy of the trained one."""

    def __init__(self, *args: Any, **kwargs: Any):
        """The run loop's arguments (`RunLoop.__init__`)."""
        super().__init__(*args, **kwargs)
        self._old: list[torch.Tensor] | None = None  # the sampling policy's adapter tensors, aligned with self.params

    # --- the sampling policy -----------------------------------------------------------------

    def _ensure_old(self) -> list[torch.Tensor]:
        if self._old is None:  # the sampling policy starts as the adapter the run starts from
            self._old = [p.detach().clone() for p in self.params]
        return self._old

    @contextlib.contextmanager
    def _sampling_policy(self) -> Iterator[None]:
        """Within: the adapter holds the sampling policy's weights; the trained ones come back after."""
        old = self._ensure_old()
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            for p, o in zip(self.params, old):
                p.copy_(o)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(self.params, current):
                    p.copy_(c)

    def old_policy_state(self) -> list[torch.Tensor]:
        """The sampling policy's adapter tensors (same order as the backend's trainable parameters).
        It starts as the adapter the trainer finds at its first use (first epoch or this call)."""
        return [o.clone() for o in self._ensure_old()]

    # --- one epoch -----------------------------------------------------------------------------

    def train_epoch(self) -> dict[str, Any]:
        cfg = self.config
        if self.dist.active:
            raise TrainingError("the DiffusionNFT baseline runs single-process; launch it without torchrun")
        epoch = self.epoch
        G, n_groups = cfg.nft_group_size, cfg.nft_groups_per_epoch
        n = G * n_groups
        t0 = time.perf_counter()

        # 1. Clean samples from the sampling policy (plain Euler ODE, no CFG).
        prompt_idx = epoch_prompt_indices(cfg.seed, epoch, len(self.prompts), n_groups)
        unique, rows = torch.unique(prompt_idx, return_inverse=True)
        cond = cond_to(self.backend.encode_prompts([self.prompts[i] for i in unique.tolist()]), self.storage)
        image_rows = rows.repeat_interleave(G)  # cond row of each image
        shape = self.backend.latent_shape(cfg.height, cfg.width)
        sigmas = self.backend.sigmas(cfg.num_steps, cfg.height, cfg.width).float().cpu()
        velocity = self.velocity_fn(None)
        x0 = torch.empty((n, *shape), device=self.storage)
        batch = 2 * cfg.sample_batch_size
        with torch.no_grad(), self._sampling_policy():
            for start in range(0, n, batch):
                stop = min(n, start + batch)
                gens = [generator(cfg.seed, "nft", epoch, i) for i in range(start, stop)]
                c = cond_to(cond_select(cond, image_rows[start:stop]), self.device)
                x0[start:stop] = sample_euler(velocity, c, gens, shape, sigmas, device=self.device).to(self.storage)
                self.progress("sample", stop, n)
        t1 = time.perf_counter()

        # 2. Rewards -> optimality probabilities; a group with a non-finite reward is dropped.
        prompts = [self.prompts[i] for i in prompt_idx.repeat_interleave(G).tolist()]
        rewards, failures = score_latents(self, x0, prompts, G)
        t2 = time.perf_counter()
        finite_group = finite_groups(self, rewards, G, epoch, failures)
        keep_groups = finite_group.nonzero().flatten()
        keep_images = (keep_groups[:, None] * G + torch.arange(G)).reshape(-1)
        r_opt = torch.full((n,), 0.5)
        r_opt[keep_images] = optimality_probability(rewards[keep_images], G, cfg.nft_reward_clip, cfg.nft_global_std)

        # 3. Items: k flow times of the sampling grid per image, each with its own forward noise;
        # all shuffled and split into the epoch's optimizer steps.
        k = max(1, int(cfg.num_steps * cfg.nft_timestep_fraction))
        g_items = generator(cfg.seed, "nft-items", epoch)
        items = torch.cat([
            torch.stack([torch.full((k,), int(img)), torch.randperm(cfg.num_steps, generator=g_items)[:k]], 1)
            for img in keep_images.tolist()
        ])
        items = items[torch.randperm(items.shape[0], generator=g_items)]
        stats = ItemStats()
        deviation = 0.0
        for chunk in torch.tensor_split(items, cfg.optimizer_steps_per_epoch):
            for start in range(0, chunk.shape[0], cfg.train_batch_size):
                mb = chunk[start : start + cfg.train_batch_size]
                img, step = mb[:, 0], mb[:, 1]
                t = sigmas[step].to(self.device)
                clean = x0[img].to(self.device).float()
                eps = torch.stack([
                    torch.randn(shape, generator=generator(cfg.seed, "nft-noise", epoch, int(a), int(b))) for a, b in mb
                ]).to(self.device)
                tt = t.reshape(-1, 1, 1, 1)
                x_t = (1 - tt) * clean + tt * eps  # the forward process
                c = cond_to(cond_select(cond, image_rows[img]), self.device)
                with torch.no_grad(), self._sampling_policy():
                    v_old = velocity(x_t, t, c)
                v = velocity(x_t, t, c)
                r = r_opt[img].to(self.device)
                loss = nft_loss(v, v_old, eps - clean, t, r, beta=cfg.nft_beta, adaptive=cfg.nft_adaptive_weighting)
                kl = None
                if cfg.nft_kl_beta > 0:
                    with torch.no_grad(), self.backend.adapter_disabled():
                        v_ref = velocity(x_t, t, c)
                    kl = (v - v_ref).pow(2).mean(dim=tuple(range(1, v.ndim)))
                    loss = loss + cfg.nft_kl_beta * kl
                self.scaler.scale(loss.sum() / chunk.shape[0]).backward()
                deviation += float((v.detach() - v_old).pow(2).mean(dim=tuple(range(1, v.ndim))).sum())
                # No likelihood ratio in this method: the ratio slot records a neutral 1.
                stats.add(loss, torch.ones(mb.shape[0]), torch.zeros(mb.shape[0], dtype=torch.bool),
                          None if kl is None else kl.detach(), t=t)
                self.progress("train", stats.items, items.shape[0])
            stats.grad_norms.append(self.optimizer_step())
        t3 = time.perf_counter()

        # 4. The sampling policy trails the trained one.
        optimizer_steps = (epoch + 1) * cfg.optimizer_steps_per_epoch
        eta = soft_update_eta(optimizer_steps, cfg.nft_decay_rate, cfg.nft_decay_max, cfg.nft_decay_delay)
        soft_update_(self._ensure_old(), self.params, eta)

        finite = torch.isfinite(rewards)
        metrics = self.finish_epoch((t0, t1, t2, t3), rewards[finite], stats,
                                    pairs=int(finite_group.sum()) * G // 2, dropped=int((~finite_group).sum()) * G // 2,
                                    mean_abs_dr=float((2 * r_opt[keep_images] - 1).abs().mean()),
                                    with_kl=cfg.nft_kl_beta > 0, failures=failures)
        metrics["nft_eta"] = eta
        metrics["nft_old_deviation"] = deviation / max(1, stats.items)  # mean((v_theta - v_old)^2) while training
        return metrics

    # --- checkpoints: the sampling policy is part of the state --------------------------------

    def method_state(self) -> dict[str, Any]:
        """The checkpoint part `nft_old_policy`: the sampling policy's adapter tensors."""
        return {"nft_old_policy": [o.cpu().clone() for o in self._ensure_old()]}

    def load_method_state(self, state: Mapping[str, Any], where: Path) -> None:
        old = state.get("nft_old_policy")
        if old is None or len(old) != len(self.params):
            raise TrainingError(f"checkpoint {where} has no DiffusionNFT sampling policy; it was not written by "
                                "method diffusion_nft. Resume with the method that wrote it, or start a new run.")
        self._old = [o.to(p.device, p.dtype).clone() for o, p in zip(old, self.params)]
