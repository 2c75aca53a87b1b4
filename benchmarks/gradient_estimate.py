"""How good is each method's update direction per reward evaluation? (issue 30 item 1)

On the bundled toy model, at fixed LoRA states (the untrained one, and one trained by FDFO for 256
reward evaluations on the same reward), each setting's update direction in LoRA-parameter space is
measured, not trained with:

- the direction of one block of BLOCK reward evaluations is minus the gradient of the method's own
  loss at the start of an epoch of that block (one optimizer step per epoch, captured before the
  step, nothing changed: every block starts from the same state). Blocks are independent (each its
  own seed: prompts, noise, churn); the direction of n evaluations is the sum of n / BLOCK blocks.
- consistency(n): the cosine between the directions of two disjoint sets of n evaluations (split
  half), averaged over the disjoint splits of the blocks. An unbiased estimate g + noise of variance
  s^2 / n has consistency ~ |g|^2 / (|g|^2 + s^2 / n): the higher, the less noise per evaluation.
- accuracy(n): the cosine between the direction of n evaluations and a reference ascent direction,
  the gradient of the mean reward of plain (churn-free) samples back-propagated through the whole
  sampling chain and the VAE decoder (`method="backprop_chain"`), averaged over REF_BLOCKS x
  REF_BLOCK samples; its own split-half cosine is printed (near 1: a reliable reference), with the
  expected cosine of the whole reference to the true gradient (`reliability`) and the accuracies
  divided by it;
- accuracy of the first AdamW step: the cosine between sign(direction) and the reference (from a
  fresh optimizer state AdamW's first step is lr x sign(gradient)).

The reward is colourfulness / 100 (differentiable, smooth, no ties), the one where FDFO trails
Flow-GRPO in the sample-efficiency benchmark (docs/benchmarks/early_rate.md). Settings: FDFO at
the toy preset (churn 0.05), churn 0.2, groups of 4 and 8 branches (`branches`); Flow-GRPO and
DiffusionNFT at the sample-efficiency benchmark's settings (group 8). Directions are raw gradients
(AdamW then rescales them per parameter; every method goes through the same optimizer).

    nice -n 19 python benchmarks/gradient_estimate.py            # ~10 CPU minutes on 1 thread (592 s measured)
    python benchmarks/gradient_estimate.py --smoke               # the test's tiny configuration

Writes OUT/gradient_estimate.json and OUT/{consistency,accuracy}_<state>.png; prints the tables
(docs/benchmarks/gradient_estimate.md has them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from sample_efficiency import GROUP, REWARDS, load_toy, method_values  # noqa: E402

REWARD = "colourfulness"
HELDOUT = (32, 2)  # the noise probe's held-out captions x seeds: the sample-efficiency benchmark's
BLOCK = 16  # reward evaluations per block: 8 pairs, 4 groups of 4 branches, 2 groups of 8 images
BLOCKS = 6  # blocks per (setting, state): 96 evaluations, splits of up to 2 x 48
REF_BLOCK, REF_BLOCKS = 32, 16  # the reference: 16 x 32 back-propagated samples
TRAIN_EPOCHS = 4  # the trained state: FDFO at the toy preset, 4 epochs of 64 evaluations, seed 0

#: setting -> (method, config values on top of the sample-efficiency benchmark's for that method)
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "FDFO churn 0.05 (preset)": ("fdfo", {}),
    "FDFO churn 0.2": ("fdfo", {"churn_strength": 0.2}),
    "FDFO K=4": ("fdfo", {"branches": 4}),
    "FDFO K=8": ("fdfo", {"branches": 8}),
    "FDFO K=4 churn 0.2": ("fdfo", {"branches": 4, "churn_strength": 0.2}),
    "Flow-GRPO": ("flow_grpo", {}),
    "DiffusionNFT": ("diffusion_nft", {}),
    # issue 30 item 3, the other knobs (run with --settings, to another --out)
    "FDFO 5 of 20 steps": ("fdfo", {"steps_per_sample": 5}),
    "FDFO churn prior 0.2": ("fdfo", {"churn": "prior", "churn_strength": 0.2}),
    "FDFO churn interval 0.3": ("fdfo", {"churn": "interval", "churn_strength": 0.3}),
}
#: what the default run measures per state (the 2 shared cores' budget: ~15 CPU minutes on 1 thread)
DEFAULT_SETTINGS = {
    "untrained": ["FDFO churn 0.05 (preset)", "FDFO churn 0.2", "FDFO K=4", "FDFO K=8", "Flow-GRPO", "DiffusionNFT"],
    "FDFO-trained": ["FDFO churn 0.05 (preset)", "FDFO K=4", "Flow-GRPO", "DiffusionNFT"],
}


def block_config(method: str, values: dict[str, Any], block: int, seed: int, group: int, extra: dict[str, Any]):
    from fdfo_core.config import load_config

    base = method_values(method, block) if method != "backprop_chain" else {"pairs_per_epoch": block // 2}
    if method in ("flow_grpo", "diffusion_nft"):  # `group` images per prompt (the benchmark's GROUP)
        key = "grpo" if method == "flow_grpo" else "nft"
        base.update({f"{key}_group_size": group, f"{key}_groups_per_epoch": max(1, block // group)})
    return load_config("toy", overrides={**base, **values, **extra, "method": method, "epochs": 1, "seed": seed,
                                         "optimizer_steps_per_epoch": 1, "eval_every": 0, "checkpoint_every": 0})


def update_direction(backend, reward, prompts, cfg, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Minus the gradient of the method's loss over one epoch of `cfg` (one optimizer step), from the
    adapter `state`: float64 [number of LoRA parameters]. Nothing is stepped."""
    from fdfo_core.methods import build_trainer
    from fdfo_core.run.hooks import Callbacks

    backend.load_adapter_state_dict(state)
    trainer = build_trainer(backend, reward, prompts, cfg, callbacks=Callbacks(log=None))
    grads: list[torch.Tensor] = []

    def capture() -> float:
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                                for p in trainer.params]))
        for p in trainer.params:
            p.grad = None
        return 0.0

    trainer.optimizer_step = capture  # the epoch's one optimizer step: record, do not step
    trainer.train_epoch()
    if len(grads) != 1:
        raise RuntimeError(f"expected one optimizer step in the epoch, got {len(grads)}")
    backend.load_adapter_state_dict(state)
    return -grads[0]


