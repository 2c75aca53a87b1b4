"""What limits FDFO's early rate on the toy? FDFO variants at a fixed early budget, paired by seed.

Every variant trains FDFO on one toy reward (--reward: alignment, the default, or colourfulness)
for a budget of --epochs epochs of 64 reward evaluations (default 16 = 1024 evaluations; a variant
that changes the pairs per epoch runs as many epochs as keep the same evaluations) and is compared
on the same seeds with the plain toy preset and with Flow-GRPO: area under the held-out curve over
the budget (AUC, the mean held-out reward over it) and the final held-out reward, each with a 95%
bootstrap interval over seeds, and the paired (same-seed) differences to the preset and to
Flow-GRPO with their intervals. The preset's runs are the sample-efficiency benchmark's FDFO runs of
that reward at this budget (OUT/../sample_efficiency; a longer benchmark run's first epochs are
reused: training does not depend on the run's length); missing ones run here. Flow-GRPO's runs are
only looked up there (run benchmarks/sample_efficiency.py for them).

    python benchmarks/fdfo_early_rate.py                  # the default variants, alignment, 16 epochs, 2 seeds
    python benchmarks/fdfo_early_rate.py --ties           # only the tie diagnostic (seconds)
    python benchmarks/fdfo_early_rate.py --reward colourfulness --epochs 4 --seeds 5 --variants lr_1e-3 lr_3e-3

Results: OUT/early_rate.json and .png for the default (alignment, 16 epochs), else
OUT/early_rate_<reward>_<N>ep.json and .png; run files under OUT/runs.

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

from efficiency_stats import N_BOOT, bootstrap, curve_auc, fmt_interval  # noqa: E402
from sample_efficiency import IMAGES_PER_EPOCH, LABELS, REWARDS, find_run, run_all, run_path, run_settings  # noqa: E402

EARLY_EPOCHS = 16  # the default budget: 16 epochs of IMAGES_PER_EPOCH reward evaluations
EARLY_EVALS = EARLY_EPOCHS * IMAGES_PER_EPOCH
HELDOUT = (32, 2)  # held-out prompts x seeds, as in the sample-efficiency benchmark
BASELINE = "flow_grpo"  # every variant is compared with this method's benchmark runs (default --baselines)
BASELINE_METHODS = ("flow_grpo", "diffusion_nft")  # the methods --baselines may name

#: name -> (config overrides, images per epoch, what it tests)
VARIANTS: dict[str, tuple[dict, int, str]] = {
    "preset": ({}, IMAGES_PER_EPOCH, "toy preset: raw churn 0.05, 32 pairs/epoch, all 20 steps, raw dR, lr 3e-4"),
    "churn_0.02": ({"churn_strength": 0.02}, IMAGES_PER_EPOCH, "weaker churn (closer pairs)"),
    "churn_0.2": ({"churn_strength": 0.2}, IMAGES_PER_EPOCH, "stronger churn (4x)"),
    "churn_0.4": ({"churn_strength": 0.4}, IMAGES_PER_EPOCH, "much stronger churn (8x)"),
    "prior_0.2": ({"churn": "prior", "churn_strength": 0.2}, IMAGES_PER_EPOCH, "churn only at t = 1"),
    "interval_0.3": ({"churn": "interval", "churn_strength": 0.3}, IMAGES_PER_EPOCH,
                     "churn around one logit-normal time"),
    "pairs_16": ({}, IMAGES_PER_EPOCH // 2, "16 pairs/epoch, twice the epochs (same evaluations)"),
    "pairs_64": ({}, IMAGES_PER_EPOCH * 2, "64 pairs/epoch, half the epochs (same evaluations)"),
    "steps_5": ({"steps_per_sample": 5}, IMAGES_PER_EPOCH, "train on 5 random steps of 20 per sample"),
    "steps_10": ({"steps_per_sample": 10}, IMAGES_PER_EPOCH, "train on 10 random steps of 20 per sample"),
    "std_norm": ({"reward_normalization": "std"}, IMAGES_PER_EPOCH, "dR divided by the epoch's reward std"),
    "lr_1e-4": ({"lr": 1e-4}, IMAGES_PER_EPOCH, "learning rate 1e-4 (a third of the preset)"),
    "lr_1e-3": ({"lr": 1e-3}, IMAGES_PER_EPOCH, "learning rate 1e-3 (3.3x the preset)"),
    "lr_3e-3": ({"lr": 3e-3}, IMAGES_PER_EPOCH, "learning rate 3e-3 (10x the preset; Flow-GRPO's)"),
    "churn_0.2_lr_1e-4": ({"churn_strength": 0.2, "lr": 1e-4}, IMAGES_PER_EPOCH, "churn 0.2, learning rate 1e-4"),
    "churn_0.2_lr_1e-3": ({"churn_strength": 0.2, "lr": 1e-3}, IMAGES_PER_EPOCH, "churn 0.2, learning rate 1e-3"),
    # Groups of branches (an extension beyond the paper): the same 64 images per epoch as 16 groups
    # of 4 or 8 groups of 8, each giving K - 1 finite-difference directions.
    "branches_4": ({"branches": 4}, IMAGES_PER_EPOCH, "groups of 4 branches (16 groups/epoch)"),
    "branches_8": ({"branches": 8}, IMAGES_PER_EPOCH, "groups of 8 branches (8 groups/epoch)"),
    "branches_4_churn_0.2": ({"branches": 4, "churn_strength": 0.2}, IMAGES_PER_EPOCH,
                             "groups of 4 branches, churn 0.2"),
}
DEFAULT_VARIANTS = ["churn_0.02", "churn_0.2", "prior_0.2", "pairs_16", "pairs_64", "steps_5", "std_norm", "lr_1e-3",
                    "lr_3e-3"]
TIE_STRENGTHS = (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4)


def variant_jobs(name: str, seeds: int, out: Path, reward: str = "alignment",
                 epochs: int = EARLY_EPOCHS) -> list[tuple[dict, Path]]:
    """(settings, result file) of a variant's runs on `reward` for a budget of `epochs` epochs of
    IMAGES_PER_EPOCH reward evaluations (a variant with other pairs per epoch runs as many epochs as
    keep that number of evaluations). The preset's runs are the sample-efficiency benchmark's FDFO
    runs of that reward: its files are reused (a longer run's first epochs too) and the missing
    ones run here, into the benchmark's folder (`out`'s sibling sample_efficiency).

    Raises ValueError when the budget is not a whole number of the variant's epochs."""
    extra, ipe, _ = VARIANTS[name]
    budget = epochs * IMAGES_PER_EPOCH
    if budget % ipe:
        raise ValueError(f"variant {name} scores {ipe} images per epoch, which does not divide the budget of "
                         f"{budget} evaluations ({epochs} epochs of {IMAGES_PER_EPOCH}): choose another --epochs")
    if name == "preset":
        runs = [run_settings("fdfo", reward, seed, epochs, IMAGES_PER_EPOCH, HELDOUT) for seed in range(seeds)]
        return [(s, run_path(out.parent / "sample_efficiency", s)) for s in runs]
    runs = [run_settings("fdfo", reward, seed, budget // ipe, ipe, HELDOUT, extra) for seed in range(seeds)]
    return [(s, run_path(out, s, f"-{name}")) for s in runs]


def baseline_runs(seeds: int, out: Path, reward: str, epochs: int, method: str = BASELINE) -> list[dict]:
    """The sample-efficiency benchmark's finished runs of `method` on `reward` at this budget (from
    `out`'s sibling sample_efficiency; a longer run's first epochs too). Looked up, never run here."""
    runs = [run_settings(method, reward, seed, epochs, IMAGES_PER_EPOCH, HELDOUT) for seed in range(seeds)]
    found = (find_run(s, run_path(out.parent / "sample_efficiency", s)) for s in runs)
    return [r for r in found if r is not None]


def truncate(curve: list[dict], budget: float) -> list[dict]:
    return [p for p in curve if p["evals"] <= budget]


def _auc(curve: list[dict]) -> float:
    return curve_auc([p["evals"] for p in curve], [p["heldout"] for p in curve])


def paired_diff(runs: list[dict], others: dict[int, list[dict]], budget: float, n_boot: int = N_BOOT) -> dict | None:
    """Paired (same seed) AUC and final held-out differences `runs` minus `others` (seed -> curve)
    over `budget` evaluations, with 95% bootstrap intervals over the shared seeds; None if none."""
    rs = [r for r in runs if r["seed"] in others]
    if not rs:
        return None
    curves = [truncate(r["curve"], budget) for r in rs]
    d_auc = np.array([_auc(c) - _auc(others[r["seed"]]) for r, c in zip(rs, curves)])
    d_fin = np.array([c[-1]["heldout"] - others[r["seed"]][-1]["heldout"] for r, c in zip(rs, curves)])
    return {"seeds": [r["seed"] for r in rs],
            "auc_diff": bootstrap(lambda i: float(d_auc[i].mean()), len(rs), n_boot=n_boot),
            "final_diff": bootstrap(lambda i: float(d_fin[i].mean()), len(rs), n_boot=n_boot),
            "higher_auc_seeds": int((d_auc > 0).sum())}


def summarise_variants(results: dict[str, list[dict]], baselines: dict[str, list[dict]] | list[dict], budget: float,
                       n_boot: int = N_BOOT) -> dict[str, dict]:
    """Per variant (its finished runs in `results`, the preset's under "preset"): AUC and final
    held-out over `budget` evaluations with 95% bootstrap intervals over seeds, the paired
    differences to the preset and to each baseline method's runs (`baselines`: method -> runs, or
    one list of BASELINE's runs; same seeds only), training CPU s.

    Row keys: "vs_baselines" (method -> paired difference or None), "vs_baseline" (the first
    baseline's), "ahead_of_baselines": True when every baseline is paired on all of the variant's
    seeds and every AUC difference's 95% interval lies above zero (the issue-30 decision rule on
    this reward)."""
    if not isinstance(baselines, dict):
        baselines = {BASELINE: baselines}
    preset = {r["seed"]: truncate(r["curve"], budget) for r in results.get("preset", [])}
    bases = {m: {r["seed"]: truncate(r["curve"], budget) for r in runs} for m, runs in baselines.items()}
    rows = {}
    for name, runs in results.items():
        rs = sorted(runs, key=lambda r: r["seed"])
        if not rs:
            continue
        curves = [truncate(r["curve"], budget) for r in rs]
        if curves[0][-1]["evals"] != budget:
            raise ValueError(f"{name}: run of {curves[0][-1]['evals']} evaluations where {budget} were asked for")
        auc = np.array([_auc(c) for c in curves])
        fin = np.array([c[-1]["heldout"] for c in curves])
        vs = {m: paired_diff(rs, base, budget, n_boot) for m, base in bases.items()}
        ahead = bool(vs) and all(d is not None and len(d["seeds"]) == len(rs) and d["auc_diff"][1] > 0
                                 for d in vs.values())
        rows[name] = {"what": VARIANTS[name][2], "seeds": [r["seed"] for r in rs], "lr": rs[0].get("lr"),
                      "auc": bootstrap(lambda i, v=auc: float(v[i].mean()), len(rs), n_boot=n_boot),
                      "final": bootstrap(lambda i, v=fin: float(v[i].mean()), len(rs), n_boot=n_boot),
                      "auc_per_seed": auc.tolist(), "final_per_seed": fin.tolist(),
                      "vs_preset": paired_diff(rs, preset, budget, n_boot) if name != "preset" else None,
                      "vs_baselines": vs, "vs_baseline": next(iter(vs.values()), None),
                      "ahead_of_baselines": ahead,
                      "train_cpu_seconds": float(np.mean([c[-1].get("cpu_seconds", 0.0) for c in curves])),
                      "run_cpu_seconds": float(np.mean([r.get("cpu_seconds", 0.0) for r in rs]))}
    return rows


def seed_mean_curve(runs: list[dict], budget: float) -> tuple[list[float], list[float]]:
    curves = [truncate(r["curve"], budget) for r in runs]
    xs = sorted({p["evals"] for c in curves for p in c})
    ys = [float(np.mean([p["heldout"] for c in curves for p in c if p["evals"] == x])) for x in xs]
    return xs, ys


def ties(out: Path, n_pairs: int = 64) -> dict:
    """dR = 0 fraction, mean |dR| and RMS endpoint difference of pairs from the untrained toy model."""
    import torch

    from fdfo_core.config import load_config
    from fdfo_core.flow.conditioning import cond_select
    from fdfo_core.rewards import build_reward
    from fdfo_core.flow.paired_sampler import ChurnSettings, sample_pairs
    from fdfo_core.toy import toy_prompt_sets
    from fdfo_core.flow.seeds import generator
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


def report_name(reward: str, epochs: int) -> str:
    """File stem of a report: early_rate (the default: alignment, 16 epochs) or early_rate_<reward>_<N>ep."""
    return "early_rate" if (reward, epochs) == ("alignment", EARLY_EPOCHS) else f"early_rate_{reward}_{epochs}ep"


def report(rows: dict[str, dict], reward: str, budget: int) -> list[str]:
    """The markdown table of `summarise_variants`' rows (one "AUC - baseline" column per baseline)."""
    bases = list(next(iter(rows.values())).get("vs_baselines", {BASELINE: None})) if rows else [BASELINE]
    lines = [(f"FDFO early rate on the toy model, {REWARDS[reward]['label']}, {budget} reward evaluations; 95% bootstrap "
              "intervals over seeds; differences paired by seed"),
             "| variant | what | seeds | AUC | final | AUC - preset | final - preset | "
             + " | ".join(f"AUC - {LABELS[m]}" for m in bases) + " | train CPU s |",
             "|---|---|---|---|---|---|---|" + "---|" * len(bases) + "---|"]
    for name, row in rows.items():
        def diff(d, key):
            if d is None:
                return "n/a"
            return f"{fmt_interval(*d[key], digits=4)} ({d['higher_auc_seeds']}/{len(d['seeds'])} higher)" \
                if key == "auc_diff" else fmt_interval(*d[key], digits=4)
        lines.append(f"| {name} | {row['what']} | {len(row['seeds'])} | {fmt_interval(*row['auc'], digits=4)} | "
                     f"{fmt_interval(*row['final'], digits=4)} | {diff(row['vs_preset'], 'auc_diff')} | "
                     f"{diff(row['vs_preset'], 'final_diff')} | "
                     + " | ".join(diff(row.get("vs_baselines", {}).get(m, row.get("vs_baseline")), "auc_diff")
                                  for m in bases)
                     + f" | {row['train_cpu_seconds']:.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    ap.add_argument("--reward", choices=list(REWARDS), default="alignment")
    ap.add_argument("--epochs", type=int, default=EARLY_EPOCHS,
                    help=f"budget: this many epochs of {IMAGES_PER_EPOCH} reward evaluations (default {EARLY_EPOCHS})")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--ties", action="store_true", help="only the tie diagnostic (alignment)")
    ap.add_argument("--out", default="runs/fdfo_early_rate")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", action="store_true", help="table and plot from the finished run files only")
    ap.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    ap.add_argument("--baselines", nargs="+", choices=BASELINE_METHODS, default=[BASELINE],
                    help="methods every variant is paired with (their sample-efficiency runs, looked up)")
    ap.add_argument("--skip-preset", action="store_true",
                    help="run only the variants' missing runs; the preset's existing runs are still used")
    ap.add_argument("--tag", default="", help="suffix of the report's file names (several reports per reward and budget)")
    args = ap.parse_args()
    if args.epochs < 1:
        ap.error(f"--epochs must be at least 1, got {args.epochs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.ties:
        summary: dict = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        summary["ties"] = ties(out)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        return
    budget = args.epochs * IMAGES_PER_EPOCH
    names = list(dict.fromkeys(["preset", *args.variants]))
    try:
        jobs = {n: variant_jobs(n, args.seeds, out, args.reward, args.epochs) for n in names}
    except ValueError as e:
        ap.error(str(e))
    if not args.replot:
        # The variants first, the preset's runs (often already there) last: an interrupted run has the new data.
        run_all([j for n in [*names[1:], *([] if args.skip_preset else ["preset"])] for j in jobs[n]],
                args.workers, args.threads)
    results = {n: [r for r in (find_run(s, p) for s, p in js) if r is not None] for n, js in jobs.items()}
    for n, rs in results.items():
        if len(rs) < args.seeds:
            print(f"{n}: only {len(rs)} of {args.seeds} runs exist (--replot runs nothing)")
    baselines = {m: baseline_runs(args.seeds, out, args.reward, args.epochs, m) for m in args.baselines}
    for m, runs in baselines.items():
        if len(runs) < args.seeds:
            print(f"{LABELS[m]}: {len(runs)} of {args.seeds} runs found in {out.parent / 'sample_efficiency'} "
                  f"(to add them: python benchmarks/sample_efficiency.py --methods {m} --rewards {args.reward} "
                  f"--epochs {args.epochs} --seeds {args.seeds})")
    rows = summarise_variants(results, baselines, budget, args.n_boot)
    print()
    print("\n".join(report(rows, args.reward, budget)))
    for name, row in rows.items():
        if name != "preset" and row["ahead_of_baselines"]:
            print(f"{name}: ahead of {', '.join(LABELS[m] for m in baselines)} on {args.reward} (every AUC interval > 0)")
    stem = report_name(args.reward, args.epochs) + args.tag
    series = {n: seed_mean_curve(results[n], budget) for n in rows}
    for m, runs in baselines.items():
        if runs:
            series[LABELS[m]] = seed_mean_curve(runs, budget)
    record = {"reward": args.reward, "epochs": args.epochs, "evals": budget, "seeds": args.seeds,
              "baseline": args.baselines[0], "baselines": args.baselines, "variants": rows, "curves": series,
              "cpu_seconds_all_runs": float(sum(r.get("cpu_seconds", 0.0) for rs in results.values() for r in rs))}
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    from fdfo_core.files.drawing import line_plot, save_png

    save_png(line_plot(series, xlabel="reward evaluations", ylabel=f"held-out {REWARDS[args.reward]['label']}",
                       size=(760, 460), title=f"FDFO early-rate variants on the toy model, {REWARDS[args.reward]['label']} "
                                              f"(seed means over {args.seeds} seeds)"), out / f"{stem}.png")
    print(f"\n{out / stem}.json, .png ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
