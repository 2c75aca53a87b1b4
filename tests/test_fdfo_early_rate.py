"""benchmarks/fdfo_early_rate.py: FDFO variants at a fixed budget of reward evaluations, paired by
seed with the preset and with Flow-GRPO's benchmark runs. The default suite checks the budget
accounting, the statistics by hand and the report from run files (no training, seconds); a real
one-epoch run is behind FDFO_BENCHMARK_TESTS=1 (minutes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fdfo_early_rate as er  # noqa: E402
from sample_efficiency import find_run, run_path, run_settings  # noqa: E402


def test_every_variant_spends_the_same_reward_evaluations(tmp_path):
    out = tmp_path / "fdfo_early_rate"
    for reward in ("alignment", "colourfulness"):
        for name, (extra, ipe, _) in er.VARIANTS.items():
            jobs = er.variant_jobs(name, 3, out, reward, epochs=4)
            assert [s["seed"] for s, _ in jobs] == [0, 1, 2]
            for s, path in jobs:
                assert s["reward"] == reward and s["method"] == "fdfo"
                assert s["config"]["epochs"] * s["images_per_epoch"] == 4 * 64
                assert s["config"]["pairs_per_epoch"] * 2 == s["images_per_epoch"] == ipe
                assert all(s["config"][k] == v for k, v in extra.items())
                if name == "preset":  # the sample-efficiency benchmark's own FDFO run of this reward
                    assert s == run_settings("fdfo", reward, s["seed"], 4, 64, (32, 2))
                    assert path == run_path(tmp_path / "sample_efficiency", s)
                else:
                    assert path == out / "runs" / reward / "fdfo" / f"seed{s['seed']}-{name}.json"
    # The default budget is unchanged: 16 epochs of 64 on alignment.
    (s, _), = er.variant_jobs("pairs_16", 1, out)
    assert (s["reward"], s["config"]["epochs"], s["images_per_epoch"]) == ("alignment", 32, 32)
    assert er.variant_jobs("lr_3e-3", 1, out)[0][0]["config"]["lr"] == 3e-3
    with pytest.raises(ValueError, match="does not divide the budget"):
        er.variant_jobs("pairs_64", 1, out, "colourfulness", epochs=1)


def _run(settings, ys, lr=3e-4):
    """A finished run file's content: `ys` held-out after epochs 0, 1, ... (every epoch measured)."""
    ipe = settings["images_per_epoch"]
    return {**settings, "lr": lr, "cpu_seconds": 10.0 * len(ys), "curve": [
        {"epoch": e, "evals": e * ipe, "heldout": y, "cpu_seconds": 5.0 * e} for e, y in enumerate(ys)]}


