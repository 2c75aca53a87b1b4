"""OpenMP wait settings on idle and loaded cores: why the command line spins briefly on an idle
machine and sleeps on a busy one (fdfo_core/cli/__init__.py, docs/benchmarks/speed.md).

Runs a short `fdfo demo` (3 epochs of 16 pairs, 4 held-out captions) in a fresh process per
setting, first on the machine as it is, then with `--load N` competing busy processes, and prints
the wall and CPU seconds the demo reports. Run it with nothing else on the machine.

    python benchmarks/wait_policy.py [--repeats 2] [--load 2]
    python benchmarks/wait_policy.py --smoke     # one tiny run per setting: checks the script
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from epoch_phases import busy  # noqa: E402  (the benchmarks' competing load)

SETTINGS = {
    "OMP_WAIT_POLICY=PASSIVE (sleep at once)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_WAIT_POLICY=ACTIVE (GNU's default spin)": {"OMP_WAIT_POLICY": "ACTIVE"},
    "GOMP_SPINCOUNT=2000": {"GOMP_SPINCOUNT": "2000"},
    "GOMP_SPINCOUNT=20000": {"GOMP_SPINCOUNT": "20000"},
}
#: Under load GNU's default spin is known to be 15-40x slower (speed.md): not rerun there.
SKIP_UNDER_LOAD = ("OMP_WAIT_POLICY=ACTIVE (GNU's default spin)",)


def demo_seconds(env_extra: dict[str, str], smoke: bool) -> tuple[float, float, float]:
    """(wall of the process, the demo's own wall, the demo's CPU seconds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    size = ["--epochs", "1", "--pairs-per-epoch", "2", "--heldout-prompts", "2", "--eval-every", "0"] if smoke else [
        "--epochs", "3", "--pairs-per-epoch", "16", "--heldout-prompts", "4"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "fdfo_core.cli", "demo", "--out", str(Path(tmp) / "demo"), *size],
                             env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"fdfo demo failed ({out.returncode}):\n{out.stderr[-2000:]}")
    m = re.search(r"in (\d+) s \((\d+) s of CPU time\)", out.stdout)
    if not m:
        raise SystemExit(f"no timing line in the demo's output:\n{out.stdout[-2000:]}")
    return wall, float(m.group(1)), float(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting on the machine as it is")
    ap.add_argument("--load", type=int, default=2, help="competing busy processes for the loaded runs (0: none)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.repeats, args.load = 1, 0
    rows: dict[str, list[str]] = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, env in SETTINGS.items():
            wall, demo_wall, cpu = demo_seconds(env, args.smoke)
            rows[name].append(f"{demo_wall:.0f} s ({cpu:.0f} s CPU; process {wall:.1f} s)")
    loaded: dict[str, str] = {}
    if args.load:
        stop = mp.Event()
        procs = [mp.Process(target=busy, args=(stop,), daemon=True) for _ in range(args.load)]
        for p in procs:
            p.start()
        try:
            for name, env in SETTINGS.items():
                if name not in SKIP_UNDER_LOAD:
                    wall, demo_wall, cpu = demo_seconds(env, args.smoke)
                    loaded[name] = f"{demo_wall:.0f} s ({cpu:.0f} s CPU)"
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=5)
    print(f"fdfo demo, {'smoke size' if args.smoke else '3 epochs of 16 pairs, 4 held-out captions'}; "
          f"{os.cpu_count()} CPUs; the demo's own wall and CPU seconds")
    print(f"| wait setting | as the machine is ({args.repeats} run(s)) | with {args.load} busy processes |")
    print("|---|---|---|")
    for name in SETTINGS:
        print(f"| {name} | {'; '.join(rows[name])} | {loaded.get(name, 'not run')} |")


if __name__ == "__main__":
    main()
