"""Memory estimates (fdfo_core/backends/memory.py) and the --vram chooser.

- the published configs of every family build on the meta device into transformers of their
  published size (SD3.5 Medium 2.5 B, Flux.1 12 B, Qwen-Image 20 B, ...) within 5 %;
- the meta-device measurement runs for each family's small config and orders the modes as it must
  (checkpointing holds less than no checkpointing, fp8 weights less than bf16, ...);
- the chooser takes the fastest mode that fits, walks down as the budget shrinks, never returns a
  mode over budget, and refuses with the smallest estimate when nothing fits;
- `fdfo train --vram` prints its choice and trains with it; an impossible budget is a clear error.
"""

from __future__ import annotations

import json

import pytest

from fdfo_core.backends import memory as M
from fdfo_core.families import all_families, get_family

PUBLISHED = [(f.name, m) for f in all_families() for m in f.published_models]


@pytest.mark.parametrize("family,model", PUBLISHED, ids=[m.key for _, m in PUBLISHED])
def test_published_configs_build_transformers_of_the_published_size(family, model):
    meta = M.build_model(model.transformer, model.config())
    assert next(meta.parameters()).device.type == "meta"  # nothing allocated
    count = M.parameter_count(meta, buffers=model.count_buffers)
    assert abs(count / 1e9 - model.published_params_b) <= 0.05 * model.published_params_b, (model.key, count)


def test_the_three_headline_models_are_declared():
    keys = {m.key for _, m in PUBLISHED}
    assert {"sd35-medium", "flux-dev", "qwen-image"} <= keys


@pytest.fixture(scope="module")
def small_memories(one_thread):
    out = {}
    for name, key in (("sd3", "sd35-medium"), ("flux", "flux-dev"), ("qwen_image", "qwen-image")):
        family = get_family(name)
        model = next(m for m in family.published_models if m.key == key)
        out[key] = M.measure_published(model, family, small=True, max_sequence_length=16, lora_rank=4)
    return out


@pytest.mark.parametrize("key", ["sd35-medium", "flux-dev", "qwen-image"])
def test_meta_measurement_of_the_small_configs(key, small_memories):
    mem = small_memories[key]
    assert mem.transformer_params > 0 and mem.lora_params > 0 and mem.vae_params > 0
    assert mem.latent_shape == (16, 8, 8) and mem.image_tokens == 16
    for fit in (mem.train, mem.train_checkpointed, mem.decode):
        assert fit[1] > 0  # a larger batch costs more
    # (sampling at this size may peak in fixed tables, e.g. Qwen-Image's RoPE frequencies: per image >= 0)
    assert mem.sample[1] >= 0 and mem.train[1] > mem.sample[1]  # training keeps activations for backward
    assert mem.train_checkpointed[1] < mem.train[1]  # checkpointing keeps fewer
    base = M.MemoryMode(train_batch_size=4, sample_batch_size=2, decode_batch_size=4)
    e = M.estimate(mem, base, pairs_per_rank=8, num_steps=10)
    ckpt = M.estimate(mem, M.MemoryMode(**{**base.__dict__, "gradient_checkpointing": True}), 8, 10)
    cpu = M.estimate(mem, M.MemoryMode(**{**base.__dict__, "storage_device": "cpu"}), 8, 10)
    fp8 = M.estimate(mem, M.MemoryMode(**{**base.__dict__, "base_weights": "fp8", "gradient_checkpointing": True}), 8,
                     10)
    assert ckpt.phases["train"] < e.phases["train"]
    assert cpu.states_device == 0 and cpu.states_host == e.states_device > 0
    assert fp8.weights < ckpt.weights
    resident = M.estimate(mem, M.MemoryMode(**{**base.__dict__, "offload": False}), 8, 10)
    assert resident.resident_others > 0 and resident.peak >= e.peak


