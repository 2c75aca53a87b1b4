"""Front ends on the command line: `fdfo` (`main`: the parser and the small commands; `train`:
`fdfo train`; `sample`: `fdfo sample`; `options`: what they share; also `python -m fdfo_core.cli`),
the toy demo (`demo`), the toy's pretraining script (`toy_pretrain`). Nothing else in fdfo_core
imports this package, and nodes/ does not either."""

from __future__ import annotations

import os
import sys
import time
from pathlib import PureWindowsPath
from typing import Callable

#: How idle OpenMP threads wait at the end of each parallel region (torch's CPU kernels), chosen
#: when this package is imported (before torch: OpenMP reads it once) unless the user set
#: OMP_WAIT_POLICY or GOMP_SPINCOUNT. GNU OpenMP's default spins ~300k iterations before sleeping:
#: with two torch threads on two cores that other processes also use, a thread burns its slice
#: spinning while its partner waits for a core, and the toy model's passes took 15-40x longer under
#: a load of 14 (issue 28, docs/benchmarks/speed.md). Sleeping at once ("PASSIVE") costs a wake-up
#: per region instead: the demo's first 3 epochs took 26 s idle against 20 s with short spins
#: (GOMP_SPINCOUNT=20000), while with 2 busy processes beside it PASSIVE took 32 s and the short
#: spins 48 s. So: short spins when the machine is idle at start, sleeping waits when it is busy.
#: The policy changes no result (the work is split the same way).
SPIN_WHEN_IDLE = {"GOMP_SPINCOUNT": "20000"}
SLEEP_WHEN_BUSY = {"OMP_WAIT_POLICY": "PASSIVE"}
#: Other processes' CPU use (in CPUs) below which the machine counts as idle.
IDLE_BELOW_CPUS = 0.5


def _cpu_times(read: Callable[[], str]) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat's first line."""
    fields = [int(v) for v in read().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def other_cpu_load(interval: float = 0.2, read: Callable[[], str] | None = None, sleep=time.sleep) -> float | None:
    """CPUs' worth of work the machine did over `interval` seconds while this process slept (Linux
    /proc/stat), or None where that cannot be read."""
    if read is None:
        def read() -> str:
            with open("/proc/stat") as f:
                return f.read()
    try:
        busy0, total0 = _cpu_times(read)
        sleep(interval)
        busy1, total1 = _cpu_times(read)
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def choose_wait_policy(environ=os.environ, load: Callable[[], float | None] = other_cpu_load) -> dict[str, str]:
    """The OpenMP wait settings to add to `environ` (none where the user set one): short spins
    on an idle machine, sleeping waits on a busy one or where the load cannot be read."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    busy = load()
    return dict(SPIN_WHEN_IDLE if busy is not None and busy < IDLE_BELOW_CPUS else SLEEP_WHEN_BUSY)


#: `fdfo` commands that run no model (and `fdfo` alone, -h, --help): they skip the 0.2 s
#: load reading, since no OpenMP region of theirs is long enough for the wait policy to matter.
LIGHT_COMMANDS = frozenset({"", "-h", "--help", "rewards", "convert-lora"})


def fdfo_subcommand(argv: list[str]) -> str | None:
    """The `fdfo` subcommand this process runs (`argv` = sys.argv; "" for `fdfo` alone), or None when
    the program is not the `fdfo` entry point, `python -m fdfo_core.cli` or `python -m
    fdfo_core.cli.main` (a script, a test, a benchmark importing this package). Read here, before the parser exists, because OpenMP and
    torch read their settings before any command code runs."""
    program = PureWindowsPath(argv[0] if argv else "")  # / and \\ both split
    if program.stem != "fdfo" and tuple(program.parts[-2:]) not in (("cli", "__main__.py"), ("cli", "main.py")):
        return None  # not fdfo, fdfo.exe, python -m fdfo_core.cli or python -m fdfo_core.cli.main
    return argv[1] if len(argv) > 1 else ""


def is_light_command(argv: list[str]) -> bool:
    """True for `fdfo` invocations that run no model (`LIGHT_COMMANDS`); any other program importing
    this package gets the policy chosen as for a model-running command."""
    return fdfo_subcommand(argv) in LIGHT_COMMANDS


OPENMP_WAIT = {} if is_light_command(sys.argv) else choose_wait_policy()
os.environ.update(OPENMP_WAIT)

#: `fdfo demo` pins torch's CPU kernels to one instruction set, so that it prints the README's
#: figures on any x86 CPU with AVX2 (Intel or AMD): the kernels torch, MKL and oneDNN pick for the
#: CPU (AVX2, AVX-512, ...) sum in different orders, and the demo's figures moved with the machine
#: (the same code gave 0.7471 on the issue's machine and 0.7406 on an AVX2 VM, where 1 and 2 threads
#: gave the same bits; docs/benchmarks/speed.md). Read by torch before its first CPU kernel, so set
#: here, on the command's name; a variable the user set is kept.
REPRODUCIBLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_flags(read: Callable[[], str] | None = None) -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        if read is None:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        else:
            text = read()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def pinned_kernels(argv: list[str], environ=os.environ, flags: Callable[[], set[str]] = cpu_flags) -> dict[str, str]:
    """The kernel settings to add for this command: `REPRODUCIBLE_KERNELS` for `fdfo demo` (the entry
    point or `python -m fdfo_core.cli demo`) on a CPU with AVX2 (less those the user set), nothing
    otherwise."""
    if fdfo_subcommand(argv) != "demo" or "avx2" not in flags():
        return {}
    return {k: v for k, v in REPRODUCIBLE_KERNELS.items() if k not in environ}


PINNED_KERNELS = pinned_kernels(sys.argv)
os.environ.update(PINNED_KERNELS)


def wait_policy_text() -> str:
    """One line for a run's log: which OpenMP wait policy this process runs with, and why."""
    if OPENMP_WAIT == SPIN_WHEN_IDLE:
        return "OpenMP waits: short spins (the machine was idle at start)"
    if OPENMP_WAIT == SLEEP_WHEN_BUSY:
        return "OpenMP waits: sleeping (the machine was busy at start, or its load unreadable)"
    given = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    return "OpenMP waits: " + (", ".join(f"{k}={v}" for k, v in given.items()) or "OpenMP's default") + " (as set)"


def kernels_text() -> str:
    """One line for the demo's log: whether its CPU kernels are pinned (REPRODUCIBLE_KERNELS)."""
    if PINNED_KERNELS or all(os.environ.get(k) == v for k, v in REPRODUCIBLE_KERNELS.items()):
        return "CPU kernels pinned to AVX2 (the README's figures on any AVX2 CPU)"
    return ("CPU kernels as the machine picks them (no AVX2, or set otherwise): the figures may differ "
            "from the README's within their standard error")
