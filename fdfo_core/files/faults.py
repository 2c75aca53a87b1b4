"""Crash injection for the kill -9 tests: the process SIGKILLs itself at a chosen point.

Set FDFO_TEST_KILL_AT to a comma-separated list of points:
    sample@E   during the paired sampling of epoch E (1-based), after its first batch
    train@E    during the training phase of epoch E, after its first optimizer step
    write:NAME while writing the file NAME (e.g. write:checkpoint-00003.pt): the temporary file is
               written but not yet renamed into place
Unset (always, outside tests), every call is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "FDFO_TEST_KILL_AT"


def kill_point(phase: str, where: object) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    here = f"{phase}:{where}" if phase == "write" else f"{phase}@{where}"
    if here in (s.strip() for s in spec.split(",")):
        sig = getattr(signal, "SIGKILL", None)
        if sig is None:  # pragma: no cover (Windows)
            os._exit(137)
        os.kill(os.getpid(), sig)
