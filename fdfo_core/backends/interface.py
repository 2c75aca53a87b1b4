"""The small interface between the FDFO core and a model framework.

The core (sampler, objective, trainer) only talks to a `FlowBackend`. Two implementations exist:
`fdfo_core.backends.diffusers_backend` (diffusers + peft; CLI and multi-GPU) and the ComfyUI
backend in `nodes/` (ComfyUI's own MODEL / CLIP / VAE and weight adapters).
"""

from __future__ import annotations

import contextlib
import hashlib
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


#: The scheme of `weights_digest`, written before the hash ("e4m3:1a2b...") so that a digest of
#: another scheme (older records hashed the weights as stored) is recognised as such.
WEIGHTS_DIGEST_SCHEME = "e4m3"


def weights_digest(weight: torch.Tensor) -> str:
    """A digest of a frozen weight that does not depend on how it is stored: the weight rounded
    to bf16 and then to float8 e4m3 (round to nearest even), hashed; e.g. "e4m3:1a2b3c4d5e6f7a8b".

    Storage precision is a setting a run may change on resume (fp8 base weights, a ComfyUI
    loader's fp8_e4m3fn weight dtype, bf16 on a GPU, fp32 on a CPU): a weight loaded from a bf16 /
    fp16 / fp8 e4m3 file gives the same digest in each, because rounding to e4m3 is idempotent and
    the grids nest (e4m3 is coarser than bf16 and fp16). Not covered: weights stored as fp8 e5m2
    (2 mantissa bits: rounding back to e4m3 cannot recover them), and, rarely, an fp32 file cast
    to fp8 directly by a loader (double rounding moves a few weights on ties).
    Cost: two weights closer than e4m3's rounding (~6 % relative) look equal.
    """
    w = weight.detach().cpu()
    if w.dtype != torch.float8_e4m3fn:
        w = w.to(torch.bfloat16).to(torch.float8_e4m3fn)
    data = w.contiguous().view(torch.uint8).numpy().tobytes()
    shape = "x".join(str(n) for n in w.shape).encode()
    return f"{WEIGHTS_DIGEST_SCHEME}:{hashlib.sha256(shape + b'|' + data).hexdigest()[:16]}"


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
