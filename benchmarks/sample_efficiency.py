"""Sample efficiency on the bundled toy model: FDFO vs Flow-GRPO vs DiffusionNFT, paired seeds,
two rewards, bootstrap intervals.

Every method gets the same budget of reward evaluations (images scored during training), the same
model, training prompts and reward, and the same seeds: seed k gives every method the same LoRA
initialisation (pairing). After every epoch the held-out reward (captions never seen in
pretraining x fixed seeds, plain Euler sampling) is measured. Per reward and method the table gives
the area under the held-out curve (AUC: the mean held-out reward over the whole budget), the final
held-out reward, and the evaluations the seed-mean curve needs to reach fixed thresholds, each with
a 95% percentile-bootstrap interval over seeds; then paired FDFO-vs-baseline differences.

    python benchmarks/sample_efficiency.py                  # full: 3 methods x 2 rewards x 5 seeds x 8 epochs
    python benchmarks/sample_efficiency.py --quick          # 2 seeds x 3 epochs of 32 images, < 10 min on 2 cores
    python benchmarks/sample_efficiency.py --smoke          # the test's tiny configuration of the same path
    python benchmarks/sample_efficiency.py --sweep --methods diffusion_nft   # learning-rate sweep
    python benchmarks/sample_efficiency.py --replot         # table and plots again from OUT/runs

Runs go to OUT/runs/<reward>/<method>/seed<k>.json as they finish; a rerun reuses every file whose
settings match, so an interrupted benchmark continues where it stopped (--fresh to redo). Runs are
spread over --workers processes of --threads threads each (default 2 x 1 on 2 cores: the toy model
is too small for two threads to help one run).

Budget accounting: FDFO scores 2 images per pair (pairs_per_epoch pairs per epoch); Flow-GRPO and
DiffusionNFT score G images per group (groups_per_epoch groups). All are set to the same images per
epoch, so an epoch costs every method the same number of reward evaluations.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from efficiency_stats import N_BOOT, bootstrap, curve_auc, fmt_interval, fmt_ratio, ratio_stat, reach_stat  # noqa: E402

from fdfo_core.files.text_files import read_json_file  # noqa: E402

IMAGES_PER_EPOCH = 64
EPOCHS = 4  # 256 reward evaluations per run: see docs/benchmarks.md (the budget that fits 2 shared cores)
GROUP = 8  # images per prompt for the group methods (24 in their SD3.5 configs)

# Per-method settings on the toy: the toy preset plus what each method needs, scaled from its
# paper. Learning rates are the best of each method's sweep (`--sweep`; docs/benchmarks.md has the tables).
# Flow-GRPO: noise level 0.7, clip 1e-4, KL beta 0.01 (PickScore setting), timestep fraction 0.99,
# 2 optimizer steps per epoch. DiffusionNFT: beta 1 (its GenEval / PickScore / HPS setting),
# rewards -> r with group means and the global std clipped at 5, timestep fraction 0.99, adaptive
# weighting, KL 1e-4, soft update eta = min(rate * step, 0.5) with its published rate 0.001 per step.
# FDFO keeps the toy preset (lr 3e-4, churn 0.05, 4 optimizer steps per epoch).
def method_values(method: str, images_per_epoch: int = IMAGES_PER_EPOCH) -> dict[str, Any]:
    groups = max(1, images_per_epoch // GROUP)
    table = {
        "fdfo": {},
        "flow_grpo": {"grpo_group_size": GROUP, "grpo_groups_per_epoch": groups, "optimizer_steps_per_epoch": 2,
                      "lr": 3e-3},
        "flow_grpo_fast": {"grpo_group_size": GROUP, "grpo_groups_per_epoch": groups, "optimizer_steps_per_epoch": 2,
                           "lr": 1e-3, "grpo_window": 2},
        "diffusion_nft": {"nft_group_size": GROUP, "nft_groups_per_epoch": groups, "optimizer_steps_per_epoch": 2,
                          "lr": 1e-3},
    }
    return {"pairs_per_epoch": images_per_epoch // 2, **table[method]}


METHODS = ("fdfo", "flow_grpo", "flow_grpo_fast", "diffusion_nft")
TABLE_METHODS = ("fdfo", "flow_grpo", "diffusion_nft")
LABELS = {"fdfo": "FDFO", "flow_grpo": "Flow-GRPO", "flow_grpo_fast": "Flow-GRPO-Fast", "diffusion_nft": "DiffusionNFT"}

# Two rewards. Thresholds are fixed levels of the held-out reward, set before the full run.
# - alignment: the toy caption alignment; piecewise constant in the pixels (colours are snapped to
#   a palette, shapes counted), the alignment-type reward where the FDFO paper reports its edge.
# - colourfulness: Hasler-Suesstrunk colourfulness / 100, a smooth statistic of every pixel with no
#   prompt in it, like the aesthetic-type rewards (PickScore) the paper reports as easy for both:
#   every pair of images differs in it, so no pair's finite difference is wasted on a tie.
REWARDS = {
    "alignment": {"spec": "toy_alignment", "label": "toy alignment", "thresholds": (0.69, 0.70, 0.72)},
    "colourfulness": {"spec": "0.01*colourfulness", "label": "colourfulness / 100", "thresholds": (0.95, 1.05, 1.15)},
}

SWEEP_LRS = [1e-4, 3e-4, 1e-3, 3e-3]

#: Sampling steps of --smoke (the toy preset's 20 elsewhere): the tests' run checks the code path only.
SMOKE_NUM_STEPS = 4


# --- one run ---------------------------------------------------------------------------------------

def load_toy(cfg):
    from fdfo_core.backends.diffusers_backend import build_backend
    from fdfo_core.toy import TOY_MAX_SEQUENCE_LENGTH, default_toy_model_path

    return build_backend(default_toy_model_path(), cfg, device="cpu", max_sequence_length=TOY_MAX_SEQUENCE_LENGTH)


def held_out_eval(backend, reward, held, cfg) -> tuple[float, float]:
    from fdfo_core.backends.generation import generate_images
    from fdfo_core.toy import prompt_diversity

    images = generate_images(backend, held.prompts, held.seeds, cfg.num_steps, cfg.height, cfg.width, batch_size=64)
    return float(reward(images, held.prompts).mean()), prompt_diversity(images, held.prompts)


#: Held-out evaluation after every epoch up to EVAL_DENSE, then after every EVAL_EVERY-th epoch and the
#: last: the early curve, where the methods differ most, at full resolution, at two thirds of the cost.
EVAL_DENSE, EVAL_EVERY = 10, 2


def eval_epochs(epochs: int, dense: int = EVAL_DENSE, every: int = EVAL_EVERY) -> list[int]:
    """The epochs after which the held-out reward is measured (epoch 0 = before training)."""
    return [e for e in range(epochs + 1) if e <= dense or e % every == 0 or e == epochs]


def run_settings(method: str, reward: str, seed: int, epochs: int, images_per_epoch: int, heldout: tuple[int, int],
                 extra: dict | None = None, evals: list[int] | None = None) -> dict[str, Any]:
    """Everything that determines a run's result (its cache key)."""
    values = {"epochs": epochs, "seed": seed, "method": method, "checkpoint_every": 0,
              **method_values(method, images_per_epoch), **(extra or {})}
    return {"method": method, "reward": reward, "seed": seed, "images_per_epoch": images_per_epoch,
            "heldout": list(heldout), "eval_epochs": evals if evals is not None else eval_epochs(epochs),
            "config": values}


