"""Flow-GRPO (Liu et al. 2025) and Flow-GRPO-Fast, as baselines sharing FDFO's models and loop.

Sampling is turned into an SDE with noise level a (ALGORITHM.md, "The baseline: Flow-GRPO"):
    std_t = a * sqrt(t / (1 - t))        (at t = 1 the next time is used in the denominator)
    mean  = x (1 + std_t^2 / (2t) dt) + v (1 + std_t^2 (1 - t) / (2t)) dt,   dt = t_next - t < 0
    x_next = mean + std_t sqrt(-dt) * noise
Each step's log-probability is the Gaussian log-density of the taken x_next (mean over elements).
G images per prompt give group-relative advantages (r - mean) / (std + 1e-4), clipped to +-5;
the loss is PPO's clipped ratio per step plus beta * KL to the base model.
Flow-GRPO-Fast samples with the SDE only inside a window of a few consecutive steps (ODE
elsewhere) and trains only on those steps.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..flow.conditioning import cond_select, cond_to
from ..run.distributed import shard_range
from ..flow.seeds import epoch_prompt_indices, generator
from ..run.stats import ItemStats
from ..run.trainer import RunLoop
from ..run.hooks import TrainingError
from .common import finite_groups, score_latents

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def sde_step_std(t: torch.Tensor, t_next: torch.Tensor, t_second: float, noise_level: float) -> torch.Tensor:
    """std_t = a sqrt(t / (1 - t)); at t = 1 the denominator uses the schedule's second time."""
    denom = 1 - torch.where(t >= 1, torch.full_like(t, t_second), t)
    return noise_level * torch.sqrt(t / denom)


def sde_mean(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean of the Flow-GRPO SDE step from t to t_next (all per-sample [B] tensors)."""
    t, dt, std = (a.reshape(-1, *([1] * (x.ndim - 1))) for a in (t, t_next - t, std))
    return x * (1 + std**2 / (2 * t) * dt) + v * (1 + std**2 * (1 - t) / (2 * t)) * dt


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std_step: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std_step^2) averaged over the non-batch elements -> [B]."""
    s = std_step.reshape(-1, *([1] * (x.ndim - 1)))
    lp = -((x.float() - mean.float()) ** 2) / (2 * s**2) - torch.log(s) - LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, x.ndim)))


