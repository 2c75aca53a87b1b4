"""Simulated storage faults without root: rules that make `fdfo_core.files.storage` operations raise
the OSError a full, read-only or vanished file system raises (tests run as root, where chmod
stops nothing). Used through the `disk_faults` fixture (conftest.py)."""

from __future__ import annotations

import errno
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

ENOSPC, EROFS, EACCES, ENOENT = errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOENT


@dataclass
class Rule:
    ops: tuple[str, ...]
    pattern: str  # fnmatch pattern on the full path
    code: int
    after: int = 0  # let this many matching operations pass first
    seen: int = field(default=0)


class DiskFaults:
    """fault_hook for fdfo_core.files.storage: `fail("write", "*/checkpoint-00002.pt", ENOSPC)`."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.raised: list[tuple[str, str, int]] = []

    def fail(self, ops: str | tuple[str, ...], pattern: str, code: int = ENOSPC, after: int = 0) -> "DiskFaults":
        ops = (ops,) if isinstance(ops, str) else tuple(ops)
        self.rules.append(Rule(ops, pattern, code, after))
        return self

    def full(self, pattern: str, after: int = 0) -> "DiskFaults":
        """No space left for files matching `pattern` (the data write fails)."""
        return self.fail(("write", "sync", "append", "probe"), pattern, ENOSPC, after)

    def read_only(self, pattern: str) -> "DiskFaults":
        """Nothing can be created at `pattern` (files or folders)."""
        return self.fail(("mkdir", "create", "append", "probe"), pattern, EROFS)

    def clear(self) -> None:
        self.rules.clear()

    def __call__(self, operation: str, path: Path) -> None:
        for rule in self.rules:
            if operation in rule.ops and fnmatch.fnmatch(str(path), rule.pattern):
                rule.seen += 1
                if rule.seen > rule.after:
                    self.raised.append((operation, str(path), rule.code))
                    raise OSError(rule.code, os.strerror(rule.code), str(path))


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of atomic writes left anywhere under `folder` (there must be none)."""
    return sorted(Path(folder).rglob("*.fdfo-tmp")) if Path(folder).exists() else []
