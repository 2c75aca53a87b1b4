"""The small interface between the FDFO core and a model framework.

The core (sampler, objective, trainer) only talks to a `FlowBackend`. Two implementations exist:
`fdfo_core.backends.diffusers_backend` (diffusers + peft; CLI and multi-GPU) and the ComfyUI
backend in `nodes/` (ComfyUI's own MODEL / CLIP / VAE and weight adapters).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Protocol, runtime_checkable

import torch

from ..flow.conditioning import Cond


class BackendError(RuntimeError):
    """A model cannot be used for FDFO training; the message says why and what to do."""


@runtime_checkable
class FlowBackend(Protocol):
    #: Model family written into LoRA metadata and checked on resume ("sd3", "flux", ...).
    family: str
    #: Device the velocity model runs on.
    device: torch.device

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, latent height, latent width) for an image of height x width pixels."""

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The model's own time grid: float32 [num_steps + 1], decreasing from ~1 to 0."""

    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Conditioning for each prompt (batch-first tensors), on `self.device`."""

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Velocity v(x, t) of the current model (adapter enabled unless inside `adapter_disabled`).

        x: float32 [B, C, h, w] latents; t: float32 [B] flow times in [0, 1]; returns float32 [B, C, h, w].
        """

    def adapter_disabled(self) -> ContextManager[None]:
        """Context in which `velocity` is the base model's (for KL and base-vs-LoRA comparisons)."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The adapter's parameters, fp32, requires_grad=True."""

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter weights in the backend's own naming (for checkpoints)."""

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def lora_file_tensors(self) -> dict[str, torch.Tensor]:
        """Adapter weights with ComfyUI-native keys (`diffusion_model.<module>.lora_up.weight`,
        `.lora_down.weight`, `.alpha`), ready for `fdfo_core.backends.lora_files.save_lora`."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """float32 images [B, 3, H, W] in [0, 1] from final latents."""

    def fingerprint(self) -> dict[str, str]:
        """What a checkpoint must match to be resumed on this model (family, adapter layout, ...)."""

    # Optional: `sampling_options() -> dict` with what sampling needs beyond the config (text
    # length, guidance-embedding value), written into LoRA metadata for `fdfo sample --lora`.


def nullcontext() -> ContextManager[None]:
    return contextlib.nullcontext()


class NamedAdapterParams:
    """The adapter half of a FlowBackend for backends that keep their trainable LoRA tensors in
    `self._params` (name -> parameter): both backends name them the same way, so checkpoints
    compare layouts by name."""

    _params: dict[str, torch.nn.Parameter]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self._params.values())

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self._params.items()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load `state` into the named adapter parameters, refusing any layout mismatch."""
        params = self._params
        missing = set(params) - set(state)
        extra = set(state) - set(params)
        if missing or extra:
            raise BackendError(
                f"adapter state does not match this model's LoRA layout ({len(missing)} missing, "
                f"{len(extra)} unexpected keys, e.g. {sorted(missing or extra)[0]!r})"
            )
        with torch.no_grad():
            for k, p in params.items():
                if state[k].shape != p.shape:
                    raise BackendError(f"adapter tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(p.shape)}")
                p.copy_(state[k].to(p))
