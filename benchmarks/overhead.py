"""How much does an FDFO epoch cost beyond the model passes it needs?

The bundled toy model with the toy preset (32 pairs x 20 steps, 256 training prompts, the toy
alignment reward) and the run's defaults: the held-out evaluation (4 prompts x 4 seeds) every 5
epochs and a checkpoint every 5 epochs. One repetition A is a block of `--block` epochs (default
5, the evaluation's and checkpoints' cadence) through the real run loop (`RunLoop.train`: sample,
decode, reward, train, optimizer, metrics, evaluation, checkpoints, the LoRA file); one
repetition B replays the bare model passes the block's training needed (every sampling
velocity, training forward and backward and decode call, same shapes, random inputs, nothing
around them; epoch_phases.py records them while A runs). A and B alternate (A B A B ...) so a
change in the machine's load hits both alike; the first block (the base model's evaluation and
the time estimate, once per run) is a warm-up and not counted.

Prints, per epoch, the medians and [min, max] of A and B in wall seconds and CPU seconds of the
process, the ratio of the medians and the median of the ratios of adjacent A, B (goal: <= 1.05),
and what the held-out evaluation's own passes cost.

    python benchmarks/overhead.py [--repeats 5] [--block 5] [--threads 2]
    python benchmarks/overhead.py --smoke      # a few seconds: checks that the script works
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fdfo_core.cli  # noqa: E402,F401  (before torch: the front ends' OpenMP wait policy)
import torch  # noqa: E402

from epoch_phases import PhaseClock, replay_passes, spread  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="A, B pairs timed (after one warm-up block)")
    ap.add_argument("--block", type=int, default=None, help="epochs per repetition (default: eval_every)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=None, help="pairs per epoch (default: the toy preset's)")
    ap.add_argument("--smoke", action="store_true", help="2 pairs x 2 steps, 2 repetitions of 1 epoch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fdfo_core.backends.diffusers_backend import build_backend
    from fdfo_core.config import load_config
    from fdfo_core.methods import FDFOTrainer
    from fdfo_core.rewards import build_reward
    from fdfo_core.run.trainer import Callbacks
    from fdfo_core.toy import TOY_MAX_SEQUENCE_LENGTH, default_toy_model_path, toy_prompt_sets

    values = {"epochs": 1}
    if args.smoke:
        values.update(pairs_per_epoch=2, num_steps=2, eval_every=1, checkpoint_every=1, eval_prompt_count=1,
                      eval_seeds=2)
        args.repeats, args.block = 2, 1
    if args.pairs:
        values["pairs_per_epoch"] = args.pairs
    cfg = load_config("toy", overrides=values)
    block = args.block or cfg.eval_every or 1
    backend = build_backend(default_toy_model_path(), cfg, device="cpu", max_sequence_length=TOY_MAX_SEQUENCE_LENGTH,
                            log=lambda *_: None)
    prompts, heldout = toy_prompt_sets()
    trainer = FDFOTrainer(backend, build_reward("toy_alignment"), prompts, cfg, run_dir=Path(tempfile.mkdtemp()),
                          callbacks=Callbacks(log=None), eval_prompts=heldout)
    cond = backend.encode_prompts(prompts[:64])

    def cond_of(b: int) -> dict:
        return {k: v[torch.arange(b) % 64] for k, v in cond.items()}

    clock = PhaseClock().install()

    def run_block() -> tuple[float, float]:
        clock.reset()
        cfg.epochs = trainer.epoch + block  # the loop's own end: the last epoch's evaluation and LoRA file
        w0, c0 = time.perf_counter(), time.process_time()
        trainer.train()
        return (time.perf_counter() - w0) / block, (time.process_time() - c0) / block

    try:
        run_block()  # warm-up: the base model's evaluation, the time estimate
        a_wall, a_cpu, b_wall, b_cpu, e_wall, e_cpu, ratios, cpu_ratios = [], [], [], [], [], [], [], []
        for _ in range(args.repeats):
            w, c = run_block()
            a_wall.append(w), a_cpu.append(c)
            passes = list(clock.passes)
            training = [p for p in passes if not p.phase.startswith("held-out")]
            evaluation = [p for p in passes if p.phase.startswith("held-out")]
            clock.record = False
            w, c = replay_passes(backend, training, cond_of)
            b_wall.append(w / block), b_cpu.append(c / block)
            w, c = replay_passes(backend, evaluation, cond_of)
            e_wall.append(w / block), e_cpu.append(c / block)
            clock.record = True
            ratios.append(a_wall[-1] / b_wall[-1]), cpu_ratios.append(a_cpu[-1] / b_cpu[-1])
    finally:
        clock.uninstall()
    med = statistics.median
    n_vel = sum(p.kind == "velocity" for p in training)
    print(f"toy model, toy preset: {cfg.pairs_per_epoch} pairs x {cfg.num_steps} steps, held-out evaluation "
          f"{cfg.eval_prompt_count} x {cfg.eval_seeds} every {cfg.eval_every}, checkpoint every {cfg.checkpoint_every}; "
          f"{args.threads} torch threads; {args.repeats} A/B pairs of {block} epoch(s) ({n_vel // block} velocity "
          "calls per epoch); per epoch, median [min, max]:")
    print(f"  A  epoch through the run loop (evaluation, checkpoint amortised): wall {spread(a_wall)} s, CPU {spread(a_cpu)} s")
    print(f"  B  its bare model passes (sampling, training fwd+bwd, decode):    wall {spread(b_wall)} s, CPU {spread(b_cpu)} s")
    print(f"     the held-out evaluation's own passes, amortised:               wall {spread(e_wall)} s, CPU {spread(e_cpu)} s")
    print(f"  A / B: wall {med(a_wall) / med(b_wall):.3f} (median of pair ratios {med(ratios):.3f}, "
          f"[{min(ratios):.3f}, {max(ratios):.3f}]); CPU {med(a_cpu) / med(b_cpu):.3f} "
          f"(median of pair ratios {med(cpu_ratios):.3f})  (goal <= 1.05)")


if __name__ == "__main__":
    main()
