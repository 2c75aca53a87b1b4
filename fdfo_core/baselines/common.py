"""Pieces the baselines share with each other (not with FDFO's paired loop)."""

from __future__ import annotations

import torch


@torch.no_grad()
def score_latents(trainer, final: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Decode final latents [N, C, h, w] in `decode_batch_size` chunks and score them: float64 [N] on the CPU
    (non-finite rewards are passed through; the caller decides what to drop)."""
    out = []
    for start in range(0, final.shape[0], trainer.config.decode_batch_size):
        trainer._cancel_point()
        stop = min(final.shape[0], start + trainer.config.decode_batch_size)
        with trainer._autocast():
            images = trainer.backend.decode(final[start:stop].to(trainer.device)).float()
        out.append(trainer.reward(images, prompts[start:stop]).double().cpu())
        trainer._progress("reward", stop, final.shape[0])
    return torch.cat(out)
