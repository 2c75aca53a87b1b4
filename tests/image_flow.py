"""A tiny image flow backend (3x4x4 latents, a low-rank adapter) that trains in milliseconds.

For tests of the loop's bookkeeping (run records, resume, storage faults) and of the Trainer
node without ComfyUI: it has the FlowBackend interface plus the ComfyBackend constructor and
session() the node uses. Images are sigmoid(latent), so the weight-free rewards score them.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
from torch import nn

from fdfo_core.flow.schedules import flow_sigmas

D = 48  # 3 x 4 x 4


def _seeded(seed_text: str) -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:7], "little"))


class ImageFlowBackend:
    family = "imageflow"
    device = torch.device("cpu")

    def __init__(self, model=None, clip=None, vae=None, config=None, **kwargs):
        # model: {"seed": int} stands for the base weights (another seed = another model)
        self.model_seed = int((model or {}).get("seed", 0))
        self.config = config
        g = torch.Generator().manual_seed(self.model_seed)
        self.base = torch.randn(D, D, generator=g) * (0.3 / D**0.5)
        rank = config.lora_rank
        # the adapter's init follows the run's seed, as the real backends' does
        self.lora_A = nn.Parameter(torch.randn(rank, D, generator=_seeded(f"{config.seed}:lora")) / D**0.5)
        self.lora_B = nn.Parameter(torch.zeros(D, rank))
        self.scale = config.lora_alpha / rank
        self.enabled = True
        self.open_sessions = 0

    @contextlib.contextmanager
    def session(self, train: bool):
        self.open_sessions += 1
        try:
            yield self
        finally:
            self.open_sessions -= 1

    def latent_shape(self, height, width):
        return (3, 4, 4)

    def sigmas(self, num_steps, height, width):
        return flow_sigmas(num_steps)

    def encode_prompts(self, prompts):
        return {"emb": torch.stack([torch.randn(D, generator=_seeded(p)) * 0.5 for p in prompts])}

    def velocity(self, x, t, cond):
        flat = x.reshape(x.shape[0], D)
        v = flat @ self.base - flat + cond["emb"].to(flat)
        if self.enabled:
            v = v + (flat @ self.lora_A.T) @ self.lora_B.T * self.scale
        return v.reshape(x.shape)

    @contextlib.contextmanager
    def adapter_disabled(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def trainable_parameters(self):
        return [self.lora_A, self.lora_B]

    def adapter_state_dict(self):
        return {"lora_A": self.lora_A.detach(), "lora_B": self.lora_B.detach()}

    def load_adapter_state_dict(self, state):
        from fdfo_core.backends.interface import BackendError

        for k, p in (("lora_A", self.lora_A), ("lora_B", self.lora_B)):
            if state[k].shape != p.shape:
                raise BackendError(f"adapter tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(state[k])

    def lora_file_tensors(self):
        return {"diffusion_model.proj.lora_down.weight": self.lora_A.detach().clone(),
                "diffusion_model.proj.lora_up.weight": self.lora_B.detach().clone(),
                "diffusion_model.proj.alpha": torch.tensor(float(self.config.lora_alpha))}

    def decode(self, latents):
        return torch.sigmoid(latents.float() * 2)

    def fingerprint(self):
        return {"family": self.family, "weights": f"seed{self.model_seed}",
                "lora": f"rank={self.config.lora_rank} alpha={self.config.lora_alpha:g}"}


def tiny_config(**changes):
    from fdfo_core.config import FDFOConfig

    values = dict(pairs_per_epoch=4, num_steps=4, epochs=3, sample_batch_size=4, train_batch_size=32,
                  decode_batch_size=8, optimizer_steps_per_epoch=2, checkpoint_every=1, churn_strength=0.05,
                  lr=5e-2, lora_rank=2, lora_alpha=2.0, height=16, width=16)
    values.update(changes)
    return FDFOConfig(**values).validate()