def run_one(settings: dict[str, Any], log=print) -> dict[str, Any]:
    """Train one (method, reward, seed) and measure the held-out reward after every epoch."""
    from fdfo_core.methods import build_trainer
    from fdfo_core.config import load_config
    from fdfo_core.cli.demo import held_out_set
    from fdfo_core.rewards import build_reward
    from fdfo_core.toy import toy_prompt_sets
    from fdfo_core.run.hooks import Callbacks

    wall0, cpu0 = time.perf_counter(), time.process_time()
    # eval_every 0: this benchmark evaluates every epoch itself (the trainer's guardrails would repeat
    # it; they do not change training, so the cached runs' settings stay as they were).
    cfg = load_config("toy", overrides={**settings["config"], "eval_every": 0})
    backend = load_toy(cfg)
    reward = build_reward(REWARDS[settings["reward"]]["spec"])
    held = held_out_set(*settings["heldout"], seed=0)
    train_prompts, _ = toy_prompt_sets(seed=0)
    r0, d0 = held_out_eval(backend, reward, held, cfg)
    curve = [{"epoch": 0, "evals": 0, "seconds": 0.0, "cpu_seconds": 0.0, "heldout": r0, "diversity": d0}]
    clock = {"train": 0.0, "cpu": 0.0, "mark": 0.0}

    measure = set(settings["eval_epochs"])

    def on_epoch_end(trainer, m):
        clock["train"] += m["time_epoch"]
        clock["cpu"] += time.process_time() - clock["mark"]  # training CPU time, robust to a shared machine
        if m["epoch"] not in measure:
            clock["mark"] = time.process_time()
            return
        r, d = held_out_eval(backend, reward, held, cfg)
        curve.append({"epoch": m["epoch"], "evals": m["images_seen"], "seconds": clock["train"],
                      "cpu_seconds": clock["cpu"], "heldout": r, "diversity": d, "train_reward": m["reward_mean"]})
        clock["mark"] = time.process_time()

    trainer = build_trainer(backend, reward, train_prompts, cfg, callbacks=Callbacks(on_epoch_end=on_epoch_end, log=None))
    clock["mark"] = time.process_time()
    trainer.train()
    out = {**settings, "lr": cfg.lr, "curve": curve, "wall_seconds": time.perf_counter() - wall0,
           "cpu_seconds": time.process_time() - cpu0}
    log(f"  {settings['reward']:13s} {settings['method']:14s} seed {settings['seed']}  lr {cfg.lr:g}  held-out "
        f"{curve[0]['heldout']:.4f} -> {curve[-1]['heldout']:.4f}  ({out['wall_seconds']:.0f} s wall, "
        f"{out['cpu_seconds']:.0f} s CPU)")
    return out


