"""What a front end hands the run loop (`Callbacks`) and the errors the run raises through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


class TrainingInterrupted(RuntimeError):
    """Raised through the loop when the user cancels (Ctrl-C, ComfyUI's Cancel)."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


class RunChangeRefused(TrainingError):
    """A resume would change what defines the run; the message lists each difference and how to
    proceed. `diffs`: the `definition.Difference` list."""

    def __init__(self, message: str, diffs: Sequence[Any]):
        super().__init__(message)
        self.diffs = list(diffs)


@dataclass
class Callbacks:
    """Hooks for front ends. All optional; the ComfyUI nodes and the CLI use the same loop."""

    #: (phase, done, total) with phase in {"sample", "reward", "train"}; called often, keep it cheap.
    on_progress: Callable[[str, int, int], None] | None = None
    #: Called after every epoch with its metrics (rank 0 and others alike).
    on_epoch_end: Callable[[Any, dict[str, Any]], None] | None = None  # (the run.trainer.RunLoop, metrics)
    #: Raise (e.g. TrainingInterrupted) to stop; called at least once per model call.
    check_cancel: Callable[[], None] | None = None
    #: Log lines (one per epoch and for notable events).
    log: Callable[[str], None] | None = print
