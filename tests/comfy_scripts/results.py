"""The `RESULT <json>` lines that the scripts run in ComfyUI's interpreter print (one per check),
read back on the pytest side. One parser for every ComfyUI-gated suite (nodes, recognition,
families, browser, picks, pick gestures)."""

from __future__ import annotations

import json
import subprocess
from typing import Callable

import pytest

PREFIX = "RESULT "


def parse_results(stdout: str) -> list[dict]:
    """Every `RESULT <json>` line of a script's standard output, decoded, in order.

    Raises:
        ValueError: a RESULT line whose payload is not JSON (names the line).
    """
    found = []
    for line in stdout.splitlines():
        if line.startswith(PREFIX):
            try:
                found.append(json.loads(line[len(PREFIX):]))
            except json.JSONDecodeError as e:
                raise ValueError(f"a RESULT line is not JSON ({e}): {line[:300]}") from None
    return found


def failure_text(proc: subprocess.CompletedProcess, what: str, extra: str = "") -> str:
    """What to show when a script gave no result: its exit status and the ends of its output."""
    text = f"{what} printed no result (exit {proc.returncode}):\n{(proc.stdout or '')[-3000:]}\n{(proc.stderr or '')[-5000:]}"
    return f"{text}\n{extra}" if extra else text


def script_results(proc: subprocess.CompletedProcess, key: Callable[[dict], object] | str | None = None,
                   what: str = "the ComfyUI script", extra: str = "") -> dict | list[dict]:
    """The results of a finished script: a dict keyed by `key` (a field name, or a function of the
    result), or the list itself when `key` is None. Fails the test, with the script's exit status
    and output tails (and `extra`, e.g. the server log), when the script printed no result."""
    found = parse_results(proc.stdout or "")
    if not found:
        pytest.fail(failure_text(proc, what, extra))
    if key is None:
        return found
    get = (lambda r: r[key]) if isinstance(key, str) else key
    return {get(r): r for r in found}
