"""VRAM table per published model and memory mode, from the estimates of fdfo_core/backends/memory.py.

Builds each model's transformer and VAE from its published config on the meta device (no
download, no memory), measures the activation peaks of sampling, decoding and training there
(see fdfo_core/backends/memory.py for the method), and prints the estimated peak device memory of an FDFO
run (432 pairs, the family's steps and resolution) per memory mode, as a Markdown table and JSON,
plus what `--vram` chooses for 24, 48 and 80 GB. These are estimates, not measurements:
benchmarks/gpu_profile.py measures on a GPU.

    python benchmarks/memory_table.py [--models sd35-medium flux-dev qwen-image] [--json memory_table.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fdfo_core.families import all_families  # noqa: E402
from fdfo_core.backends.memory import GIB, MemoryBudgetError, MemoryMode, choose_mode, estimate, measure_published  # noqa: E402

MODES = {
    "bf16, all on the GPU": MemoryMode(),
    "bf16, states in host RAM": MemoryMode(storage_device="cpu"),
    "bf16, states in host RAM, checkpointing": MemoryMode(storage_device="cpu", gradient_checkpointing=True),
    "fp8, states in host RAM, checkpointing": MemoryMode(base_weights="fp8", storage_device="cpu",
                                                          gradient_checkpointing=True),
    "fp8, states in host RAM, checkpointing, micro-batch 1": MemoryMode(
        base_weights="fp8", storage_device="cpu", gradient_checkpointing=True, train_batch_size=1,
        sample_batch_size=1, decode_batch_size=1),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["sd35-medium", "flux-dev", "qwen-image"])
    ap.add_argument("--small", action="store_true", help="the small CPU configs (for tests)")
    ap.add_argument("--json", default="memory_table.json")
    args = ap.parse_args(argv)
    models = {m.key: (f, m) for f in all_families() for m in f.published_models}
    rows = []
    for key in args.models:
        family, model = models[key]
        preset = {"num_steps": 40, **dict(family.preset)}
        steps = preset["num_steps"]
        t0 = time.perf_counter()
        mem = measure_published(model, family, small=args.small)
        res = 64 if args.small else model.resolution
        row = {"model": key, "title": model.title, "resolution": res, "steps": steps,
               "params_b": mem.transformer_params / 1e9, "measure_s": time.perf_counter() - t0,
               "memory": mem.to_dict(), "modes": {}, "vram": {}}
        for name, mode in MODES.items():
            e = estimate(mem, mode, 432, steps)
            row["modes"][name] = {"peak_gib": e.peak / GIB, "host_gib": e.states_host / GIB,
                                  "phases_gib": {k: v / GIB for k, v in e.phases.items()}}
        for gb in (24, 48, 80):
            try:
                plan = choose_mode(mem, gb, 432, steps)
                row["vram"][gb] = {"mode": plan.mode.describe(), "peak_gib": plan.estimate.peak / GIB}
            except MemoryBudgetError as err:
                row["vram"][gb] = {"mode": None, "error": str(err)}
        rows.append(row)
        print(f"{key}: measured on the meta device in {row['measure_s']:.0f} s", flush=True)
    print(f"| model (px, steps) | {' | '.join(MODES)} |")
    print("|---|" + "---|" * len(MODES))
    for r in rows:
        cells = [f"{m['peak_gib']:.1f}" + (f" (+{m['host_gib']:.0f} host)" if m["host_gib"] else "")
                 for m in r["modes"].values()]
        print(f"| {r['title']} ({r['resolution']} px, {r['steps']}) | {' | '.join(cells)} |")
    print()
    for r in rows:
        for gb, v in r["vram"].items():
            print(f"- {r['title']}, --vram {gb}: " + (f"{v['mode']} -> {v['peak_gib']:.1f} GiB" if v.get("mode")
                                                      else "does not fit"))
    out = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "estimated": True, "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
