"""The run-time estimate (fdfo_core/run/run_time.py): its formula on known inputs, and the lines a run
prints before the first epoch (the estimate) and after each (the measured time left)."""

from __future__ import annotations

import math

import pytest
import torch

from fdfo_core.config import FDFOConfig, load_config
from fdfo_core.run.run_time import (
    estimate_run,
    evaluations_left,
    format_duration,
    probe_forward_seconds,
    seconds_left,
    training_passes_per_item,
)


def test_estimate_formula_on_known_inputs():
    # 2 epochs x 3 pairs (6 images) x 5 steps, no CFG, every step trained, no checkpointing, no KL:
    # sampling 2*6*5 = 60 passes, training 2*6*5*3 = 180, evaluation (base, epoch 2) 2 x 2*2*5 = 40.
    cfg = FDFOConfig(epochs=2, pairs_per_epoch=3, num_steps=5, cfg_scale=1.0, eval_every=5, eval_prompt_count=2,
                     eval_seeds=2, gradient_checkpointing=False, kl_weight=0.0)
    est = estimate_run(cfg, forward_seconds=0.5)
    assert (est.sampling, est.training, est.evaluation) == (30.0, 90.0, 20.0)
    assert est.total == 140.0 and est.epochs == 2
    # CFG doubles sampling and evaluation; checkpointing and KL add a pass each to training;
    # steps_per_sample trains fewer steps.
    cfg2 = FDFOConfig(epochs=2, pairs_per_epoch=3, num_steps=5, cfg_scale=4.5, eval_every=0, gradient_checkpointing=True,
                      kl_weight=0.1, steps_per_sample=2)
    est2 = estimate_run(cfg2, forward_seconds=1.0)
    assert est2.sampling == 2 * 6 * 5 * 2 and est2.training == 2 * 6 * 2 * 5 and est2.evaluation == 0
    assert training_passes_per_item(True, 0.1) == 5 and training_passes_per_item(False, 0.0) == 3
    # Resumed at epoch 1 with the base model already evaluated: one epoch and one evaluation left.
    est3 = estimate_run(cfg, forward_seconds=0.5, epoch=1, base_evaluated=True)
    assert (est3.sampling, est3.training, est3.evaluation, est3.epochs) == (15.0, 45.0, 10.0, 1)
    # The published recipe's FLOP figures: 2 x parameters x tokens per pass.
    est4 = estimate_run(FDFOConfig(), forward_seconds=0.01, parameters=2_500_000_000, tokens=1024 + 333)
    assert est4.flop_per_pass == 2 * 2.5e9 * 1357
    line = est4.line()
    assert line.startswith("expected time for 100 epoch(s): about ") and "an estimate" in line
    assert "TFLOP/s achieved" in line


def test_evaluations_and_durations():
    assert evaluations_left(0, 10, 5, base_done=False) == 3  # base, 5, 10
    assert evaluations_left(0, 12, 5, base_done=True) == 3  # 5, 10, 12 (the last epoch)
    assert evaluations_left(10, 10, 5, base_done=True) == 0
    assert evaluations_left(0, 10, 0, base_done=False) == 0
    assert format_duration(12.4) == "12 s" and format_duration(190) == "3 min 10 s"
    assert format_duration(2 * 3600 + 5 * 60) == "2 h 05 min" and format_duration(math.nan) == "unknown"
    assert seconds_left([10.0, 20.0], 3) == 45.0 and math.isnan(seconds_left([], 3))


def test_probe_times_the_second_call_and_leaves_the_rng_alone():
    calls = []

    def velocity(x, t, c):
        calls.append(x.shape[0])
        return x

    state = torch.get_rng_state()
    s = probe_forward_seconds(velocity, {"e": torch.zeros(1, 3, 4)}, (4, 8, 8), 6, torch.device("cpu"),
                              lambda c, i: {k: v[i] for k, v in c.items()})
    assert calls == [6, 6] and s >= 0
    assert torch.equal(state, torch.get_rng_state())


def test_a_run_prints_the_estimate_first_and_the_time_left_after_each_epoch(tmp_path):
    from fdfo_core.backends.diffusers_backend import DiffusersBackend
    from fdfo_core.rewards import build_reward
    from fdfo_core.run.hooks import Callbacks
    from fdfo_core.methods import FDFOTrainer
    from tiny_pipelines import tiny_sd3_pipeline

    lines = []
    cfg = load_config("toy", overrides=dict(epochs=2, pairs_per_epoch=2, num_steps=2, sample_batch_size=2, lora_rank=2,
                                            lora_alpha=2.0, eval_every=0))
    trainer = FDFOTrainer(DiffusersBackend(tiny_sd3_pipeline(tmp_path), cfg, max_sequence_length=8),
                          build_reward("brightness"), ["a red circle"], cfg, callbacks=Callbacks(log=lines.append))
    trainer.train()
    assert lines[0].startswith("expected time for 2 epoch(s): about ")
    est = trainer.time_estimate
    assert est is not None and est.parameters == sum(p.numel() for n, p in trainer.backend.transformer.named_parameters())
    text_tokens = trainer.backend.encode_prompts(["a red circle"])["prompt_embeds"].shape[1]
    assert est.tokens == 4 * 4 + text_tokens  # 8x8 latents in 2x2 patches, plus the text tokens
    epoch_lines = [l for l in lines if l.startswith("epoch ")]
    assert "left" in epoch_lines[0] and "left" not in epoch_lines[-1]