def cached_blocks(path: Path, key: dict[str, Any], compute) -> torch.Tensor:
    """`compute()` ([blocks, P] directions), stored at `path` with its settings `key`; a rerun with the
    same key (e.g. after an interruption, or to redo the tables) reads the file instead."""
    if path.exists():
        stored = torch.load(path, weights_only=True)
        if stored.get("key") == json.dumps(key, sort_keys=True):
            return stored["blocks"]
    blocks = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": json.dumps(key, sort_keys=True), "blocks": blocks}, tmp)
    tmp.replace(path)
    return blocks


def reliability(split_half_cosine: float) -> float:
    """The expected cosine between an estimate from all the samples and the true direction, from the
    cosine of its two halves: Spearman-Brown (full-sample cosine to an independent copy,
    2c / (1 + c)), then its square root (the cosine of each copy to the truth)."""
    c = max(split_half_cosine, 0.0)
    return (2 * c / (1 + c)) ** 0.5


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


MAX_SPLITS = 400  # split-half pairs / subsets averaged per point at most (a fixed random sample beyond)


def _subsets(n: int, k: int, limit: int) -> list[tuple[int, ...]]:
    """All k-subsets of range(n), or `limit` distinct ones drawn with a fixed seed when there are more."""
    if math.comb(n, k) <= limit:
        return list(itertools.combinations(range(n), k))
    rng, seen = random.Random(0), set()
    while len(seen) < limit:
        seen.add(tuple(sorted(rng.sample(range(n), k))))
    return sorted(seen)


def split_half(blocks: torch.Tensor, per_half: int, limit: int = MAX_SPLITS) -> list[float]:
    """Cosines between the sums of two disjoint sets of `per_half` blocks, over every unordered
    split of 2 x per_half of the blocks into two such sets (each counted once; at most `limit`,
    a fixed random sample beyond). Every split has the same expectation; averaging all of them
    uses every block in every position (a U-statistic), far less noisy than one split."""
    n = blocks.shape[0]
    if 2 * per_half > n:
        return []
    pairs = []
    for a in itertools.combinations(range(n), per_half):
        rest = [i for i in range(n) if i not in a]
        for b in itertools.combinations(rest, per_half):
            if a < b:  # unordered: (A, B) and (B, A) are the same split
                pairs.append((a, b))
    if len(pairs) > limit:
        pairs = random.Random(0).sample(pairs, limit)
    return [cosine(blocks[list(a)].sum(0), blocks[list(b)].sum(0)) for a, b in pairs]