def run_path(out: Path, settings: dict[str, Any], tag: str = "") -> Path:
    name = f"seed{settings['seed']}{tag}.json"
    return out / "runs" / settings["reward"] / settings["method"] / name


def _worker(job) -> dict[str, Any]:
    settings, path, threads = job
    import torch

    torch.set_num_threads(threads)
    result = run_one(settings)
    from fdfo_core.run.checkpoints import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    return result


def truncate_run(old: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any] | None:
    """`old` cut to `settings`' budget if it is the same run trained longer, else None.

    Nothing in a run depends on its total epochs (no learning-rate schedule, per-epoch seeds; the
    trainer resumes a finished run for more epochs for the same reason), so the first E epochs of a
    longer run are the E-epoch run: its curve, measured at a superset of the epochs, is kept up to E.
    """
    if old.get("config", {}).get("epochs", 0) < settings["config"]["epochs"]:
        return None
    same = {k: v for k, v in settings.items() if k not in ("config", "eval_epochs")}
    cfg = {k: v for k, v in settings["config"].items() if k != "epochs"}
    if any(old.get(k) != v for k, v in same.items()) or any(old["config"].get(k) != v for k, v in cfg.items()):
        return None
    need = set(settings["eval_epochs"])
    curve = [p for p in old["curve"] if p["epoch"] in need]
    if {p["epoch"] for p in curve} != need:
        return None
    return {**old, **settings, "curve": curve, "truncated_from_epochs": old["config"]["epochs"]}


