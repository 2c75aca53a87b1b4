"""Baselines for differentiable rewards (the paper's ablation of where the gradient goes).

- `grad_copy`: sample with the plain ODE, take the image-space gradient of the reward at the final
  latent (through the VAE decoder), and copy it to every step as FDFO copies its finite
  difference: each sample becomes a virtual pair of length `grad_copy_delta` along the gradient,
  with the exact reward difference, trained with the same SPO surrogate and trust region.
- `backprop_chain`: back-propagate the reward through the whole sampling chain (DRaFT/AlignProp
  style); the paper reports it works worse than copying.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..rewards.failure_policy import RewardFailures, dropped_line
from ..flow.conditioning import cond_select, cond_to
from ..flow.paired_sampler import sample_euler
from .fdfo_objective import fdfo_loss
from ..flow.seeds import epoch_prompt_indices, generator
from ..run.stats import ItemStats
from ..run.trainer import RunLoop
from ..run.hooks import TrainingError


class _DifferentiableRewardTrainer(RunLoop):
    def _check(self) -> None:
        if self.dist.active:
            raise TrainingError(f"the {self.config.method} baseline runs single-process; launch it without torchrun")
        if not getattr(self.reward, "differentiable", False):
            raise TrainingError(
                f"method {self.config.method!r} needs a differentiable reward; {self.reward_spec!r} is not. "
                "Use brightness, saturation, colourfulness, pickscore, hpsv2, aesthetic or clipscore, or method fdfo."
            )

    def _epoch_setup(self, epoch: int):
        """(n, prompt index [n], row in cond [n], cond, velocity, latent shape, sigmas) of the epoch's
        n = 2 * pairs_per_epoch samples; velocity: the run's, with CFG against the negative prompt.
        Raises TrainingError when the method cannot run (several ranks, a reward without gradients)."""
        cfg = self.config
        self._check()
        n = 2 * cfg.pairs_per_epoch  # the same number of images (reward evaluations) as FDFO
        prompt_idx = epoch_prompt_indices(cfg.seed, epoch, len(self.prompts), n)
        unique, rows = torch.unique(prompt_idx, return_inverse=True)
        cond = self.backend.encode_prompts([self.prompts[i] for i in unique.tolist()])
        uncond = self.negative_cond()
        shape = self.backend.latent_shape(cfg.height, cfg.width)
        sigmas = self.backend.sigmas(cfg.num_steps, cfg.height, cfg.width).float().cpu()
        return n, prompt_idx, rows, cond, self.velocity_fn(uncond), shape, sigmas

    def _check_drops(self, dropped: int, n: int, failures: RewardFailures, missing: str = "none") -> None:
        """The failure policy over the epoch's n samples, `dropped` of them without a usable reward:
        TrainingError when all are, or more than max_bad_pair_fraction; else the drop is logged."""
        epoch = self.epoch
        if dropped == n:
            raise TrainingError(f"every sample of epoch {epoch + 1} got a NaN or infinite reward (or {missing}) from "
                                f"{self.reward_spec!r}: {failures.summary()}")
        self.check_bad_share(dropped, n, "samples", failures)
        if dropped:
            self.log(dropped_line(epoch + 1, dropped, n, "samples", self.config.max_bad_pair_fraction, failures))

    def _sample(self, velocity, cond, rows: torch.Tensor, shape, sigmas: torch.Tensor, purpose: str, start: int,
                stop: int, on_step=None) -> torch.Tensor:
        """Final latents [stop - start, C, h, w] of the epoch's samples start:stop by the plain Euler
        sampler, each from its own seed (seed, purpose, epoch, index); differentiable when autograd is on.
        on_step(i, x, v): `paired_sampler.sample_euler`'s."""
        gens = [generator(self.config.seed, purpose, self.epoch, i) for i in range(start, stop)]
        c = cond_to(cond_select(cond, rows[start:stop]), self.device)
        return sample_euler(velocity, c, gens, shape, sigmas, device=self.device, on_step=on_step)

    def _reward_grad(self, latents: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards [B], d reward / d latents [B, C, h, w]) through the VAE decoder."""
        z = latents.detach().to(self.device).requires_grad_(True)
        with torch.enable_grad(), self.autocast():
            images = self.backend.decode(z).float()
            r = self.reward.score_differentiable(images.clamp(0, 1), prompts)
        (grad,) = torch.autograd.grad(r.sum(), z)
        return r.detach().double().cpu(), grad.float().cpu()

    def _finish_with_drops(self, times, rewards: torch.Tensor, stats: ItemStats, dropped_samples: int,
                           mean_abs_dr: float, failures: RewardFailures) -> dict[str, Any]:
        """Metrics in pair units like FDFO's (2 samples = 1 pair of reward evaluations)."""
        n = rewards.numel()
        pairs = (n - dropped_samples) // 2
        return self.finish_epoch(times, rewards[torch.isfinite(rewards)], stats, pairs=pairs, dropped=n // 2 - pairs,
                                 mean_abs_dr=mean_abs_dr, with_kl=False, failures=failures)