def test_summary_by_hand_paired_with_preset_and_flow_grpo(tmp_path):
    out = tmp_path / "fdfo_early_rate"
    preset = [_run(s, ys) for (s, _), ys in zip(er.variant_jobs("preset", 2, out, "colourfulness", 2),
                                                 ([0.8, 0.8, 0.8], [0.8, 0.8, 0.9]))]
    # 16 pairs per epoch: 4 epochs of 32 evaluations = the same 128 evaluations.
    pairs = [_run(s, ys) for (s, _), ys in zip(er.variant_jobs("pairs_16", 2, out, "colourfulness", 2),
                                                ([0.8, 0.9, 0.9, 0.9, 0.9], [0.8, 0.8, 0.8, 0.8, 0.8]))]
    # Flow-GRPO ran 3 epochs on seed 0 (cut to the budget) and not at all on seed 1.
    grpo = [_run(run_settings("flow_grpo", "colourfulness", 0, 3, 64, (32, 2)), [0.8, 0.7, 0.7, 2.0])]
    rows = er.summarise_variants({"preset": preset, "pairs_16": pairs}, grpo, budget=128, n_boot=500)

    # AUC = trapezoid mean over 128 evaluations. Preset: 0.8 and (0.8 + 0.8 + 0.8 + 0.9) / 4 = 0.825.
    assert rows["preset"]["auc_per_seed"] == pytest.approx([0.8, 0.825])
    assert rows["preset"]["auc"] == pytest.approx((0.8125, 0.8, 0.825))
    assert rows["preset"]["final"][0] == pytest.approx(0.85)
    assert rows["preset"]["vs_preset"] is None
    # pairs_16 seed 0: segments 0.85, 0.9, 0.9, 0.9 -> 0.8875; seed 1: 0.8.
    assert rows["pairs_16"]["auc_per_seed"] == pytest.approx([0.8875, 0.8])
    d = rows["pairs_16"]["vs_preset"]
    assert d["seeds"] == [0, 1] and d["higher_auc_seeds"] == 1
    assert d["auc_diff"] == pytest.approx((0.03125, -0.025, 0.0875))  # paired: +0.0875 and -0.025
    assert d["final_diff"][0] == pytest.approx((0.1 - 0.1) / 2)
    # Flow-GRPO seed 0 over 128 evaluations: (0.75 + 0.7) / 2 = 0.725 (its 3rd epoch is past the budget).
    g = rows["pairs_16"]["vs_baseline"]
    assert g["seeds"] == [0] and g["auc_diff"] == pytest.approx((0.8875 - 0.725,) * 3)
    assert g["final_diff"][0] == pytest.approx(0.9 - 0.7)
    assert rows["preset"]["vs_baseline"]["auc_diff"][0] == pytest.approx(0.8 - 0.725)
    assert rows["pairs_16"]["train_cpu_seconds"] == 20.0  # training CPU at the budget (epoch 4 of 32)
    # A run shorter than the budget is refused, not silently averaged over less.
    with pytest.raises(ValueError, match="evaluations"):
        er.summarise_variants({"preset": preset}, [], budget=192)


def test_several_baselines_and_the_decision_rule_by_hand(tmp_path):
    out = tmp_path / "fdfo_early_rate"
    variant = [_run(s, ys) for (s, _), ys in zip(er.variant_jobs("branches_4", 2, out, "colourfulness", 1),
                                                  ([0.8, 1.0], [0.8, 0.9]))]  # AUC 0.9 and 0.85
    grpo = [_run(run_settings("flow_grpo", "colourfulness", k, 1, 64, (32, 2)), ys, lr=3e-3)
            for k, ys in enumerate(([0.8, 0.8], [0.8, 0.8]))]  # AUC 0.8, 0.8
    nft = [_run(run_settings("diffusion_nft", "colourfulness", k, 1, 64, (32, 2)), ys, lr=1e-3)
           for k, ys in enumerate(([0.8, 0.9], [0.8, 1.0]))]  # AUC 0.85, 0.9
    rows = er.summarise_variants({"branches_4": variant}, {"flow_grpo": grpo, "diffusion_nft": nft}, 64, n_boot=500)
    row = rows["branches_4"]
    assert row["vs_baselines"]["flow_grpo"]["auc_diff"] == pytest.approx((0.075, 0.05, 0.1))
    assert row["vs_baselines"]["diffusion_nft"]["auc_diff"] == pytest.approx((0.0, -0.05, 0.05))
    assert row["vs_baseline"] == row["vs_baselines"]["flow_grpo"]
    assert row["ahead_of_baselines"] is False  # not ahead of DiffusionNFT (its interval reaches below 0)
    assert er.summarise_variants({"branches_4": variant}, {"flow_grpo": grpo}, 64, n_boot=500)[
        "branches_4"]["ahead_of_baselines"] is True
    # A baseline missing a seed does not count as beaten on it.
    assert er.summarise_variants({"branches_4": variant}, {"flow_grpo": grpo[:1]}, 64, n_boot=500)[
        "branches_4"]["ahead_of_baselines"] is False
    table = "\n".join(er.report(rows, "colourfulness", 64))
    assert "AUC - Flow-GRPO | AUC - DiffusionNFT |" in table
    assert "0.0750 [0.0500, 0.1000] (2/2 higher) | 0.0000 [-0.0500, 0.0500] (1/2 higher)" in table


