"""The command line's OpenMP wait policy: short spins on an idle machine, sleeping waits on a busy
one (issue 28; the measurements are in docs/benchmarks/speed.md)."""

import os
import subprocess
import sys

from fdfo_core.cli import SLEEP_WHEN_BUSY, SPIN_WHEN_IDLE, choose_wait_policy, other_cpu_load


def test_idle_spins_briefly_busy_sleeps_unknown_sleeps():
    assert choose_wait_policy({}, load=lambda: 0.1) == SPIN_WHEN_IDLE == {"GOMP_SPINCOUNT": "20000"}
    assert choose_wait_policy({}, load=lambda: 1.3) == SLEEP_WHEN_BUSY == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert choose_wait_policy({}, load=lambda: None) == SLEEP_WHEN_BUSY


def test_a_policy_the_user_set_is_kept_and_the_load_not_even_read():
    def never():
        raise AssertionError("the load was read")

    assert choose_wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}, load=never) == {}
    assert choose_wait_policy({"GOMP_SPINCOUNT": "0"}, load=never) == {}


def test_other_cpu_load_reads_the_busy_share_of_proc_stat():
    snapshots = iter([
        "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n",
        # +60 busy (user 40, system 20), +140 idle / iowait: 30 % of the machine's CPUs
        "cpu  140 0 70 930 60 0 0 0 0 0\ncpu0 1 2 3 4\n",
    ])
    load = other_cpu_load(0.0, read=lambda: next(snapshots), sleep=lambda s: None)
    assert abs(load - 0.3 * (os.cpu_count() or 1)) < 1e-9
    assert other_cpu_load(0.0, read=lambda: "garbage", sleep=lambda s: None) is None
    assert other_cpu_load(0.0, read=lambda: "cpu  1 1 1 1\n", sleep=lambda s: None) is None  # no time passed

    def unreadable():
        raise OSError("no /proc here")

    assert other_cpu_load(0.0, read=unreadable, sleep=lambda s: None) is None


def test_importing_the_front_ends_sets_the_policy_before_torch_unless_the_user_did():
    code = "import os, fdfo_core.cli as c; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), c.OPENMP_WAIT)"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] in (["None", "20000"], ["PASSIVE", "None"])
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ACTIVE", "None", "{}"]


def test_the_log_line_names_the_policy(monkeypatch):
    import fdfo_core.cli as c

    monkeypatch.setattr(c, "OPENMP_WAIT", dict(SPIN_WHEN_IDLE))
    assert "short spins" in c.wait_policy_text()
    monkeypatch.setattr(c, "OPENMP_WAIT", dict(SLEEP_WHEN_BUSY))
    assert "sleeping" in c.wait_policy_text()
    monkeypatch.setattr(c, "OPENMP_WAIT", {})
    monkeypatch.setenv("GOMP_SPINCOUNT", "7")
    assert "GOMP_SPINCOUNT=7 (as set)" in c.wait_policy_text()


def test_the_demo_pins_the_cpu_kernels_on_avx2_cpus_only_and_keeps_what_the_user_set():
    from fdfo_core.cli import REPRODUCIBLE_KERNELS, cpu_flags, pinned_kernels

    avx2 = lambda: {"sse4_2", "avx", "avx2", "fma"}  # noqa: E731
    assert pinned_kernels(["fdfo", "demo", "--out", "x"], {}, avx2) == REPRODUCIBLE_KERNELS
    assert pinned_kernels(["fdfo", "train", "--preset", "toy"], {}, avx2) == {}
    assert pinned_kernels(["fdfo"], {}, avx2) == {}
    assert pinned_kernels(["/x/fdfo_core/cli/__main__.py", "demo"], {}, avx2) == REPRODUCIBLE_KERNELS  # python -m
    assert pinned_kernels(["some_script.py", "demo"], {}, avx2) == {}  # not the fdfo command
    assert pinned_kernels(["fdfo", "demo"], {}, lambda: {"neon", "asimd"}) == {}  # an ARM CPU
    assert pinned_kernels(["fdfo", "demo"], {}, set) == {}  # flags unreadable
    mine = pinned_kernels(["fdfo", "demo"], {"MKL_CBWR": "COMPATIBLE"}, avx2)
    assert "MKL_CBWR" not in mine and mine["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "avx2" in cpu_flags(lambda: "processor : 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_flags(lambda: "no flags here") == set()


def test_a_demo_process_runs_torchs_avx2_kernels_on_an_avx2_cpu():
    """In a real process: `fdfo demo` pins torch's kernels before torch picks them (on a CPU with
    AVX-512 this is what changes; on an AVX2 CPU it is what torch picks anyway)."""
    import pytest

    from fdfo_core.cli import cpu_flags

    if "avx2" not in cpu_flags():
        pytest.skip("this CPU has no AVX2 (or its flags are unreadable): the demo does not pin its kernels")
    code = ("import sys; sys.argv = ['fdfo', 'demo']; import os, fdfo_core.cli, torch; "
            "print(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'], os.environ['ONEDNN_MAX_CPU_ISA'])")
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["AVX2", "AVX2", "AVX2"]


def test_commands_that_run_no_model_skip_the_load_reading():
    from fdfo_core.cli import fdfo_subcommand, is_light_command

    assert fdfo_subcommand(["/venv/bin/fdfo", "train", "--preset", "toy"]) == "train"
    assert fdfo_subcommand(["fdfo"]) == "" and fdfo_subcommand(["pytest", "demo"]) is None and fdfo_subcommand([]) is None
    assert fdfo_subcommand(["/x/fdfo_core/cli/main.py", "demo"]) == "demo"  # python -m fdfo_core.cli.main
    assert fdfo_subcommand(["/x/pytest/__main__.py", "-h"]) is None and fdfo_subcommand(["/comfy/main.py", "demo"]) is None

    for argv in (["fdfo"], ["fdfo", "--help"], ["fdfo", "-h"], ["/venv/bin/fdfo", "rewards"],
                 ["C:\\venv\\Scripts\\fdfo.exe", "convert-lora", "a", "b"], ["/x/fdfo_core/cli/__main__.py", "rewards"]):
        assert is_light_command(argv), argv
    for argv in (["fdfo", "demo"], ["fdfo", "train", "--preset", "toy"], ["fdfo", "sample"], ["fdfo", "fit-preference"],
                 ["/x/fdfo_core/cli/__main__.py", "train"], ["benchmarks/sample_efficiency.py"], ["pytest", "rewards"], []):
        assert not is_light_command(argv), argv
    code = "import sys; sys.argv = ['fdfo', '--help']; import fdfo_core.cli as c; print(c.OPENMP_WAIT)"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["{}"]
