"""A 2-D flow for sign and normalisation checks (ALGORITHM.md, "A sanity check of the signs").

An MLP velocity field is pretrained by flow matching on a ring of 8 Gaussians; the backend
exposes it to the FDFO trainer with a zero-initialised additive "adapter" MLP, and the reward
is minus the distance to one mode.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from fdfo_core.flow.schedules import flow_sigmas

RADIUS = 2.0
MODE = torch.tensor([RADIUS, 0.0])


def ring_samples(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g).float()
    angle = 2 * math.pi * k / 8
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * RADIUS
    return centres + 0.1 * torch.randn(n, 2, generator=g)


class VelocityMLP(nn.Module):
    def __init__(self, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], 1))


def pretrain(steps: int = 1500, seed: int = 0) -> VelocityMLP:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = VelocityMLP()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        x0 = ring_samples(512, g)
        eps = torch.randn(512, 2, generator=g)
        t = torch.rand(512, generator=g)
        xt = (1 - t[:, None]) * x0 + t[:, None] * eps
        loss = (model(xt, t) - (eps - x0)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


class PointBackend:
    """FlowBackend over a 2-D point flow: latents are [B, 2, 1, 1], 'images' are the points."""

    family = "flow2d"
    device = torch.device("cpu")

    def __init__(self, base: VelocityMLP, seed: int = 0):
        self.base = base
        torch.manual_seed(seed)
        self.delta = VelocityMLP(64)
        nn.init.zeros_(self.delta.net[-1].weight)
        nn.init.zeros_(self.delta.net[-1].bias)
        self.enabled = True

    def latent_shape(self, height, width):
        return (2, 1, 1)

    def sigmas(self, num_steps, height, width):
        return flow_sigmas(num_steps)

    def encode_prompts(self, prompts):
        return {"dummy": torch.zeros(len(prompts), 1)}

    def velocity(self, x, t, cond):
        p = x.reshape(x.shape[0], 2)
        v = self.base(p, t)
        if self.enabled:
            v = v + self.delta(p, t)
        return v.reshape(x.shape)

    @contextlib.contextmanager
    def adapter_disabled(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def trainable_parameters(self):
        return list(self.delta.parameters())

    def adapter_state_dict(self):
        return {k: v.detach() for k, v in self.delta.state_dict().items()}

    def load_adapter_state_dict(self, state):
        self.delta.load_state_dict(state)

    def lora_file_tensors(self):
        return {f"diffusion_model.delta.{k}": v for k, v in self.delta.state_dict().items()}

    def decode(self, latents):
        return latents.reshape(latents.shape[0], 2)

    def fingerprint(self):
        return {"family": self.family}


class MinusDistance:
    """Reward = -|x - mode| (or its negation, to check that the sign matters)."""

    name = "minus_distance"
    differentiable = True

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def __call__(self, points, prompts):
        return self.sign * -(points - MODE).norm(dim=1)

    def score_differentiable(self, points, prompts):
        return self(points, prompts)

    def describe(self):
        return self.name


@torch.no_grad()
def mean_reward(backend: PointBackend, n: int = 2048, steps: int = 20, seed: int = 123) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 1, 1, generator=g)
    sig = flow_sigmas(steps)
    for i in range(steps):
        t = sig[i].expand(n)
        x = x + (sig[i + 1] - sig[i]) * backend.velocity(x, t, None)
    return float(MinusDistance()(x.reshape(n, 2), None).mean())
