"""Where an epoch's time goes: phase clocks and the bare model passes (shared by profile_epoch.py
and overhead.py; not a test, not part of the library).

`PhaseClock.install()` wraps, at class level, the calls an FDFO run makes (sampling, decode,
reward, the training passes, the optimizer step, checkpoints, LoRA files, the held-out
evaluation (the demo's figures are the run's own), previews, text encoding, the time estimate) and charges
each call's wall time (`time.perf_counter`) and CPU time of the whole process
(`time.process_time`: every thread's) to its phase, *exclusively*: a call nested in another (a
velocity call inside the sampler, a LoRA write inside the held-out evaluation) is charged to
its own phase, never twice. Model passes are charged to "<caller>: model passes" so that the
table shows each phase's passes next to the work around them.

While installed it also records the shape of every model pass (velocity with or without grad,
backward, decode); `replay_passes` runs exactly those passes again on random inputs, with no
sampler, reward, optimizer, files or bookkeeping around them: the *bare model passes* the
epochs needed.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

#: Phases in the order of the table (others, if any, follow).
ORDER = (
    "sampling: model passes", "sampling: sampler", "decoding", "reward", "scoring: rest",
    "training: forward", "training: backward", "training: loss and rest", "optimizer",
    "checkpoints", "LoRA files", "held-out evaluation: model passes", "held-out evaluation: decode",
    "held-out evaluation: reward", "held-out evaluation: rest", "previews: model passes", "previews: rest",
    "text encoding", "time estimate", "loop: rest",
)

#: A call's phase given the phase it runs inside (model passes and decodes take the caller's name).
PASS_OWNER = {
    "sampling: sampler": "sampling: model passes",
    "training: loss and rest": "training: forward",
    "held-out evaluation: rest": "held-out evaluation: model passes",
    "previews: rest": "previews: model passes",
}
DECODE_OWNER = {
    "held-out evaluation: rest": "held-out evaluation: decode",
    "previews: rest": "previews: rest",
}


@dataclass
class Pass:
    """One model pass to replay: kind "velocity" (grad or not, adapter on or off), "backward"
    (of the preceding grad velocity), or "decode"; `shape`: its input's shape."""

    kind: str
    shape: tuple[int, ...]
    grad: bool = False
    adapter: bool = True
    phase: str = ""  # the phase it was charged to