def synthetic(**over):
    g = 2**30
    values = dict(name="synthetic", transformer_params=2 * 10**9, linear_params=15 * 10**8, largest_linear=10**7,
                  lora_params=10**7, text_encoder_params=5 * 10**9, vae_params=8 * 10**7, reward_bytes=0,
                  latent_shape=(16, 64, 64), image_tokens=1024, sample=(g // 2, g // 5), train=(g // 5, 6 * g),
                  train_checkpointed=(g // 5, g // 2), decode=(0, 2 * g // 5))
    values.update(over)
    return M.ModelMemory(**values)


def rung(mode):
    return next(i for i, r in enumerate(M.LADDER) if all(getattr(mode, k) == v for k, v in r.items()))


def test_chooser_takes_the_fastest_mode_that_fits_and_walks_down_as_the_budget_shrinks():
    mem = synthetic()
    big = M.choose_mode(mem, 1000, pairs_per_rank=432, num_steps=40)
    assert rung(big.mode) == 0 and (big.mode.train_batch_size, big.mode.sample_batch_size) == (16, 8)
    last = 0
    for gb in (200, 120, 80, 48, 32, 24, 20, 16):
        plan = M.choose_mode(mem, gb, pairs_per_rank=432, num_steps=40)
        assert plan.estimate.peak <= gb * 2**30
        assert rung(plan.mode) >= last
        last = rung(plan.mode)
        assert "expected peak" in plan.message() and "estimate" in plan.message()
    assert last >= 2  # small budgets need checkpointing and states in host RAM
    with pytest.raises(M.MemoryBudgetError, match="does not fit in 4 GB") as err:
        M.choose_mode(mem, 4, pairs_per_rank=432, num_steps=40)
    assert "smallest estimate" in str(err.value) and "lower resolution" in str(err.value)


def test_chooser_without_fp8_and_with_cfg():
    mem = synthetic()
    no_fp8 = M.choose_mode(mem, 16, 432, 40, allow_fp8=False)
    assert no_fp8.mode.base_weights == "auto"
    plain = M.estimate(mem, M.MemoryMode(), 432, 40)
    cfg = M.estimate(mem, M.MemoryMode(), 432, 40, cfg_scale=4.0)
    assert cfg.phases["train"] > plain.phases["train"] and cfg.phases["sample"] > plain.phases["sample"]


def test_fused_attention_model_holds_no_score_matrix():
    import torch

    q = torch.empty(1, 2, 4096, 64, device="meta", dtype=torch.bfloat16, requires_grad=True)
    with M.fused_attention_model():
        peak = M.peak_bytes(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward())
    assert peak < 2 * 4096 * 4096  # an [L, L] score matrix alone would be 64 MiB


def test_cli_vram_prints_the_choice_and_trains_with_it(tiny_sd3_dir, tmp_path, capsys, one_thread):
    from fdfo_core.cli.main import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    run = tmp_path / "run"
    common = ["train", "--model", str(tiny_sd3_dir), "--prompts", str(prompts), "--reward", "brightness",
              "--preset", "toy", "--pairs-per-epoch", "2", "--num-steps", "2", "--lora-rank", "4", "--epochs", "1",
              "--no-progress", "--preview-every", "0"]
    assert main([*common, "--run-dir", str(run), "--vram", "64"]) == 0
    out = capsys.readouterr().out
    assert "--vram 64 GB:" in out and "expected peak" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["base_weights"] == "auto" and cfg["gradient_checkpointing"] is False
    assert main([*common, "--run-dir", str(tmp_path / "run2"), "--vram", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "does not fit in 0.5 GB" in err


def _family_cases():
    from family_cases import CASES

    return [c for c in CASES if c.id not in ("sd3", "sd35-large", "flux-schnell", "flux-kontext")]


@pytest.mark.parametrize("case", _family_cases(), ids=lambda c: c.id)
def test_vram_estimate_runs_for_every_family_pipeline(case, tmp_path, one_thread):
    """`--vram` measures a loaded pipeline of every family (its own prompt encoding gives the
    conditioning); a family whose passes cannot run on shapes alone gets a clear message."""
    import os

    from fdfo_core.backends.diffusers_backend import choose_memory_mode
    from fdfo_core.config import load_config

    if os.environ.get("FDFO_SLOW") != "1":
        pytest.skip("every family's pipeline: set FDFO_SLOW=1 (the CLI --vram test covers SD3 in the default suite)")
    pipe = case.pipeline(tmp_path, 0)
    cfg = load_config("toy", overrides=dict(lora_rank=4, lora_alpha=8.0, pairs_per_epoch=4, num_steps=4))
    if case.id == "hidream":  # its mixture-of-experts routing (bincount) has no meta-device kernel
        with pytest.raises(M.MemoryBudgetError, match="cannot estimate the memory.*by hand"):
            choose_memory_mode(pipe, cfg, 64, max_sequence_length=16)
        return
    chosen, plan = choose_memory_mode(pipe, cfg, 64, max_sequence_length=16)
    assert plan.estimate.peak <= 64 * 2**30 and chosen.train_batch_size == plan.mode.train_batch_size