class GradCopyTrainer(_DifferentiableRewardTrainer):
    """method="grad_copy": FDFO's update with the exact reward gradient instead of a finite difference."""

    def train_epoch(self) -> dict[str, Any]:
        cfg = self.config
        epoch = self.epoch
        t = [time.perf_counter()]
        n, prompt_idx, rows, cond, velocity, shape, sigmas = self._epoch_setup(epoch)
        states = torch.empty((n, cfg.num_steps, *shape), device=self.storage)
        vels = torch.empty_like(states)
        final = torch.empty((n, *shape))
        with torch.no_grad():
            for start in range(0, n, 2 * cfg.sample_batch_size):
                stop = min(n, start + 2 * cfg.sample_batch_size)

                def record(i, x, v, _start=start, _stop=stop):
                    states[_start:_stop, i], vels[_start:_stop, i] = x.to(self.storage), v.to(self.storage)

                x = self._sample(velocity, cond, rows, shape, sigmas, "copy", start, stop, on_step=record)
                final[start:stop] = x.cpu()
                self.progress("sample", stop, n)
        t.append(time.perf_counter())
        prompts = [self.prompts[i] for i in prompt_idx.tolist()]
        failures = RewardFailures()
        rewards, grads = [], []
        for start in range(0, n, cfg.decode_batch_size):
            chunk = final[start : start + cfg.decode_batch_size]
            try:
                r, g = self._reward_grad(chunk, prompts[start : start + cfg.decode_batch_size])
            except Exception as e:
                r, g = self.failed_call(e, chunk.shape[0], failures), torch.zeros_like(chunk)
            else:
                # A sample whose gradient is not finite cannot be used either: it counts as no reward.
                r = torch.where(torch.isfinite(g).flatten(1).all(dim=1), r, torch.full_like(r, float("nan")))
                self.record_scores(r, failures)
            rewards.append(r)
            grads.append(g)
        rewards, grad = torch.cat(rewards), torch.cat(grads)
        valid = torch.isfinite(rewards)
        bad = int((~valid).sum())
        self._check_drops(bad, n, failures, missing="gradient")
        grad = torch.where(valid.reshape(-1, *([1] * (grad.ndim - 1))), grad, torch.zeros_like(grad))
        t.append(time.perf_counter())

        # A virtual pair per sample: dx = delta * G / rms(G), so mean(dx^2) = delta^2 and the
        # exact first-order reward difference is dR = G . dx = delta * n * rms(G).
        dims = tuple(range(1, grad.ndim))
        rms = grad.pow(2).mean(dim=dims, keepdim=True).sqrt().clamp_min(1e-12)
        numel = grad[0].numel()
        dxn = grad / (cfg.grad_copy_delta * rms)
        dr = (cfg.grad_copy_delta * numel * rms).reshape(-1)
        items = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(cfg.num_steps), indexing="ij"), -1).reshape(-1, 2)
        items = items[torch.randperm(items.shape[0], generator=generator(cfg.seed, "copy-items", epoch))]
        items = items[valid[items[:, 0]]]  # samples without a reward are not trained on
        stats = ItemStats()
        for chunk in torch.tensor_split(items, cfg.optimizer_steps_per_epoch):
            for start in range(0, chunk.shape[0], cfg.train_batch_size):
                mb = chunk[start : start + cfg.train_batch_size]
                row, step = mb[:, 0], mb[:, 1]
                c = cond_to(cond_select(cond, rows[row]), self.device)
                v = velocity(states[row, step].to(self.device), sigmas[step].to(self.device), c)
                out = fdfo_loss(v, vels[row, step].to(self.device), dxn[row].to(self.device), dr[row].to(self.device),
                                clip_range=cfg.clip_range)
                self.scaler.scale(out.loss.sum() / chunk.shape[0]).backward()
                stats.add(out.loss, out.ratio, out.clipped, t=sigmas[step])
            stats.grad_norms.append(self.optimizer_step())
        t.append(time.perf_counter())
        return self._finish_with_drops(t, rewards, stats, bad, mean_abs_dr=float(dr[valid].abs().mean()),
                                       failures=failures)


class BackpropChainTrainer(_DifferentiableRewardTrainer):
    """method="backprop_chain": maximise the reward by back-propagating through every solver step."""

    def train_epoch(self) -> dict[str, Any]:
        cfg = self.config
        epoch = self.epoch
        t = [time.perf_counter()]
        n, prompt_idx, rows, cond, velocity, shape, sigmas = self._epoch_setup(epoch)
        prompts = [self.prompts[i] for i in prompt_idx.tolist()]
        batch = 2 * cfg.sample_batch_size
        starts = list(range(0, n, batch))
        groups = [starts[i::cfg.optimizer_steps_per_epoch] for i in range(min(cfg.optimizer_steps_per_epoch, len(starts)))]
        rewards = torch.empty(n, dtype=torch.float64)
        failures = RewardFailures()
        dropped = 0
        stats = ItemStats()
        for group in groups:
            for start in group:
                stop = min(n, start + batch)
                x = self._sample(velocity, cond, rows, shape, sigmas, "chain", start, stop)
                try:
                    with self.autocast():
                        images = self.backend.decode(x).float()
                    r = self.reward.score_differentiable(images.clamp(0, 1), prompts[start:stop])
                except Exception as e:
                    rewards[start:stop] = self.failed_call(e, stop - start, failures)
                    dropped += stop - start
                    continue
                rewards[start:stop] = r.detach().double().cpu()
                self.record_scores(rewards[start:stop], failures)
                if not bool(torch.isfinite(rewards[start:stop]).all()):
                    # A NaN anywhere in the batch would poison the shared LoRA gradient through the
                    # backward pass (0 * NaN): the whole batch sits this update out.
                    dropped += stop - start
                    continue
                loss = -r.sum() / n * len(groups)  # mean reward over the images of this update
                self.scaler.scale(loss).backward()
                # No ratio in this method: record minus the reward as the loss, with a neutral ratio of 1.
                stats.add(-r.detach(), torch.ones(stop - start), torch.zeros(stop - start, dtype=torch.bool))
                self.progress("train", stats.items, n)
            stats.grad_norms.append(self.optimizer_step())
        self._check_drops(dropped, n, failures)
        # Sampling, scoring and training are one differentiable pass here: all of it counts as training.
        return self._finish_with_drops((t[0], t[0], t[0], time.perf_counter()), rewards, stats, dropped, mean_abs_dr=0.0,
                                       failures=failures)
