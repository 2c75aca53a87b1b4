"""What limits FDFO's early rate on the toy? FDFO variants at a fixed early budget, paired by seed.

Every variant trains FDFO on the toy alignment reward for EARLY_EVALS reward evaluations (16 epochs of
64 images unless the variant changes the pairs per epoch) and is compared with the plain toy preset
on the same seeds: area under the held-out curve over the budget (the mean held-out alignment over
it), final held-out alignment, and the paired difference to the preset with a 95% bootstrap
interval over seeds. The preset's runs are the sample-efficiency benchmark's FDFO alignment runs at
this budget (a longer benchmark run's first 16 epochs are reused: training does not depend on the
run's length); missing ones run here.

    python benchmarks/fdfo_early_rate.py                  # the default variants, 2 seeds
    python benchmarks/fdfo_early_rate.py --ties           # only the tie diagnostic (seconds)
    python benchmarks/fdfo_early_rate.py --variants churn_0.2 std_norm --seeds 2

The tie diagnostic samples pairs from the untrained model at several churn strengths and counts
pairs whose two branches get exactly the same alignment (dR = 0: no signal at all), with the mean
|dR| and the RMS endpoint difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from efficiency_stats import bootstrap, curve_auc, fmt_interval  # noqa: E402
from sample_efficiency import IMAGES_PER_EPOCH, find_run, run_all, run_path, run_settings  # noqa: E402

EARLY_EVALS = 16 * IMAGES_PER_EPOCH

#: name -> (config overrides, images per epoch, what it tests)
VARIANTS: dict[str, tuple[dict, int, str]] = {
    "preset": ({}, IMAGES_PER_EPOCH, "toy preset: raw churn 0.05, 32 pairs/epoch, all 20 steps, raw dR, lr 3e-4"),
    "churn_0.02": ({"churn_strength": 0.02}, IMAGES_PER_EPOCH, "weaker churn (closer pairs)"),
    "churn_0.2": ({"churn_strength": 0.2}, IMAGES_PER_EPOCH, "stronger churn"),
    "prior_0.2": ({"churn": "prior", "churn_strength": 0.2}, IMAGES_PER_EPOCH, "churn only at t = 1"),
    "interval_0.3": ({"churn": "interval", "churn_strength": 0.3}, IMAGES_PER_EPOCH,
                     "churn around one logit-normal time"),
    "pairs_16": ({}, IMAGES_PER_EPOCH // 2, "16 pairs x 32 epochs (same evaluations)"),
    "pairs_64": ({}, IMAGES_PER_EPOCH * 2, "64 pairs x 8 epochs (same evaluations)"),
    "steps_5": ({"steps_per_sample": 5}, IMAGES_PER_EPOCH, "train on 5 random steps of 20 per sample"),
    "std_norm": ({"reward_normalization": "std"}, IMAGES_PER_EPOCH, "dR divided by the epoch's reward std"),
    "lr_1e-3": ({"lr": 1e-3}, IMAGES_PER_EPOCH, "larger learning rate"),
}
DEFAULT_VARIANTS = ["churn_0.02", "churn_0.2", "prior_0.2", "pairs_16", "pairs_64", "steps_5", "std_norm", "lr_1e-3"]
TIE_STRENGTHS = (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4)


def variant_jobs(name: str, seeds: int, out: Path) -> list[tuple[dict, Path]]:
    """(settings, result file) of a variant's runs. The preset's runs are the sample-efficiency
    benchmark's FDFO alignment runs at this budget: its files are reused (a longer run's first
    epochs too) and the missing ones run here, into the benchmark's folder."""
    extra, ipe, _ = VARIANTS[name]
    epochs = EARLY_EVALS // ipe
    if name == "preset":
        runs = [run_settings("fdfo", "alignment", seed, epochs, IMAGES_PER_EPOCH, (32, 2)) for seed in range(seeds)]
        return [(s, run_path(out.parent / "sample_efficiency", s)) for s in runs]
    runs = [run_settings("fdfo", "alignment", seed, epochs, ipe, (32, 2), extra) for seed in range(seeds)]
    return [(s, run_path(out, s, f"-{name}")) for s in runs]


def truncate(curve: list[dict], budget: float) -> list[dict]:
    return [p for p in curve if p["evals"] <= budget]


