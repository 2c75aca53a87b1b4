import pytest
import torch

from fdfo_core.config import PRESETS, FDFOConfig, load_config
from fdfo_core.errors import ConfigError
from fdfo_core.flow.seeds import derive_seed, epoch_prompt_indices
from fdfo_core.backends.generation import amp_dtype


def test_defaults_are_the_published_recipe():
    c = FDFOConfig()
    assert (c.pairs_per_epoch, c.num_steps, c.cfg_scale, c.churn, c.churn_strength) == (432, 40, 1.0, "raw", 0.0025)
    assert (c.optimizer_steps_per_epoch, c.lr, c.beta1, c.beta2, c.weight_decay, c.adam_eps) == (4, 3e-5, 0.9, 0.999, 1e-4, 1e-8)
    assert (c.clip_range, c.lora_rank, c.lora_alpha, c.max_grad_norm, c.checkpoint_every) == (0.03, 32, 64.0, 1.0, 5)
    assert set(c.lora_targets) == {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    c.validate()
    for name in PRESETS:
        load_config(name)


def test_toml_and_overrides_layer_in_order(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("lr = 1e-4\nepochs = 7\n")
    c = load_config("toy", p, {"epochs": 9, "clip_range": None})
    assert c.lr == 1e-4 and c.epochs == 9 and c.height == 64
    assert FDFOConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("bad,match", [
    ({"height": 500}, "multiples of 16"),
    ({"churn": "wild"}, "churn must be one of"),
    ({"cfg_scale": 0.5}, "cfg_scale"),
    ({"steps_per_sample": 99}, "steps_per_sample"),
    ({"pairs_per_epoch": 1, "num_steps": 1, "optimizer_steps_per_epoch": 4}, "cannot fill"),
    ({"precision": "fp8"}, "precision"),
])
def test_bad_values_name_the_field(bad, match):
    with pytest.raises(ConfigError, match=match):
        FDFOConfig(**bad).validate()
    with pytest.raises(ConfigError, match="unknown config keys"):
        FDFOConfig.from_dict({"learning_rate": 1})


def test_precision_policy():
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert amp_dtype("fp32", torch.device("cuda")) is None
    assert amp_dtype("fp16", torch.device("cuda")) == torch.float16


def test_seeds_and_prompt_draws_are_stable_and_cover_the_list():
    assert derive_seed(0, "pair", 1, 2) == derive_seed(0, "pair", 1, 2) != derive_seed(0, "pair", 1, 3)
    idx = epoch_prompt_indices(0, 0, 10, 25)
    assert idx.shape == (25,) and set(idx[:10].tolist()) == set(range(10))
    assert torch.equal(idx, epoch_prompt_indices(0, 0, 10, 25))
    assert not torch.equal(idx, epoch_prompt_indices(0, 1, 10, 25))