@dataclass
class PhaseClock:
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    passes: list[Pass] = field(default_factory=list)
    record: bool = True
    _stack: list[list] = field(default_factory=list)  # [phase, wall0, cpu0, child wall, child cpu]
    _undo: list[Callable[[], None]] = field(default_factory=list)
    _adapter_off: int = 0

    # --- the clock ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def phase(self, name: str):
        frame = [name, time.perf_counter(), time.process_time(), 0.0, 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            dw, dc = time.perf_counter() - frame[1], time.process_time() - frame[2]
            self.wall[name] = self.wall.get(name, 0.0) + dw - frame[3]
            self.cpu[name] = self.cpu.get(name, 0.0) + dc - frame[4]
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._stack:
                self._stack[-1][3] += dw
                self._stack[-1][4] += dc

    def current(self) -> str | None:
        return self._stack[-1][0] if self._stack else None

    def reset(self) -> None:
        self.wall.clear(), self.cpu.clear(), self.calls.clear(), self.passes.clear()

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        return dict(self.wall), dict(self.cpu)

    # --- wrapping -------------------------------------------------------------------------------

    def wrap(self, owner: Any, attr: str, name: str | Callable[[], str]) -> None:
        original = owner.__dict__[attr]
        clock = self

        def wrapper(*args, **kwargs):
            with clock.phase(name() if callable(name) else name):
                return original(*args, **kwargs)

        setattr(owner, attr, wrapper)
        self._undo.append(lambda: setattr(owner, attr, original))

    def install(self) -> "PhaseClock":
        """Wrap the run's calls (class level: every trainer, backend and reward made afterwards too)."""
        from fdfo_core.backends.diffusers_backend import DiffusersBackend
        from fdfo_core.methods.fdfo import FDFOTrainer
        from fdfo_core.rewards.base import Reward
        from fdfo_core.run.guardrails import Guardrails
        from fdfo_core.run.trainer import RunLoop

        clock = self
        self.wrap(FDFOTrainer, "sample_epoch", "sampling: sampler")
        self.wrap(FDFOTrainer, "score", "scoring: rest")
        self.wrap(FDFOTrainer, "train_on", "training: loss and rest")
        self.wrap(RunLoop, "optimizer_step", "optimizer")
        self.wrap(RunLoop, "save_checkpoint", "checkpoints")
        self.wrap(RunLoop, "save_lora", "LoRA files")
        self.wrap(RunLoop, "estimate_time", "time estimate")
        self.wrap(RunLoop, "train", "loop: rest")
        self.wrap(Guardrails, "start", "held-out evaluation: rest")
        self.wrap(Guardrails, "after_epoch", "held-out evaluation: rest")
        self.wrap(Reward, "__call__", lambda: {"held-out evaluation: rest": "held-out evaluation: reward"}.get(
            clock.current(), "reward"))
        self.wrap(DiffusersBackend, "encode_prompts", "text encoding")
        # front ends: `fdfo train`'s previews (generate_images outside the evaluations)
        from fdfo_core.backends import generation

        generate = generation.generate_images

        def generate_wrapper(*args, **kwargs):
            if clock.current() in (None, "loop: rest"):
                with clock.phase("previews: rest"):
                    return generate(*args, **kwargs)
            return generate(*args, **kwargs)

        generation.generate_images = generate_wrapper
        self._undo.append(lambda: setattr(generation, "generate_images", generate))

        velocity = DiffusersBackend.__dict__["velocity"]
        decode = DiffusersBackend.__dict__["decode"]
        adapter_disabled = DiffusersBackend.adapter_disabled

        def velocity_wrapper(backend, x, t, cond):
            outer = clock.current()
            name = PASS_OWNER.get(outer, f"{outer}: model passes" if outer else "model passes")
            with clock.phase(name):
                out = velocity(backend, x, t, cond)
            if clock.record:
                clock.passes.append(Pass("velocity", tuple(x.shape), torch.is_grad_enabled(), clock._adapter_off == 0,
                                         name))
            if out.requires_grad:  # its backward is a model pass too
                out.register_hook(lambda g, shape=tuple(x.shape): clock._backward_hook(g, shape))
            return out

        def decode_wrapper(backend, latents):
            outer = clock.current()
            name = DECODE_OWNER.get(outer, "decoding")
            with clock.phase(name):
                out = decode(backend, latents)
            if clock.record:
                clock.passes.append(Pass("decode", tuple(latents.shape), phase=name))
            return out

        @contextlib.contextmanager
        def adapter_disabled_wrapper(backend):
            clock._adapter_off += 1
            try:
                with adapter_disabled(backend):
                    yield
            finally:
                clock._adapter_off -= 1

        for attr, fn in (("velocity", velocity_wrapper), ("decode", decode_wrapper),
                         ("adapter_disabled", adapter_disabled_wrapper)):
            original = DiffusersBackend.__dict__.get(attr)
            setattr(DiffusersBackend, attr, fn)
            self._undo.append(lambda a=attr, o=original: setattr(DiffusersBackend, a, o) if o is not None
                              else delattr(DiffusersBackend, a))
        backward = torch.Tensor.backward

        def backward_wrapper(tensor, *args, **kwargs):
            with clock.phase("training: backward"):
                return backward(tensor, *args, **kwargs)

        torch.Tensor.backward = backward_wrapper
        self._undo.append(lambda: setattr(torch.Tensor, "backward", backward))
        return self

    def _backward_hook(self, grad, shape):
        if self.record:
            self.passes.append(Pass("backward", shape, phase="training: backward"))
        return grad

    def wrap_function(self, module: Any, attr: str, name: str) -> None:
        original = getattr(module, attr)
        clock = self

        def wrapper(*args, **kwargs):
            with clock.phase(name):
                return original(*args, **kwargs)

        setattr(module, attr, wrapper)
        self._undo.append(lambda: setattr(module, attr, original))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    # --- the table ------------------------------------------------------------------------------

    def table(self, title: str, per: int = 1, wall_total: float | None = None, cpu_total: float | None = None,
              bare: tuple[float, float] | None = None) -> str:
        """Phases with wall s, CPU s (per `per` epochs) and share of the wall time; `wall_total`:
        the measured total (the rest is "unattributed"); `bare`: the bare passes' (wall, CPU)."""
        names = [n for n in ORDER if n in self.wall] + sorted(set(self.wall) - set(ORDER))
        wall = dict(self.wall)
        cpu = dict(self.cpu)
        if wall_total is not None:
            wall["unattributed"] = wall_total - sum(self.wall.values())
            cpu["unattributed"] = (cpu_total or 0.0) - sum(self.cpu.values())
            names.append("unattributed")
        total_w = sum(wall[n] for n in names)
        total_c = sum(cpu[n] for n in names)
        lines = [title, f"  {'phase':36s} {'wall s':>8s} {'CPU s':>8s} {'share':>6s} {'CPU/wall':>8s}"]
        for n in names:
            w, c = wall[n] / per, cpu[n] / per
            lines.append(f"  {n:36s} {w:8.3f} {c:8.3f} {wall[n] / total_w:6.1%} {c / w if w > 0 else 0:8.2f}")
        passes_w = sum(wall[n] for n in names if n.endswith("model passes") or n.endswith("decode")
                       or n in ("decoding", "training: forward", "training: backward"))
        lines.append(f"  {'total':36s} {total_w / per:8.3f} {total_c / per:8.3f} {1:6.1%} {total_c / total_w:8.2f}")
        lines.append(f"  model passes inside the run (velocity, backward, decode): {passes_w / per:.3f} s wall "
                     f"({passes_w / total_w:.1%})")
        if bare is not None:
            lines.append(f"  the same passes replayed bare: {bare[0] / per:.3f} s wall, {bare[1] / per:.3f} s CPU; "
                         f"run / bare = {total_w / bare[0]:.3f} (wall), {total_c / bare[1]:.3f} (CPU)")
        return "\n".join(lines)


def replay_passes(backend, passes: list[Pass], cond_of: Callable[[int], dict]) -> tuple[float, float]:
    """Run `passes` again (random inputs, the recorded shapes; no sampler, reward, optimizer or
    files): returns (wall s, CPU s). `cond_of(b)`: conditioning for a batch of b."""
    params = backend.trainable_parameters()
    w0, c0 = time.perf_counter(), time.process_time()
    pending = []
    for p in passes:
        if p.kind == "velocity":
            x = torch.randn(p.shape)
            t = torch.rand(p.shape[0])
            ctx = contextlib.nullcontext() if p.adapter else backend.adapter_disabled()
            with ctx, torch.set_grad_enabled(p.grad):
                v = backend.velocity(x, t, cond_of(p.shape[0]))
            if p.grad:
                pending.append(v)
        elif p.kind == "backward":
            v = pending.pop(0) if pending else None
            if v is not None:
                v.square().mean().backward()
        elif p.kind == "decode":
            with torch.no_grad():
                backend.decode(torch.randn(p.shape))
    for q in params:
        q.grad = None
    return time.perf_counter() - w0, time.process_time() - c0


def spread(xs: list[float]) -> str:
    """median [min, max] of a list of seconds."""
    return f"{statistics.median(xs):.3f} [{min(xs):.3f}, {max(xs):.3f}]"


def busy(stop) -> None:
    """A competing load for the benchmarks' loaded runs: one core's worth of pure Python until
    `stop` (a multiprocessing Event) is set."""
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x += i * i