def ties(out: Path, n_pairs: int = 64) -> dict:
    """dR = 0 fraction, mean |dR| and RMS endpoint difference of pairs from the untrained toy model."""
    import torch

    from fdfo_core.config import load_config
    from fdfo_core.conditioning import cond_select
    from fdfo_core.rewards import build_reward
    from fdfo_core.sampler import ChurnSettings, sample_pairs
    from fdfo_core.toy import toy_prompt_sets
    from fdfo_core.trainer import generator
    from sample_efficiency import load_toy

    torch.set_num_threads(2)
    cfg = load_config("toy", overrides={"seed": 0})
    backend = load_toy(cfg)
    reward = build_reward("toy_alignment")
    prompts, _ = toy_prompt_sets(seed=0)
    prompts = prompts[:n_pairs]
    cond = backend.encode_prompts(prompts)
    sigmas = backend.sigmas(cfg.num_steps, cfg.height, cfg.width).float()
    shape = backend.latent_shape(cfg.height, cfg.width)
    rows = {}
    with torch.no_grad():
        for g in TIE_STRENGTHS:
            gens = [generator(0, "ties", i) for i in range(n_pairs)]
            roll = sample_pairs(backend.velocity, cond_select(cond, torch.arange(n_pairs)), gens, shape, sigmas,
                                ChurnSettings("raw", g), record=False)
            images = backend.decode(roll.final).float()
            r = reward(images, prompts + prompts).double()
            dr = (r[:n_pairs] - r[n_pairs:]).abs() / 2
            dx = (roll.final[:n_pairs] - roll.final[n_pairs:]) / 2
            rows[str(g)] = {"tie_fraction": float((dr == 0).double().mean()), "mean_abs_dR": float(dr.mean()),
                            "rms_dx": float(dx.pow(2).mean().sqrt())}
            print(f"churn {g:<7g} ties (dR = 0) {rows[str(g)]['tie_fraction']:.2f}   mean |dR| "
                  f"{rows[str(g)]['mean_abs_dR']:.4f}   rms dx {rows[str(g)]['rms_dx']:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--ties", action="store_true", help="only the tie diagnostic")
    ap.add_argument("--out", default="runs/fdfo_early_rate")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", action="store_true", help="table and plot from the finished run files only")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    if args.ties:
        summary["ties"] = ties(out)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        return
    names = list(dict.fromkeys(["preset", *args.variants]))
    jobs = {n: variant_jobs(n, args.seeds, out) for n in names}
    if not args.replot:
        run_all([j for n in names for j in jobs[n]], args.workers, args.threads)
    results = {n: [r for r in (find_run(s, p) for s, p in js) if r is not None] for n, js in jobs.items()}
    if len(results["preset"]) < args.seeds:
        print(f"only {len(results['preset'])} of {args.seeds} preset runs exist (--replot runs nothing)")
    base = {r["seed"]: truncate(r["curve"], EARLY_EVALS) for r in results["preset"]}
    rows = {}
    print(f"\nFDFO early rate, toy alignment, {EARLY_EVALS} reward evaluations, paired with the preset on the same seeds")
    print("| variant | what | AUC | final | AUC - preset [95% CI] | final - preset | seeds higher |")
    print("|---|---|---|---|---|---|---|")
    series = {}
    for n in names:
        rs = sorted((r for r in results[n] if r["seed"] in base), key=lambda r: r["seed"])
        if not rs:
            continue
        curves = [truncate(r["curve"], EARLY_EVALS) for r in rs]
        auc = np.array([curve_auc([p["evals"] for p in c], [p["heldout"] for p in c]) for c in curves])
        fin = np.array([c[-1]["heldout"] for c in curves])
        bauc = np.array([curve_auc([p["evals"] for p in base[r["seed"]]], [p["heldout"] for p in base[r["seed"]]])
                         for r in rs])
        bfin = np.array([base[r["seed"]][-1]["heldout"] for r in rs])
        d_auc, d_fin = auc - bauc, fin - bfin
        rows[n] = {"what": VARIANTS[n][2], "seeds": [r["seed"] for r in rs], "auc": auc.tolist(), "final": fin.tolist(),
                   "auc_diff": bootstrap(lambda i: float(d_auc[i].mean()), len(rs)),
                   "final_diff": bootstrap(lambda i: float(d_fin[i].mean()), len(rs)),
                   "train_cpu_seconds": float(np.mean([c[-1].get("cpu_seconds", 0.0) for c in curves]))}
        print(f"| {n} | {VARIANTS[n][2]} | {auc.mean():.4f} | {fin.mean():.4f} | {fmt_interval(*rows[n]['auc_diff'], digits=4)} | "
              f"{fmt_interval(*rows[n]['final_diff'], digits=4)} | {int((d_auc > 0).sum())}/{len(rs)} |")
        xs = sorted({p["evals"] for c in curves for p in c})
        series[n] = (xs, [float(np.mean([next(p["heldout"] for p in c if p["evals"] == x) for c in curves
                                         if any(p["evals"] == x for p in c)])) for x in xs])
    summary["variants"] = rows
    summary["early_evals"] = EARLY_EVALS
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    from fdfo_core.images import line_plot, save_png

    save_png(line_plot(series, xlabel="reward evaluations", ylabel="held-out toy alignment", size=(760, 460),
                       title=f"FDFO early-rate variants (seed means over {args.seeds} seeds)"), out / "early_rate.png")
    print(f"\n{out / 'early_rate.png'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