def versus(blocks: torch.Tensor, per_set: int, reference: torch.Tensor, sign: bool = False,
           limit: int = MAX_SPLITS) -> list[float]:
    """Cosines between the sums of every set of `per_set` blocks (at most `limit`, a fixed random
    sample beyond) and `reference`; `sign`: of their signs (AdamW's first step from a fresh state
    is lr x sign(gradient), up to its eps)."""
    sums = [blocks[list(c)].sum(0) for c in _subsets(blocks.shape[0], per_set, limit)]
    return [cosine(torch.sign(d) if sign else d, reference) for d in sums]


def signal_noise(blocks: torch.Tensor, reference: torch.Tensor | None = None,
                 reference_reliability: float | None = None) -> dict[str, float]:
    """Signal and noise of one block's direction, from all the blocks (unbiased for independent blocks).

    With d_i = g + e_i: |g|^2 is the mean of d_i . d_j over i != j, the noise E|e|^2 is the mean
    |d_i|^2 minus that. `snr_per_block` = |g|^2 / E|e|^2: the split-half cosine of n blocks per
    half is then n snr / (1 + n snr) (`consistency_predicted`), and n = 1 / snr blocks give 0.5.
    `accuracy_limit`: the cosine between the expected direction g and the true ascent direction,
    (mean d) . reference / (|g| |reference| reliability), i.e. the accuracy of infinitely many
    evaluations (a biased estimator stays below 1); None when no signal is measured (|g|^2 <= 0)."""
    m = blocks.shape[0]
    total = blocks.sum(0)
    sq = (blocks * blocks).sum(1)
    g2 = float((total @ total - sq.sum()) / (m * (m - 1)))
    noise = float(sq.mean()) - g2
    snr = g2 / noise if noise > 0 else math.inf
    out: dict[str, float | None] = {"signal_sq": g2, "noise_sq": noise, "snr_per_block": snr}
    out["accuracy_limit"] = None
    if reference is not None and reference_reliability and g2 > 0:
        out["accuracy_limit"] = float(total / m @ reference / (g2 ** 0.5 * reference.norm() * reference_reliability))
    return out


def jackknife_se(blocks: torch.Tensor, stat) -> float:
    """Jackknife standard error of `stat(blocks)` over the blocks (leave one out; blocks are
    independent); NaN when a leave-one-out value is undefined (None or infinite)."""
    m = blocks.shape[0]
    vals = [stat(torch.cat([blocks[:i], blocks[i + 1:]])) for i in range(m)]
    if any(v is None or not math.isfinite(v) for v in vals):
        return math.nan
    mu = sum(vals) / m
    return ((m - 1) / m * sum((v - mu) ** 2 for v in vals)) ** 0.5


def consistency_predicted(snr_per_block: float, blocks: float) -> float:
    """The split-half cosine expected of `blocks` blocks per half at this signal-to-noise (0 if none)."""
    x = max(snr_per_block, 0.0) * blocks
    return x / (1 + x)


def train_state(backend, reward, prompts, epochs: int, block_images: int, extra: dict[str, Any]) -> dict[str, torch.Tensor]:
    from fdfo_core.config import load_config
    from fdfo_core.methods import build_trainer
    from fdfo_core.run.hooks import Callbacks

    cfg = load_config("toy", overrides={**method_values("fdfo", block_images), **extra, "epochs": epochs, "seed": 0,
                                        "eval_every": 0, "checkpoint_every": 0})
    build_trainer(backend, reward, prompts, cfg, callbacks=Callbacks(log=None)).train()
    return {k: v.detach().clone() for k, v in backend.adapter_state_dict().items()}


def fmt(x: float | None, spec: str) -> str:
    """`x` formatted, or "no signal" for None (no signal measured) or infinity."""
    return "no signal" if x is None or not math.isfinite(x) else format(x, spec)


