"""Profile FDFO epochs on the bundled toy model, phase by phase, against their bare model passes.

Two runs, each in this process with the phase clocks of epoch_phases.py installed:

- toy:  `fdfo train --preset toy` on the toy model with the toy alignment reward (256 training
        prompts; held-out evaluation, checkpoints and previews at their defaults), `--toy-epochs`;
- demo: `fdfo demo` (its default settings unless flags say otherwise), `--demo-epochs`.

For each it prints a table per epoch (one-off work such as the base model's evaluation is spread
over the epochs run): wall seconds, CPU seconds of the process (every thread) and share, then the
bare model passes (every velocity, backward and decode call the run made, replayed on random
inputs with nothing around them) and the ratio of the run to them. "outside the phases" is model
loading, the demo's pictures and whatever no phase covers.

    python benchmarks/profile_epoch.py [--what toy,demo,passes,decode] [--toy-epochs 10] [--demo-epochs 50]
        [--threads 2] [--load 0] [--demo-args "--steps-per-sample 0"]

`--load N` starts N competing busy processes (one thread each) for the whole profile, to see what
a loaded machine does to each phase; `taskset -c 0,1 python ...` confines the profile to two cores.
`--smoke` runs one epoch of each on a tiny setting (the test suite's check that this script works).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fdfo_core.cli  # noqa: E402,F401  (before torch: the front ends' OpenMP wait policy)
import torch  # noqa: E402

from epoch_phases import PhaseClock, busy, replay_passes  # noqa: E402


def bare_backend():
    """A toy backend for the replay (same model, LoRA of the toy preset)."""
    from fdfo_core.backends.diffusers_backend import build_backend
    from fdfo_core.config import load_config
    from fdfo_core.toy import TOY_MAX_SEQUENCE_LENGTH, default_toy_model_path, toy_prompt_sets

    cfg = load_config("toy")
    backend = build_backend(default_toy_model_path(), cfg, device="cpu", max_sequence_length=TOY_MAX_SEQUENCE_LENGTH,
                            log=lambda *_: None)
    prompts, _ = toy_prompt_sets()
    cond = backend.encode_prompts(prompts[:64])

    def cond_of(b: int) -> dict:
        rows = torch.arange(b) % 64
        return {k: v[rows] for k, v in cond.items()}

    return backend, cond_of


def pass_table(batches=(8, 16, 32, 64, 128), threads=(1, 2)) -> None:
    """Cost of one image through one sampling pass (no grad) by batch size and thread count: what a
    phase made of small batches (the held-out evaluation, previews) pays more for under load."""
    backend, cond_of = bare_backend()
    shape = backend.latent_shape(64, 64)
    before = torch.get_num_threads()
    print(f"\nper image and sampling pass, ms (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')}):")
    for n in threads:
        torch.set_num_threads(n)
        cells = []
        for b in batches:
            x, t, c = torch.randn(b, *shape), torch.rand(b), cond_of(b)
            reps = max(2, 256 // b)
            with torch.no_grad():
                backend.velocity(x, t, c)
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    backend.velocity(x, t, c)
            w, cpu = (time.perf_counter() - w0) / reps / b, (time.process_time() - c0) / reps / b
            cells.append(f"batch {b}: {1000 * w:6.2f} wall {1000 * cpu:6.2f} CPU")
        print(f"  {n} thread(s)  " + " | ".join(cells))
    torch.set_num_threads(before)


def decode_table(batches=(8, 16, 32, 64, 128), images: int = 128, reps: int = 3) -> None:
    """Cost of decoding one image with the toy's VAE by batch size, in the usual (contiguous) layout and
    channels-last (what the CPU backend uses, `use_channels_last`): median of `reps` timed rounds of
    `images` images after one warm-up round."""
    import statistics

    from fdfo_core.backends.diffusers_backend import use_channels_last

    backend, _ = bare_backend()
    vae = backend.pipe.vae
    z = torch.randn(images, *backend.latent_shape(64, 64))
    print(f"\nVAE decode, ms per image ({torch.get_num_threads()} threads; {images} images a round, median of {reps}):")
    for layout in ("contiguous", "channels_last"):
        if layout == "contiguous":
            vae.to(memory_format=torch.contiguous_format)
        else:
            use_channels_last(vae)
        cells = []
        with torch.no_grad():
            for b in batches:
                times = []
                for _ in range(reps + 1):
                    w0 = time.perf_counter()
                    for i in range(0, images, b):
                        backend.decode(z[i:i + b])
                    times.append(time.perf_counter() - w0)
                cells.append(f"batch {b}: {1000 * statistics.median(times[1:]) / images:6.2f}")
        print(f"  {layout:14s} " + " | ".join(cells))


def profile(clock: PhaseClock, label: str, run, epochs: int) -> None:
    clock.reset()
    clock.record = True
    w0, c0 = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    passes = list(clock.passes)
    wall_phases, cpu_phases = clock.snapshot()
    calls = dict(clock.calls)
    clock.record = False
    backend, cond_of = bare_backend()
    replay_passes(backend, passes[: min(len(passes), 40)], cond_of)  # warm-up
    bare = replay_passes(backend, passes, cond_of)
    clock.wall, clock.cpu, clock.calls = wall_phases, cpu_phases, calls
    n_vel = sum(p.kind == "velocity" for p in passes)
    print(clock.table(f"\n{label}: {epochs} epoch(s), {torch.get_num_threads()} torch threads; per epoch "
                      f"(run {wall:.1f} s wall, {cpu:.1f} s CPU; {n_vel} velocity calls)",
                      per=epochs, wall_total=wall, cpu_total=cpu, bare=bare))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default="toy,demo,passes", help=(
        "toy, demo, passes (a table of one pass's cost by batch size and threads), decode (the VAE's cost per image "
        "by batch size and memory layout), comma-separated"))
    ap.add_argument("--toy-epochs", type=int, default=10)
    ap.add_argument("--demo-epochs", type=int, default=None, help="default: the demo's own (DEMO_EPOCHS)")
    ap.add_argument("--demo-args", default="", help="further `fdfo demo` flags, e.g. \"--steps-per-sample 0\" (train every step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--load", type=int, default=0, help="competing busy processes during the profile")
    ap.add_argument("--smoke", action="store_true", help="one tiny epoch of each (checks the script works)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fdfo_core.cli.main import main as fdfo
    from fdfo_core.toy import toy_prompt_sets

    clock = PhaseClock().install()
    stop = mp.Event()
    load = [mp.Process(target=busy, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in load:
        p.start()
    tmp = Path(tempfile.mkdtemp(prefix="fdfo-profile-"))
    small = ["--pairs-per-epoch", "2"] if args.smoke else []
    try:
        if "toy" in args.what:
            prompts, _ = toy_prompt_sets()
            (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n")
            epochs = 1 if args.smoke else args.toy_epochs
            argv = ["train", "--preset", "toy", "--prompts", str(tmp / "prompts.txt"), "--reward", "toy_alignment",
                    "--run-dir", str(tmp / "toy"), "--epochs", str(epochs), "--no-progress", "--threads", str(args.threads),
                    *(["--pairs-per-epoch", "2", "--eval-every", "1"] if args.smoke else [])]
            profile(clock, "toy preset (fdfo train --preset toy)", lambda: fdfo(argv), epochs)
        if "demo" in args.what:
            from fdfo_core.cli.demo import DEMO_EPOCHS

            epochs = 1 if args.smoke else (args.demo_epochs or DEMO_EPOCHS)
            argv = ["demo", "--out", str(tmp / "demo"), "--epochs", str(epochs), "--threads", str(args.threads),
                    *small, *(["--heldout-prompts", "2"] if args.smoke else []), *shlex.split(args.demo_args)]
            profile(clock, f"demo (fdfo {' '.join(argv[3:])})", lambda: fdfo(argv), epochs)
        if "passes" in args.what:
            pass_table(batches=(8, 32) if args.smoke else (8, 16, 32, 64, 128))
        if "decode" in args.what:
            decode_table(batches=(4, 8), images=8, reps=1) if args.smoke else decode_table()
    finally:
        stop.set()
        for p in load:
            p.join(timeout=5)
        clock.uninstall()
    print(f"\n(load: {args.load} competing busy process(es); run folders under {tmp})")


if __name__ == "__main__":
    main()
