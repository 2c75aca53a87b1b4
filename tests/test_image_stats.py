"""Hacking statistics of the held-out images (fdfo_core/files/image_stats.py) on images built to have
known values, and the early-stop bound on them (guardrails.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fdfo_core.config import FDFOConfig, load_config
from fdfo_core.run.evaluation import Evaluation
from fdfo_core.run.guardrails import EVAL_COLUMNS, Guardrails
from fdfo_core.files.image_stats import STAT_NAMES, image_statistics, largest_shift, per_image_statistics, shift_from_base
from fdfo_core.rewards import build_reward


def _solid(rgb, h=8, w=8) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, h, w).clone()


def test_statistics_of_images_with_known_values():
    black = image_statistics(_solid((0, 0, 0)))
    assert black == {"near_black": 1.0, "near_white": 0.0, "saturation": 0.0, "colour_entropy": 0.0, "edge_density": 0.0}
    red = image_statistics(_solid((1, 0, 0)))
    assert red["saturation"] == 1.0 and red["near_black"] == 0.0 and red["near_white"] == 0.0  # luma 0.2126
    half = torch.zeros(1, 3, 8, 16)
    half[..., 8:] = 1.0  # left half black, right half white
    s = image_statistics(half)
    assert s["near_black"] == 0.5 and s["near_white"] == 0.5 and s["saturation"] == 0.0
    assert s["colour_entropy"] == pytest.approx(1.0)  # two colours, equal shares: 1 bit
    assert s["edge_density"] == pytest.approx(2 / 16)  # the two columns either side of the step
    # 512 pixels, one in each of the 8 x 8 x 8 colour bins: the maximum entropy, 9 bits.
    levels = (torch.arange(8, dtype=torch.float32) + 0.5) / 8
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    every = torch.stack([r.flatten(), g.flatten(), b.flatten()]).view(1, 3, 16, 32)
    assert image_statistics(every)["colour_entropy"] == pytest.approx(9.0)
    # A batch's statistic is the mean of its images'; grey images count as RGB.
    both = torch.cat([_solid((0, 0, 0)), _solid((1, 1, 1))])
    assert per_image_statistics(both)["near_white"].tolist() == [0.0, 1.0]
    assert image_statistics(both)["near_black"] == 0.5
    assert image_statistics(torch.ones(2, 1, 4, 4))["near_white"] == 1.0
    with pytest.raises(ValueError, match="images"):
        image_statistics(torch.zeros(2, 16, 4, 4))


def test_shift_is_relative_to_each_statistics_range():
    base = {"near_black": 0.45, "near_white": 0.0, "saturation": 0.5, "colour_entropy": 6.0, "edge_density": 0.2}
    hacked = {**base, "near_black": 0.93, "colour_entropy": 6.0 * 0.46}  # the dark share and -54 % entropy
    shifts = shift_from_base(hacked, base)
    assert shifts["near_black"] == pytest.approx(0.48)
    assert shifts["colour_entropy"] == pytest.approx(6.0 * 0.54 / 9)
    assert largest_shift(hacked, base) == ("near_black", pytest.approx(0.48))


def _guard(bound: float) -> Guardrails:
    cfg = FDFOConfig(eval_every=1, early_stop_max_image_shift=bound)
    return Guardrails(cfg, build_reward("brightness"), ["a red circle", "a blue square"])


def _ev(epoch: int, stats) -> Evaluation:
    return Evaluation(epoch, 0.5, 0.01, None, None, 0.1, 0.0, 1.0, stats)


def test_image_shift_bound_triggers_early_stop():
    base = {"near_black": 0.45, "near_white": 0.01, "saturation": 0.4, "colour_entropy": 6.0, "edge_density": 0.2}
    for bound, stats, fires in ((0.3, {**base, "near_black": 0.93}, True), (0.3, {**base, "near_black": 0.6}, False),
                                (0.0, {**base, "near_black": 0.93}, False)):
        guard = _guard(bound)
        guard.evaluations = [_ev(0, base), _ev(1, stats)]
        reason = guard._stop_rule()
        assert bool(reason) == fires, (bound, stats, reason)
        if fires:
            assert "near black" in reason and "0.4500" in reason and "0.9300" in reason
    with pytest.raises(ValueError, match="early_stop_max_image_shift"):
        FDFOConfig(early_stop_max_image_shift=1.5).validate()
    with pytest.raises(ValueError, match="needs the held-out evaluation"):
        FDFOConfig(eval_every=0, early_stop_max_image_shift=0.3).validate()


def test_old_evaluations_without_statistics_still_load():
    d = _ev(3, None).to_dict()
    d.pop("image_stats")
    assert Evaluation.from_dict(d).image_stats is None


def test_training_logs_plots_and_stops_on_the_statistics(tmp_path):
    """A tiny SD3 run trained on brightness: every evaluation logs the statistics beside the base
    model's, the curve gets its panel, and a tight bound stops the run at the first evaluation."""
    from fdfo_core.backends.diffusers_backend import DiffusersBackend
    from fdfo_core.files.drawing import reward_curve_image
    from fdfo_core.run.hooks import Callbacks
    from fdfo_core.methods import FDFOTrainer
    from tiny_pipelines import tiny_sd3_pipeline

    lines = []
    cfg = load_config("toy", overrides=dict(epochs=3, pairs_per_epoch=4, num_steps=3, sample_batch_size=4, lora_rank=4,
                                            lora_alpha=8.0, lr=5e-2, eval_every=1, eval_prompt_count=2, eval_seeds=2,
                                            early_stop_max_image_shift=1e-9))
    torch.manual_seed(0)
    trainer = FDFOTrainer(DiffusersBackend(tiny_sd3_pipeline(tmp_path, seed=0), cfg, max_sequence_length=8),
                          build_reward("brightness"), ["a red circle", "a blue square"], cfg, run_dir=tmp_path / "run",
                          callbacks=Callbacks(log=lines.append))
    history = trainer.train()
    assert len(history) == 1 and "moved from the base model's" in history[0]["early_stop"]
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(EVAL_COLUMNS) <= set(rows[0])
    for k in STAT_NAMES:
        assert math.isfinite(rows[0][f"image_{k}"]) and math.isfinite(rows[0][f"image_{k}_base"])
    base_line = next(l for l in lines if l.startswith("held-out base model"))
    assert "images black" in base_line and "entropy" in base_line
    epoch_line = next(l for l in lines if l.startswith("held-out epoch 1"))
    assert epoch_line.count("(") >= len(STAT_NAMES)  # each statistic with the base model's beside it
    one = reward_curve_image(history, guardrails=trainer.guardrails)
    assert one.height == 3 * 300  # reward, diversity / drift, image statistics