#: the noise probe's methods: AdamW fed pure-noise gradients at each method's benchmark lr and steps
PROBE_METHODS = {"FDFO (preset)": "fdfo", "Flow-GRPO": "flow_grpo", "DiffusionNFT": "diffusion_nft"}


def noise_probe(backend, state: dict[str, torch.Tensor], seeds: int, epochs: int, heldout: tuple[int, int],
                extra: dict[str, Any]) -> dict[str, Any]:
    """What would each method's optimizer do to the held-out rewards with no signal at all?

    From `state`, AdamW (each method's benchmark lr, betas, eps, weight decay) takes as many steps as
    that method takes in `epochs` epochs of the sample-efficiency benchmark, each on a gradient of
    independent standard normal noise (seeded); then the held-out rewards of both toy rewards are
    measured (the benchmark's held-out captions x seeds, plain Euler). A method whose benchmark gain
    is no larger than this gets it from the size of its steps, not from its gradient estimate.
    Returns {"before": {reward: value}, "methods": {label: {"lr", "steps", "after": {reward: [per seed]}}}}."""
    from fdfo_core.backends.generation import generate_images
    from fdfo_core.cli.demo import held_out_set
    from fdfo_core.config import load_config
    from fdfo_core.rewards import build_reward

    rewards = {name: build_reward(spec["spec"]) for name, spec in REWARDS.items()}
    held = held_out_set(*heldout, seed=0)

    def measure(cfg) -> dict[str, float]:
        images = generate_images(backend, held.prompts, held.seeds, cfg.num_steps, cfg.height, cfg.width, batch_size=64)
        return {name: float(r(images, held.prompts).mean()) for name, r in rewards.items()}

    backend.load_adapter_state_dict(state)
    base_cfg = load_config("toy", overrides=extra)
    out: dict[str, Any] = {"before": measure(base_cfg), "epochs": epochs, "methods": {}}
    for label, method in PROBE_METHODS.items():
        cfg = load_config("toy", overrides={**method_values(method), **extra, "method": method})
        steps = epochs * cfg.optimizer_steps_per_epoch
        row = {"lr": cfg.lr, "steps": steps, "after": {name: [] for name in rewards}}
        for k in range(seeds):
            backend.load_adapter_state_dict(state)
            params = backend.trainable_parameters()
            opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                                    weight_decay=cfg.weight_decay)
            gen = torch.Generator().manual_seed(k)
            for _ in range(steps):
                for q in params:
                    q.grad = torch.randn(q.shape, generator=gen, dtype=q.dtype)
                opt.step()
            for name, value in measure(cfg).items():
                row["after"][name].append(value)
        out["methods"][label] = row
        print(f"{label:14s} lr {cfg.lr:g} x {steps} noise steps: " + "  ".join(
            f"{name} {out['before'][name]:.4f} -> {mean(v):.4f}" for name, v in row["after"].items()), flush=True)
    backend.load_adapter_state_dict(state)
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny configuration (tests): 2 steps, 2 blocks of 8, 3 settings, reference 2 x 4 samples")
    ap.add_argument("--out", default="runs/gradient_estimate")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                    help="the same settings at every state (default: DEFAULT_SETTINGS, fewer at the trained state)")
    ap.add_argument("--noise-probe", type=int, default=0, metavar="SEEDS",
                    help="only the noise probe (`noise_probe`), SEEDS noise seeds per method, from the untrained "
                         "state; its record goes to OUT/noise_probe.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    block, blocks, ref_block, ref_blocks, group, epochs = BLOCK, BLOCKS, REF_BLOCK, REF_BLOCKS, GROUP, TRAIN_EPOCHS
    extra: dict[str, Any] = {}
    per_state = {k: args.settings or v for k, v in DEFAULT_SETTINGS.items()}
    if args.smoke:
        block, blocks, ref_block, ref_blocks, group, epochs = 8, 2, 4, 2, 4, 1
        extra = {"num_steps": 2}
        per_state = {k: args.settings or ["FDFO churn 0.05 (preset)", "FDFO K=4", "Flow-GRPO"] for k in per_state}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from fdfo_core.config import load_config
    from fdfo_core.rewards import build_reward
    from fdfo_core.toy import toy_prompt_sets

    t0, cpu0 = time.perf_counter(), time.process_time()
    torch.manual_seed(0)  # the LoRA's initialisation: the sample-efficiency benchmark's seed 0
    backend = load_toy(load_config("toy", overrides=extra))
    reward = build_reward(REWARDS[REWARD]["spec"])
    prompts, _ = toy_prompt_sets(seed=0)
    states = {"untrained": {k: v.detach().clone() for k, v in backend.adapter_state_dict().items()}}
    if args.noise_probe:
        probe = noise_probe(backend, states["untrained"], args.noise_probe, epochs,
                            (2, 2) if args.smoke else HELDOUT, extra)
        probe["cpu_seconds"] = time.process_time() - cpu0
        (out / "noise_probe.json").write_text(json.dumps(probe, indent=1))
        return probe
    trained = out / "blocks" / "fdfo_trained_state.pt"
    key = {"epochs": epochs, "images": 4 * block, "extra": extra}
    if trained.exists() and torch.load(trained, weights_only=True).get("key") == json.dumps(key, sort_keys=True):
        states["FDFO-trained"] = torch.load(trained, weights_only=True)["state"]
    else:
        states["FDFO-trained"] = train_state(backend, reward, prompts, epochs, 4 * block, extra)
        trained.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": json.dumps(key, sort_keys=True), "state": states["FDFO-trained"]}, trained)
    print(f"states ready ({time.process_time() - cpu0:.0f} CPU s)", flush=True)

    halves = list(range(1, blocks // 2 + 1))
    result: dict[str, Any] = {"reward": REWARDS[REWARD]["spec"], "block": block, "blocks": blocks,
                              "reference_samples": ref_block * ref_blocks, "evals": [h * block for h in halves],
                              "states": {}}
    for state_name, state in states.items():
        cpu = time.process_time()
        slug = state_name.lower().replace(" ", "_")
        ref_blocks_dirs = cached_blocks(
            out / "blocks" / slug / "reference.pt", {"block": ref_block, "blocks": ref_blocks, "extra": extra},
            lambda: torch.stack([update_direction(
                backend, reward, prompts, block_config("backprop_chain", {}, ref_block, 1000 + i, group, extra), state)
                for i in range(ref_blocks)]))
        reference = ref_blocks_dirs.sum(0)
        ref_half = split_half(ref_blocks_dirs, ref_blocks // 2)
        print(f"\n## {state_name}: reference from {ref_block * ref_blocks} back-propagated samples, split-half cosine "
              f"{mean(ref_half):.3f}: its expected cosine to the true gradient {reliability(mean(ref_half)):.3f} "
              f"({time.process_time() - cpu:.0f} CPU s)", flush=True)
        rows = {}
        result["states"][state_name] = {"reference_split_half": ref_half,
                                        "reference_reliability": reliability(mean(ref_half)), "settings": rows}
        for name in per_state[state_name]:
            method, values = SETTINGS[name]
            cpu = time.process_time()
            dirs = cached_blocks(
                out / "blocks" / slug / f"{name.lower().replace(' ', '_').replace('(', '').replace(')', '')}.pt",
                {"method": method, "values": values, "block": block, "blocks": blocks, "group": group, "extra": extra},
                lambda: torch.stack([update_direction(backend, reward, prompts,
                                                      block_config(method, values, block, i, group, extra), state)
                                     for i in range(blocks)]))
            rel = reliability(mean(ref_half))
            sn = signal_noise(dirs, reference, rel)
            rows[name] = {
                **sn,
                "snr_per_block_se": jackknife_se(dirs, lambda b: signal_noise(b)["snr_per_block"]),
                "accuracy_limit_se": jackknife_se(dirs, lambda b: signal_noise(b, reference, rel)["accuracy_limit"]),
                "evals_to_consistency_half": block / sn["snr_per_block"] if sn["snr_per_block"] > 0 else None,
                "consistency": {str(h * block): split_half(dirs, h) for h in halves},
                "accuracy": {str(h * block): versus(dirs, h, reference) for h in sorted(set(halves + [blocks]))},
                "accuracy_first_adam_step": {str(h * block): versus(dirs, h, reference, sign=True)
                                             for h in sorted(set(halves + [blocks]))},
                "cpu_seconds": time.process_time() - cpu,
            }
            row = rows[name]
            print(f"{name:26s} consistency " + "  ".join(f"{n}: {mean(v):+.3f}" for n, v in row["consistency"].items())
                  + " | accuracy " + "  ".join(f"{n}: {mean(v):+.3f}" for n, v in row["accuracy"].items())
                  + f" | evaluations for consistency 0.5: {fmt(row['evals_to_consistency_half'], '.0f')}, accuracy "
                  f"limit {fmt(row['accuracy_limit'], '+.3f')}  ({row['cpu_seconds']:.0f} CPU s)", flush=True)
            (out / "gradient_estimate.json").write_text(json.dumps(result, indent=1))  # partial results survive
    result["cpu_seconds"] = time.process_time() - cpu0
    result["wall_seconds"] = time.perf_counter() - t0
    (out / "gradient_estimate.json").write_text(json.dumps(result, indent=1))
    write_tables_and_plots(result, out)
    print(f"\n{result['cpu_seconds']:.0f} CPU s, {result['wall_seconds']:.0f} s wall; data and plots in {out}")
    return result


def write_tables_and_plots(result: dict[str, Any], out: Path) -> None:
    from fdfo_core.files.drawing import line_plot, save_png

    for state_name, state in result["states"].items():
        print(f"\nsignal and noise per estimate, {state_name} (from all {result['blocks']} blocks of {result['block']} "
              "evaluations: unbiased pair products)")
        print("| setting | signal / noise per evaluation (+- jackknife SE) | evaluations for consistency 0.5 | "
              f"consistency at {result['block'] * result['blocks']} (predicted) | accuracy limit (infinitely many "
              "evaluations, +- jackknife SE) |")
        print("|---|---|---|---|---|")
        for name, row in state["settings"].items():
            if "snr_per_block" not in row:
                continue
            print(f"| {name} | {row['snr_per_block'] / result['block']:.4f} +- "
                  f"{row.get('snr_per_block_se', math.nan) / result['block']:.4f} | "
                  f"{fmt(row['evals_to_consistency_half'], '.0f')} | "
                  f"{consistency_predicted(row['snr_per_block'], result['blocks']):.3f} | "
                  f"{fmt(row['accuracy_limit'], '+.3f')} +- {row.get('accuracy_limit_se', math.nan):.3f} |")
        for key, label in (("consistency", "split-half cosine (consistency)"),
                           ("accuracy", "cosine to the back-propagated gradient (accuracy)"),
                           ("accuracy_first_adam_step", "cosine of sign(direction) to the reference")):
            if not all(key in row for row in state["settings"].values()):
                continue
            evals = sorted({int(n) for row in state["settings"].values() for n in row[key]})
            print(f"\n{key}, {state_name} (mean cosine over the disjoint sets; n = reward evaluations per set)")
            print("| setting | " + " | ".join(f"n = {n}" for n in evals) + " |")
            print("|---|" + "---|" * len(evals))
            series = {}
            for name, row in state["settings"].items():
                cells = [f"{mean(row[key][str(n)]):+.3f}" if str(n) in row[key] else "" for n in evals]
                print(f"| {name} | " + " | ".join(cells) + " |")
                pts = [(n, mean(row[key][str(n)])) for n in evals if str(n) in row[key]]
                series[name] = ([p[0] for p in pts], [p[1] for p in pts])
            if key == "accuracy" and state.get("reference_reliability"):
                rel = state["reference_reliability"]
                print(f"accuracy / {rel:.3f} (the reference's own expected cosine to the true gradient): the "
                      "expected cosine to the true gradient")
                for name, row in state["settings"].items():
                    cells = [f"{mean(row[key][str(n)]) / rel:+.3f}" if str(n) in row[key] else "" for n in evals]
                    print(f"| {name} | " + " | ".join(cells) + " |")
            save_png(line_plot(series, xlabel="reward evaluations per estimate", ylabel=label,
                               title=f"toy, {result['reward']}, {state_name}: {key}", size=(720, 420)),
                     out / f"{key}_{state_name}.png")


if __name__ == "__main__":
    main()
