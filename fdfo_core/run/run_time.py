"""How long a run will take: an estimate before the first epoch, the measured time left after each.

The estimate counts the transformer passes a run makes and prices one pass by measuring it:

- an epoch samples 2 x pairs images x num_steps steps (x 2 with CFG: the unconditional pass), and
  trains on 2 x pairs x trained steps items (`steps_per_sample`, else every step), each a forward
  and a backward pass: about 3 forward passes' work (the backward pass costs about twice the
  forward, Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1), 4 with gradient
  checkpointing (the forward runs again), plus one more with the KL term (the base model's velocity);
- the held-out evaluation samples eval_prompt_count x eval_seeds images every eval_every epochs, at
  the last epoch and once for the base model;
- one pass is timed on the model, device and image size of the run (`probe_forward_seconds`: a
  no-grad velocity call at the sampling batch, after one warm-up call), so the card, the precision,
  offloading and the attention kernels are all in the price. Decoding and the reward are not
  counted (a few per cent at the published size; more on tiny models).

The parameter count (`fdfo_core.backends.memory.parameter_count`) and the pass's tokens give the work in
FLOP (2 x parameters x tokens per image and pass, the matmul count of a transformer's forward;
attention's quadratic term is left out), and with the measured time the device's achieved
throughput: both are printed with the estimate so it can be checked against the card's datasheet.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


def format_duration(seconds: float) -> str:
    """"2 h 05 min", "3 min 10 s", "12 s"."""
    if not math.isfinite(seconds):
        return "unknown"
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600} h {(s % 3600) // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


@dataclass(frozen=True)
class RunTimeEstimate:
    """Seconds of the remaining run by phase (an estimate; see the module docstring)."""

    sampling: float
    training: float
    evaluation: float
    forward_seconds: float  # one forward pass of one image (measured)
    epochs: int  # epochs still to run
    parameters: int | None = None
    tokens: int | None = None

    @property
    def total(self) -> float:
        return self.sampling + self.training + self.evaluation

    @property
    def flop_per_pass(self) -> float | None:
        """2 x parameters x tokens: the matmul work of one image's forward pass."""
        return 2.0 * self.parameters * self.tokens if self.parameters and self.tokens else None

    def line(self) -> str:
        parts = [f"sampling {format_duration(self.sampling)}", f"training {format_duration(self.training)}"]
        if self.evaluation:
            parts.append(f"held-out evaluation {format_duration(self.evaluation)}")
        basis = f"{self.forward_seconds * 1e3:.3g} ms per image and forward pass, measured on this device"
        flop = self.flop_per_pass
        if flop is not None:
            basis += (f"; {self.parameters / 1e9:.3g} B parameters x {self.tokens} tokens = {flop / 1e12:.3g} TFLOP per "
                      f"pass, {flop / self.forward_seconds / 1e12:.3g} TFLOP/s achieved")
        return (f"expected time for {self.epochs} epoch(s): about {format_duration(self.total)} (an estimate: "
                f"{', '.join(parts)}; {basis}; decoding and the reward not counted). The measured time left "
                "follows after each epoch.")


def training_passes_per_item(gradient_checkpointing: bool, kl_weight: float) -> float:
    """Forward-pass equivalents of one training item: forward + backward (3), the forward again with
    gradient checkpointing (+1), the base model's velocity for the KL term (+1)."""
    return 3.0 + (1.0 if gradient_checkpointing else 0.0) + (1.0 if kl_weight > 0 else 0.0)


def evaluations_left(epoch: int, epochs: int, eval_every: int, base_done: bool) -> int:
    """Held-out evaluations still to run from completed epoch `epoch` to `epochs`: every eval_every
    epochs and at the last one, plus the base model's when it has not run yet."""
    if not eval_every or epoch >= epochs:
        return 0
    due = {e for e in range(epoch + 1, epochs + 1) if e % eval_every == 0} | {epochs}
    return len(due) + (0 if base_done else 1)


def estimate_run(config: Any, forward_seconds: float, epoch: int = 0, base_evaluated: bool = False,
                 parameters: int | None = None, tokens: int | None = None) -> RunTimeEstimate:
    """The remaining run's time from one forward pass's measured seconds per image (see the module
    docstring). `config`: an FDFOConfig (pairs, steps, CFG, steps_per_sample, gradient checkpointing,
    KL weight, held-out evaluation); `epoch`: completed epochs."""
    epochs = max(0, config.epochs - epoch)
    cfg_factor = 2.0 if config.cfg_scale != 1.0 else 1.0
    images = 2 * config.pairs_per_epoch
    trained_steps = config.steps_per_sample or config.num_steps
    sampling = epochs * images * config.num_steps * cfg_factor * forward_seconds
    training = (epochs * images * trained_steps * forward_seconds
                * training_passes_per_item(config.gradient_checkpointing, config.kl_weight))
    evals = evaluations_left(epoch, config.epochs, config.eval_every, base_evaluated)
    evaluation = evals * config.eval_prompt_count * config.eval_seeds * config.num_steps * cfg_factor * forward_seconds
    return RunTimeEstimate(sampling, training, evaluation, forward_seconds, epochs, parameters, tokens)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def probe_forward_seconds(velocity: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], cond: Any,
                          latent_shape: tuple[int, ...], batch: int, device: torch.device,
                          select: Callable[[Any, torch.Tensor], Any]) -> float:
    """Seconds per image of one no-grad velocity call at `batch` images (the second of two calls, so
    one-time set-up such as loading weights or choosing kernels is not counted). Draws its noise
    from its own generator: the run's random state is untouched."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *latent_shape), generator=g).to(device)
    t = torch.full((batch,), 0.5, device=device)
    c = select(cond, torch.zeros(batch, dtype=torch.long))
    velocity(x, t, c)  # warm-up
    _sync(device)
    start = time.perf_counter()
    velocity(x, t, c)
    _sync(device)
    return (time.perf_counter() - start) / batch


def seconds_left(epoch_seconds: list[float], remaining: int) -> float:
    """The time left at the mean pace of the epochs measured so far (in this session)."""
    if not epoch_seconds:
        return math.nan
    return remaining * sum(epoch_seconds) / len(epoch_seconds)


__all__ = ["RunTimeEstimate", "estimate_run", "evaluations_left", "format_duration", "probe_forward_seconds",
           "seconds_left", "training_passes_per_item"]