def find_run(settings: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """A finished run with exactly these settings: `path`, or any other file of the same method
    and reward (a sweep's run at the table's learning rate is the table's run), or the first
    epochs of a longer such run (`truncate_run`)."""
    candidates = [path] + sorted(p for p in path.parent.glob("*.json") if p != path) if path.parent.exists() else []
    for p in candidates:
        if p.exists():
            old = read_json_file(p, "benchmark run")
            if all(old.get(k) == v for k, v in settings.items()):
                return old
    for p in candidates:
        if p.exists():
            cut = truncate_run(read_json_file(p, "benchmark run"), settings)
            if cut is not None:
                return cut
    return None


def run_all(jobs: list[tuple[dict, Path]], workers: int, threads: int, fresh: bool = False) -> list[dict]:
    """Run (settings, path) jobs, reusing a finished file whose settings match; results in job order."""
    results: list[dict | None] = [None] * len(jobs)
    todo = []
    for i, (settings, path) in enumerate(jobs):
        found = None if fresh else find_run(settings, path)
        if found is not None:
            results[i] = found
        else:
            todo.append(i)
    print(f"{len(jobs) - len(todo)} runs reused, {len(todo)} to run on {workers} worker(s) x {threads} thread(s)",
          flush=True)
    if workers <= 1:
        import torch

        torch.set_num_threads(threads)
        for i in todo:
            results[i] = _worker((jobs[i][0], jobs[i][1], threads))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for i, res in zip(todo, pool.imap(_worker, [(jobs[i][0], jobs[i][1], threads) for i in todo])):
                results[i] = res
    return results  # type: ignore[return-value]


# --- statistics and report ---------------------------------------------------------------------------

def curves_of(runs: list[dict], key: str = "heldout") -> np.ndarray:
    n = min(len(r["curve"]) for r in runs)
    return np.array([[p[key] for p in r["curve"][:n]] for r in sorted(runs, key=lambda r: r["seed"])])


def evals_of(runs: list[dict]) -> list[float]:
    n = min(len(r["curve"]) for r in runs)
    return [float(p["evals"]) for p in runs[0]["curve"][:n]]


def summarise(runs: dict[str, list[dict]], thresholds: tuple[float, ...], n_boot: int = N_BOOT) -> dict[str, Any]:
    """Per method: AUC, final, evals to reach each threshold (bootstrap over seeds, `n_boot`
    resamples), diversity, time; paired FDFO-minus-baseline AUC and final differences, and evals
    ratios (paired only where both methods ran the same seeds)."""
    def boot(stat, n):
        return bootstrap(stat, n, n_boot=n_boot)

    rows, paired = [], []
    seeds = {m: sorted(r["seed"] for r in rs) for m, rs in runs.items()}
    for m, rs in runs.items():
        xs, ys = evals_of(rs), curves_of(rs)
        n = ys.shape[0]
        aucs = np.array([curve_auc(xs, y) for y in ys])
        row = {
            "method": m, "seeds": seeds[m], "lr": rs[0]["lr"], "start": float(ys[:, 0].mean()), "budget": xs[-1],
            "auc": boot(lambda i: float(aucs[i].mean()), n),
            "final": boot(lambda i: float(ys[i, -1].mean()), n),
            "best": float(ys.mean(axis=0).max()),
            "reach": {str(t): boot(reach_stat(xs, ys, t), n) for t in thresholds},
            "reached_by_seeds": {str(t): int(sum(np.any(y >= t) for y in ys)) for t in thresholds},
            "diversity_before": float(curves_of(rs, "diversity")[:, 0].mean()),
            "diversity_after": float(curves_of(rs, "diversity")[:, -1].mean()),
            "train_cpu_seconds": float(np.mean([r["curve"][-1].get("cpu_seconds", 0.0) for r in rs])),
            "train_wall_seconds": float(np.mean([r["curve"][-1]["seconds"] for r in rs])),
        }
        rows.append(row)
    if "fdfo" in runs:
        for m in runs:
            if m == "fdfo" or seeds[m] != seeds["fdfo"]:
                continue  # paired only on the same seeds
            xs = evals_of(runs["fdfo"] + runs[m])
            a, b = curves_of(runs["fdfo"])[:, : len(xs)], curves_of(runs[m])[:, : len(xs)]
            da = np.array([curve_auc(xs, y) for y in a]) - np.array([curve_auc(xs, y) for y in b])
            df = a[:, -1] - b[:, -1]
            paired.append({
                "baseline": m,
                "auc_diff": boot(lambda i: float(da[i].mean()), len(da)),
                "final_diff": boot(lambda i: float(df[i].mean()), len(df)),
                "fdfo_higher_auc_seeds": int((da > 0).sum()), "seeds": len(da),
                "evals_ratio": {str(t): boot(ratio_stat(xs, a, b, t), len(da)) for t in thresholds},
            })
    return {"rows": rows, "paired": paired}


def report(results: list[dict], out: Path, seconds: float, methods: list[str], n_boot: int = N_BOOT) -> dict[str, Any]:
    """Print the tables, write table.json and the plots; `seconds` is what the runs took."""
    from fdfo_core.files.drawing import line_plot, save_png

    tables = {}
    for reward, spec in REWARDS.items():
        runs = {m: [r for r in results if r["reward"] == reward and r["method"] == m] for m in methods}
        runs = {m: rs for m, rs in runs.items() if rs}
        if not runs:
            continue
        thresholds = spec["thresholds"]
        summary = summarise(runs, thresholds, n_boot)
        tables[reward] = summary
        n_seeds = min(len(rs) for rs in runs.values())
        budget = summary["rows"][0]["budget"]
        print(f"\n## {spec['label']} ({n_seeds} seeds, {budget:.0f} reward evaluations; 95% bootstrap intervals)")
        cols = ["method", "AUC (mean held-out)", "final held-out"] + [f"evals to {t:g}" for t in thresholds] + \
               ["diversity", "train CPU s"]
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for row in summary["rows"]:
            reach = [fmt_interval(*row["reach"][str(t)], integer=True) + f" ({row['reached_by_seeds'][str(t)]}/{n_seeds})"
                     for t in thresholds]
            print(f"| {LABELS[row['method']]} (lr {row['lr']:g}) | {fmt_interval(*row['auc'])} | "
                  f"{fmt_interval(*row['final'])} | " + " | ".join(reach) +
                  f" | {row['diversity_before']:.3f} -> {row['diversity_after']:.3f} | {row['train_cpu_seconds']:.0f} |")
        print(f"start (untrained): {summary['rows'][0]['start']:.4f}")
        for p in summary["paired"]:
            ratios = ", ".join(f"{t:g}: {fmt_ratio(*p['evals_ratio'][str(t)], 'FDFO', LABELS[p['baseline']])}"
                               for t in thresholds)
            print(f"FDFO - {LABELS[p['baseline']]}: AUC {fmt_interval(*p['auc_diff'], digits=4)}, final "
                  f"{fmt_interval(*p['final_diff'], digits=4)}, FDFO higher AUC on {p['fdfo_higher_auc_seeds']}/"
                  f"{p['seeds']} seeds; FDFO's evals / theirs to reach {ratios}")

        for key, label, name in (("evals", "reward evaluations (images scored)", f"{reward}_vs_evals.png"),
                                 ("cpu_seconds", "training CPU seconds per run", f"{reward}_vs_cpu.png")):
            series, bands = {}, {}
            for m, rs in runs.items():
                ys = curves_of(rs)
                xs = curves_of(rs, key).mean(axis=0) if key != "evals" else evals_of(rs)
                mean = ys.mean(axis=0)
                band = [bootstrap(lambda i, j=j: float(ys[i, j].mean()), ys.shape[0], n_boot=min(n_boot, 2000))[1:] for j in
                        range(ys.shape[1])]
                series[LABELS[m]] = (list(xs), list(mean))
                bands[LABELS[m]] = band
            save_png(line_plot(series, bands=bands, xlabel=label, ylabel=f"held-out {spec['label']}",
                               title=f"toy, {spec['label']}: held-out ({n_seeds} seeds, mean, 95% bootstrap band)"),
                     out / name)
    cpu = float(sum(r.get("cpu_seconds", 0.0) for r in results))
    table = {"tables": tables, "seconds": seconds, "run_cpu_seconds": cpu, "runs": len(results), "methods": methods}
    (out / "table.json").write_text(json.dumps(table, indent=1))
    print(f"\nplots and data in {out} ({seconds:.0f} s of runs; {len(results)} runs took {cpu:.0f} CPU s in all, "
          "counted whole for runs reused from longer ones)")
    return table


# --- sweep -------------------------------------------------------------------------------------------

def sweep(args, out: Path) -> dict:
    jobs = []
    for method in args.methods:
        for lr in args.lrs:
            for seed in range(args.seeds):
                s = run_settings(method, args.rewards[0], seed, args.epochs, args.images_per_epoch,
                                 (args.heldout_prompts, 2), {**args.extra, "lr": lr})
                jobs.append((s, run_path(out, s, f"-lr{lr:g}" + args.tag)))
    results = run_all(jobs, args.workers, args.threads, args.fresh)
    table: dict[str, dict] = {}
    for method in args.methods:
        for lr in args.lrs:
            rs = [r for r in results if r["method"] == method and r["lr"] == lr]
            xs, ys = evals_of(rs), curves_of(rs)
            table[f"{method} lr={lr:g}{args.tag}"] = {
                "auc": float(np.mean([curve_auc(xs, y) for y in ys])), "best": float(ys.mean(axis=0).max()),
                "final": float(ys[:, -1].mean()), "seeds": len(rs), "epochs": args.epochs,
                "curve": [float(v) for v in ys.mean(axis=0)],
            }
    print(f"\nlearning-rate sweep ({args.rewards[0]}, {args.seeds} seed(s), {args.epochs} epochs; criterion AUC):")
    for k, v in table.items():
        print(f"  {k:34s} AUC {v['auc']:.4f}  best {v['best']:.4f}  final {v['final']:.4f}")
    for m in args.methods:
        best = max((v["auc"], k) for k, v in table.items() if k.startswith(m + " "))
        print(f"best for {m}: {best[1]} (AUC {best[0]:.4f})")
    path = out / "sweep.json"
    old = read_json_file(path, "sweep record") if path.exists() else {}
    path.write_text(json.dumps({**old, **table}, indent=1))
    return table


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2 seeds x 3 epochs of 32 images, 16 held-out prompts x 2 seeds (< 10 min on 2 cores)")
    ap.add_argument("--smoke", action="store_true",
                    help="2 seeds x 2 epochs of 8 images, 2 held-out prompts x 2 seeds, 4 sampling steps (tests)")
    ap.add_argument("--sweep", action="store_true", help="learning-rate sweep of --methods on the first reward")
    ap.add_argument("--seeds", type=int, default=None, help="default 5 (sweep: 1)")
    ap.add_argument("--only-seeds", type=int, nargs="+", metavar="K",
                    help="run only these of the seeds (spread one benchmark over several invocations or machines "
                         "sharing OUT; the table covers the files present)")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--images-per-epoch", type=int, default=IMAGES_PER_EPOCH)
    ap.add_argument("--heldout-prompts", type=int, default=32)
    ap.add_argument("--heldout-seeds", type=int, default=2)
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), help=f"default {' '.join(TABLE_METHODS)}")
    ap.add_argument("--rewards", nargs="+", choices=list(REWARDS), default=list(REWARDS))
    ap.add_argument("--lrs", nargs="+", type=float, default=SWEEP_LRS, help="learning rates for --sweep")
    ap.add_argument("--out", default="runs/sample_efficiency")
    ap.add_argument("--workers", type=int, default=2, help="parallel runs (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--fresh", action="store_true", help="rerun even where a matching result file exists")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override config fields for every run (exploration; the table's settings are method_values)")
    ap.add_argument("--tag", default="", help="suffix for result files of --set variants (sweeps)")
    ap.add_argument("--replot", action="store_true", help="redo the table and plots from OUT/runs")
    ap.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples (smoke: 1000)")
    args = ap.parse_args()
    args.methods = args.methods or list(TABLE_METHODS)
    args.extra = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.smoke:
        args.seeds, args.epochs, args.images_per_epoch, args.heldout_prompts, args.heldout_seeds = 2, 2, 8, 2, 2
        args.n_boot = min(args.n_boot, 1000)
        args.extra = {"num_steps": SMOKE_NUM_STEPS, **args.extra}
    elif args.quick:
        args.seeds, args.epochs, args.images_per_epoch, args.heldout_prompts, args.heldout_seeds = 2, 3, 32, 16, 2
    if args.seeds is None:
        args.seeds = 1 if args.sweep else 5
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.sweep:
        sweep(args, out)
        print(f"({time.perf_counter() - t0:.0f} s)")
        return

    jobs = []
    for seed in (args.only_seeds if args.only_seeds is not None and not args.replot else range(args.seeds)):
        for reward in args.rewards:
            for m in args.methods:
                s = run_settings(m, reward, seed, args.epochs, args.images_per_epoch,
                                 (args.heldout_prompts, args.heldout_seeds), args.extra)
                jobs.append((s, run_path(out, s, args.tag)))
    if args.replot:
        # The same reuse rules as a run (a sweep's file, a longer run's first epochs); missing runs are left out.
        results = [r for r in (find_run(s, p) for s, p in jobs) if r is not None]
        seconds = read_json_file(out / "table.json", "benchmark table").get("seconds", 0.0) if (out / "table.json").exists() else 0.0
        report(results, out, seconds, args.methods, args.n_boot)
        return
    print(f"{len(args.methods)} methods x {len(args.rewards)} rewards x {args.seeds} seeds x {args.epochs} epochs of "
          f"{args.images_per_epoch} reward evaluations; held-out: {args.heldout_prompts} prompts x {args.heldout_seeds} seeds",
          flush=True)
    results = run_all(jobs, args.workers, args.threads, args.fresh)
    seconds = time.perf_counter() - t0
    (out / "runs.json").write_text(json.dumps(results, indent=1))
    report(results, out, seconds, args.methods, args.n_boot)


if __name__ == "__main__":
    main()