def test_flow_grpo_runs_are_looked_up_in_the_benchmark_folder(tmp_path):
    out = tmp_path / "fdfo_early_rate"
    assert er.baseline_runs(2, out, "colourfulness", 4) == []
    long = run_settings("flow_grpo", "colourfulness", 1, 8, 64, (32, 2))
    path = run_path(tmp_path / "sample_efficiency", long)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_run(long, [0.8 + e / 100 for e in range(9)], lr=3e-3)))
    (found,) = er.baseline_runs(2, out, "colourfulness", 4)  # seed 1's first 4 epochs
    assert found["seed"] == 1 and [p["epoch"] for p in found["curve"]] == [0, 1, 2, 3, 4]
    assert er.baseline_runs(2, out, "alignment", 4) == []  # another reward's runs are not used


def _script(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fdfo_early_rate.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_replot_writes_the_table_json_and_plot_from_run_files(tmp_path):
    out = tmp_path / "fdfo_early_rate"
    rng = np.random.default_rng(0)
    files = []
    for name in ("preset", "lr_3e-3"):
        for s, path in er.variant_jobs(name, 3, out, "colourfulness", 2):
            files.append((path, _run(s, list(0.8 + rng.random(3) / 10))))
    for seed in range(3):
        s = run_settings("flow_grpo", "colourfulness", seed, 2, 64, (32, 2))
        files.append((run_path(tmp_path / "sample_efficiency", s), _run(s, [0.8, 0.85, 0.9], lr=3e-3)))
    for path, run in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))

    proc = _script("--reward", "colourfulness", "--epochs", "2", "--seeds", "3", "--variants", "lr_3e-3",
                   "--replot", "--n-boot", "200", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "colourfulness / 100, 128 reward evaluations" in proc.stdout
    assert "| lr_3e-3 |" in proc.stdout and "AUC - Flow-GRPO" in proc.stdout
    record = json.loads((out / "early_rate_colourfulness_2ep.json").read_text())
    assert record["evals"] == 128 and set(record["variants"]) == {"preset", "lr_3e-3"}
    row = record["variants"]["lr_3e-3"]
    preset = record["variants"]["preset"]
    assert row["vs_preset"]["auc_diff"][0] == pytest.approx(np.mean(row["auc_per_seed"]) - np.mean(preset["auc_per_seed"]))
    assert row["vs_baseline"]["seeds"] == [0, 1, 2]
    assert row["vs_baseline"]["auc_diff"][0] == pytest.approx(np.mean(row["auc_per_seed"]) - 0.85)
    assert set(record["curves"]) == {"preset", "lr_3e-3", "Flow-GRPO"}
    assert Image.open(out / "early_rate_colourfulness_2ep.png").size[0] > 100

    # A budget the variants cannot divide is a clear usage error.
    bad = _script("--reward", "colourfulness", "--epochs", "1", "--variants", "pairs_64", "--replot",
                  "--out", str(out), cwd=tmp_path)
    assert bad.returncode == 2 and "choose another --epochs" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FDFO_BENCHMARK_TESTS") != "1",
                    reason="set FDFO_BENCHMARK_TESTS=1 to train the variants for real (minutes)")
def test_one_epoch_of_real_variants_on_colourfulness(tmp_path):
    out = tmp_path / "fdfo_early_rate"
    proc = _script("--reward", "colourfulness", "--epochs", "1", "--seeds", "1", "--variants", "lr_3e-3",
                   "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "early_rate_colourfulness_1ep.json").read_text())
    for name in ("preset", "lr_3e-3"):
        (s, path), = er.variant_jobs(name, 1, out, "colourfulness", 1)
        run = find_run(s, path)
        assert [p["evals"] for p in run["curve"]] == [0, 64]
        assert record["variants"][name]["final_per_seed"] == [run["curve"][-1]["heldout"]]
    # Same seed, same base model and held-out set: both start from the same reward.
    assert len({find_run(s, p)["curve"][0]["heldout"] for n in ("preset", "lr_3e-3")
                for s, p in er.variant_jobs(n, 1, out, "colourfulness", 1)}) == 1
    assert record["variants"]["lr_3e-3"]["vs_baseline"] is None  # no Flow-GRPO runs in this folder