def group_advantages(rewards: torch.Tensor, group_size: int, global_std: bool = False, clip: float = 5.0) -> torch.Tensor:
    """(r - group mean) / (std + 1e-4), clipped; rewards laid out group by group."""
    r = rewards.double().reshape(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std().expand_as(mean) if global_std else r.std(dim=1, keepdim=True)
    return ((r - mean) / (std + 1e-4)).clamp(-clip, clip).reshape(-1).float()


class FlowGRPOTrainer(RunLoop):
    """Flow-GRPO (`method="flow_grpo"`) and Flow-GRPO-Fast (`method="flow_grpo_fast"`)."""

    def _sde_steps(self, epoch: int, group: int) -> list[int]:
        """Steps a group samples with the SDE. The final step (onto t = 0) stays deterministic so
        the scored image carries no injected noise."""
        cfg = self.config
        n = cfg.num_steps - 1  # the last step lands on t = 0, where the SDE is degenerate
        if cfg.method == "flow_grpo":
            return list(range(n))
        span = cfg.grpo_window_range or max(1, n // 2)
        span = max(1, min(span, n - cfg.grpo_window + 1))
        start = int(torch.randint(0, span, (1,), generator=generator(cfg.seed, "window", epoch, group)))
        return list(range(start, min(n, start + cfg.grpo_window)))

    @torch.no_grad()
    def _sample(self, epoch: int):
        cfg = self.config
        G = cfg.grpo_group_size
        lo, hi = shard_range(cfg.grpo_groups_per_epoch, self.dist.rank, self.dist.world_size)
        prompt_idx = epoch_prompt_indices(cfg.seed, epoch, len(self.prompts), cfg.grpo_groups_per_epoch)[lo:hi]
        unique, rows = torch.unique(prompt_idx, return_inverse=True)
        cond = cond_to(self.backend.encode_prompts([self.prompts[i] for i in unique.tolist()]), self.storage)
        uncond = self.negative_cond()
        velocity = self.velocity_fn(uncond)
        shape = self.backend.latent_shape(cfg.height, cfg.width)
        sigmas = self.backend.sigmas(cfg.num_steps, cfg.height, cfg.width).float().cpu()
        t_second = float(sigmas[1])

        n_img = (hi - lo) * G
        image_rows = rows.repeat_interleave(G)  # cond row of each image
        sde = [self._sde_steps(epoch, lo + g) for g in range(hi - lo)]
        items = []  # (image, step) pairs that were sampled with the SDE (trainable)
        for g in range(hi - lo):
            for j in range(G):
                items += [(g * G + j, s) for s in sde[g]]
        max_k = max(len(s) for s in sde)
        states = torch.zeros((n_img, max_k, *shape), device=self.storage)
        nexts = torch.zeros_like(states)
        old_logp = torch.zeros((n_img, max_k))
        slot = {}  # (image, step) -> slot index in states
        final = torch.empty((n_img, *shape))
        batch = 2 * cfg.sample_batch_size
        for start in range(0, n_img, batch):
            stop = min(n_img, start + batch)
            gens = [generator(cfg.seed, "grpo", epoch, lo * G + i) for i in range(start, stop)]
            x = torch.stack([torch.randn(shape, generator=gg) for gg in gens]).to(self.device)
            c = cond_to(cond_select(cond, image_rows[start:stop]), self.device)
            for i in range(cfg.num_steps):
                b = stop - start
                t, s = sigmas[i].expand(b).to(self.device), sigmas[i + 1].expand(b).to(self.device)
                v = velocity(x, t, c)
                on = torch.tensor([i in sde[(start + k) // G] for k in range(b)])
                x_next = x + (s - t).reshape(-1, 1, 1, 1) * v  # ODE step for everyone...
                if bool(on.any()):  # ...replaced by the SDE step where the sample is in its SDE window
                    std = sde_step_std(t, s, t_second, cfg.grpo_noise_level)
                    mean = sde_mean(x, v, t, s, std)
                    std_step = std * torch.sqrt(t - s)
                    # Only samples inside their window draw noise: a sample's stream is its own.
                    noise = torch.stack([
                        torch.randn(shape, generator=gg) if o else torch.zeros(shape) for gg, o in zip(gens, on.tolist())
                    ]).to(self.device)
                    x_sde = mean + std_step.reshape(-1, 1, 1, 1) * noise
                    lp = gaussian_logprob(x_sde, mean, std_step).cpu()
                    mask = on.reshape(-1, 1, 1, 1).to(self.device)
                    x_next = torch.where(mask, x_sde, x_next)
                    for k in on.nonzero().flatten().tolist():
                        img = start + k
                        k_slot = sde[img // G].index(i)
                        slot[(img, i)] = k_slot
                        states[img, k_slot] = x[k].to(self.storage)
                        nexts[img, k_slot] = x_sde[k].to(self.storage)
                        old_logp[img, k_slot] = lp[k]
                x = x_next
                self.progress("sample", min(n_img, start + batch), n_img)
            final[start:stop] = x.cpu()
        return dict(prompt_idx=prompt_idx, rows=rows, cond=cond, image_rows=image_rows, sigmas=sigmas,
                    t_second=t_second, uncond=uncond, items=items, slot=slot, states=states, nexts=nexts, old_logp=old_logp,
                    final=final, lo=lo, hi=hi)

    def train_epoch(self) -> dict[str, Any]:
        cfg = self.config
        if self.dist.active:
            raise TrainingError("the Flow-GRPO baseline runs single-process; launch it without torchrun")
        epoch = self.epoch
        G = cfg.grpo_group_size
        t0 = time.perf_counter()
        roll = self._sample(epoch)
        t1 = time.perf_counter()
        prompts = [self.prompts[i] for i in roll["prompt_idx"].repeat_interleave(G).tolist()]
        rewards, failures = score_latents(self, roll["final"], prompts, G)
        t2 = time.perf_counter()
        finite = finite_groups(self, rewards, G, epoch, failures)
        safe = torch.where(torch.isfinite(rewards), rewards, torch.zeros_like(rewards))
        adv = group_advantages(safe, G, cfg.grpo_global_std)

        # Items: every SDE step of every valid image (a random timestep_fraction of them),
        # shuffled and split into optimizer steps like FDFO's items.
        items = []
        for img, step in roll["items"]:
            if bool(finite[img // G]):
                items.append((img, step))
        g_items = generator(cfg.seed, "grpo-items", epoch)
        keep = []
        per_img: dict[int, list[int]] = {}
        for img, step in items:
            per_img.setdefault(img, []).append(step)
        for img, steps in per_img.items():
            k = max(1, int(len(steps) * cfg.grpo_timestep_fraction))
            chosen = torch.randperm(len(steps), generator=g_items)[:k].tolist()
            keep += [(img, steps[c]) for c in chosen]
        keep_t = torch.tensor(keep, dtype=torch.long)
        keep_t = keep_t[torch.randperm(len(keep), generator=g_items)]
        chunks = torch.tensor_split(keep_t, cfg.optimizer_steps_per_epoch)
        velocity = self.velocity_fn(roll["uncond"])
        stats = ItemStats()
        sig = roll["sigmas"]
        for chunk in chunks:
            for start in range(0, chunk.shape[0], cfg.train_batch_size):
                mb = chunk[start : start + cfg.train_batch_size]
                img, step = mb[:, 0], mb[:, 1]
                slots = torch.tensor([roll["slot"][(int(a), int(b))] for a, b in mb])
                x = roll["states"][img, slots].to(self.device)
                x_next = roll["nexts"][img, slots].to(self.device)
                lp_old = roll["old_logp"][img, slots].to(self.device)
                t, s = sig[step].to(self.device), sig[step + 1].to(self.device)
                cond = cond_to(cond_select(roll["cond"], roll["image_rows"][img]), self.device)
                std = sde_step_std(t, s, roll["t_second"], cfg.grpo_noise_level)
                std_step = std * torch.sqrt(t - s)
                v = velocity(x, t, cond)
                mean = sde_mean(x, v, t, s, std)
                lp = gaussian_logprob(x_next, mean, std_step)
                ratio = torch.exp(lp - lp_old)
                a = adv[img].to(self.device)
                unclipped = -a * ratio
                clipped = -a * ratio.clamp(1 - cfg.grpo_clip_range, 1 + cfg.grpo_clip_range)
                loss = torch.maximum(unclipped, clipped)
                kl = None
                if cfg.grpo_kl_beta > 0:
                    with torch.no_grad(), self.backend.adapter_disabled():
                        mean_ref = sde_mean(x, velocity(x, t, cond), t, s, std)
                    dims = tuple(range(1, x.ndim))
                    kl = ((mean - mean_ref) ** 2).mean(dim=dims) / (2 * std_step**2)
                    loss = loss + cfg.grpo_kl_beta * kl
                self.scaler.scale(loss.sum() / chunk.shape[0]).backward()
                r = ratio.detach()
                stats.add(loss, r, (r - 1).abs() > cfg.grpo_clip_range, None if kl is None else kl.detach(), t=t)
                self.progress("train", stats.items, keep_t.shape[0])
            stats.grad_norms.append(self.optimizer_step())
        t3 = time.perf_counter()

        return self.finish_epoch((t0, t1, t2, t3), rewards[torch.isfinite(rewards)], stats,
                                 pairs=int(finite.sum()) * G // 2, dropped=int((~finite).sum()) * G // 2,
                                 mean_abs_dr=float(adv.abs().mean()), with_kl=cfg.grpo_kl_beta > 0, failures=failures)
