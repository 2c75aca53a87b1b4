"""benchmarks/epoch_phases.py (the phase clocks behind profile_epoch.py and overhead.py) charges
each call exclusively and records the model passes a run makes; overhead.py --smoke runs the
real loop and prints its A/B figures (the full benchmark is run by hand: docs/benchmarks/speed.md)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # (dataclasses look their module up)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_phase_clock_charges_nested_calls_exclusively(monkeypatch):
    ep = load("epoch_phases")

    class FakeTime:  # a clock that moves only when told: wall and CPU seconds
        now = 0.0

        def perf_counter(self):
            return self.now

        def process_time(self):
            return self.now / 2

    fake = FakeTime()
    monkeypatch.setattr(ep, "time", fake)
    clock = ep.PhaseClock()
    with clock.phase("outer"):
        fake.now += 2.0
        with clock.phase("inner"):
            fake.now += 3.0
        with clock.phase("inner"):
            fake.now += 1.0
    assert clock.calls == {"outer": 1, "inner": 2}
    assert clock.wall == {"outer": 2.0, "inner": 4.0}  # the inner calls are not charged to the outer again
    assert clock.cpu == {"outer": 1.0, "inner": 2.0}
    table = clock.table("t", wall_total=7.0, cpu_total=3.5)
    assert re.search(r"unattributed\s+1\.000\s+0\.500", table) and re.search(r"total\s+7\.000\s+3\.500", table)


@pytest.mark.slow  # ~10 s of CPU: the toy model, its evaluation, checkpoints
def test_overhead_smoke_times_the_loop_against_its_recorded_passes(capsys, one_thread):
    overhead = load("overhead")
    argv = sys.argv
    sys.argv = ["overhead.py", "--smoke", "--threads", "1"]
    try:
        overhead.main()
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    # 2 pairs x 2 steps: one sampling batch of 2 steps, then 8 training items in 4 optimizer steps
    # (4 micro-batches): 6 velocity calls per epoch, all recorded and replayed
    assert "(6 velocity calls per epoch)" in out
    a = re.search(r"A / B: wall ([\d.]+) .* CPU ([\d.]+)", out)
    assert a and float(a.group(1)) > 0 and float(a.group(2)) > 0
    for line in ("A  epoch through the run loop", "B  its bare model passes", "held-out evaluation's own passes"):
        assert line in out


@pytest.mark.skipif(not __import__("os").environ.get("FDFO_SLOW"), reason="runs 4 tiny demos (FDFO_SLOW=1)")
def test_wait_policy_smoke_prints_a_row_per_setting(capsys):
    wp = load("wait_policy")
    sys.argv = ["wait_policy.py", "--smoke"]
    wp.main()
    out = capsys.readouterr().out
    for name in wp.SETTINGS:
        assert re.search(re.escape(f"| {name} | ") + r"\d+ s \(\d+ s CPU", out), out


def test_decode_table_times_both_layouts_by_batch(capsys):
    pe = load("profile_epoch")
    pe.decode_table(batches=(4, 8), images=8, reps=1)
    out = capsys.readouterr().out
    for layout in ("contiguous", "channels_last"):
        assert re.search(layout + r"\s+batch 4:\s+\d+\.\d\d \| batch 8:\s+\d+\.\d\d", out), out
