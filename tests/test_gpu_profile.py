"""benchmarks/gpu_profile.py runs on the CPU with the small configs: the same code path as on a
GPU (published-config models built in place, stand-in text conditioning, the real diffusers
backend and trainer), with a table and JSON whose figures are consistent with each other."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_profile():
    spec = importlib.util.spec_from_file_location("gpu_profile", ROOT / "benchmarks" / "gpu_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_runs_the_small_configs_on_the_cpu(tmp_path, capsys, one_thread):
    gp = load_profile()
    out = tmp_path / "profile.json"
    gp.main(["--small", "--device", "cpu", "--models", "sd35-medium", "flux-dev", "--pairs", "2",
             "--steps", "2", "--lora-rank", "4", "--gradient-checkpointing", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| sd35-medium | training |" in text and "| flux-dev (small config) |" in text
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["results"]] == ["sd35-medium", "flux-dev"]
    for r in data["results"]:
        assert r["small_config"] and r["resolution"] == 64 and r["steps"] == 2 and r["pairs"] == 2
        assert "gradient checkpointing" in r["mode"]
        ph = r["phases"]
        assert set(ph) == {"sampling", "decoding", "reward stand-in", "training"}
        assert all(p["seconds"] >= 0 and p["per"] >= 0 for p in ph.values())
        assert ph["sampling"]["per"] == pytest.approx(ph["sampling"]["seconds"] / (2 * 2 * 2))
        # the published epoch (432 pairs x 40 steps) from the per-unit figures
        minutes = (ph["sampling"]["per"] * 864 * 40 + (ph["decoding"]["per"] + ph["reward stand-in"]["per"]) * 864
                   + ph["training"]["per"] * 864 * 40) / 60
        assert r["published_epoch_minutes"] == pytest.approx(minutes)
        assert r["reference_gpu_minutes_per_epoch"] == pytest.approx(28.8)
        assert r["peak_gib_measured"] is None and r["peak_gib_estimated"] > 0  # no GPU: estimate only
        assert 0 < r["transformer_params_b"] < 1e-3


def test_profile_knows_the_published_models():
    gp = load_profile()
    models = gp.published_models()
    assert set(gp.HEADLINE) <= set(models)
    args = gp.parse_args([])
    assert args.models == list(gp.HEADLINE) and args.pairs == 8
