"""Nothing a run definition compares changes with a setting declared resumable (issue 27 item 2).

RESUMABLE_CHANGES names the settings a resumed run may change: storage dtype (base_weights fp8),
where recorded states live, offload, torch.compile, gradient checkpointing, batch sizes. The model
fingerprint is compared on resume, so it must not move with any of them: a tiny HiDream run
resumed with `--base-weights fp8` was refused as another model because the fingerprint hashed its
last layer after the fp8 cast (and in ComfyUI the last Linear, fp8 whenever the loader's weight
dtype is). `backend.weights_digest` hashes a weight rounded to e4m3, whatever it is stored in.
"""

from __future__ import annotations

import os

import pytest
import torch

from fdfo_core.backends.interface import weights_digest
from fdfo_core.backends.diffusers_backend import DiffusersBackend
from fdfo_core.config import load_config
from fdfo_core.rewards import build_reward
from fdfo_core.run.definition import RESUMABLE_CHANGES, RunDefinition, differences
from fdfo_core.run.hooks import Callbacks, RunChangeRefused
from fdfo_core.methods import FDFOTrainer

from family_cases import CASES_BY_ID

PROMPTS = ["a red circle", "two blue squares"]
pytestmark = pytest.mark.usefixtures("one_thread")


def bf16_weight(seed=0, shape=(48, 32)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_weights_digest_does_not_depend_on_the_storage_dtype(storage):
    w = bf16_weight()  # a weight as published (bf16 file)
    assert weights_digest(w.to(storage)) == weights_digest(w)
    assert weights_digest(w).startswith("e4m3:")


def test_weights_digest_tells_other_weights_apart():
    w = bf16_weight()
    assert weights_digest(bf16_weight(1)) != weights_digest(w)
    assert weights_digest(w * 1.25) != weights_digest(w)  # a change beyond e4m3 rounding
    assert weights_digest(w.reshape(32, 48)) != weights_digest(w)  # same values, another layer shape


def test_the_old_digest_of_a_record_is_not_compared_with_the_new_one():
    """Runs recorded before the e4m3 digest (the stored weights hashed as they were) still resume:
    architecture, config and LoRA layout are compared, the weights of the two schemes are not."""
    old = RunDefinition(model={"family": "sd3", "weights": "0123456789abcdef", "lora": "rank=4"})
    new = RunDefinition(model={"family": "sd3", "weights": "e4m3:fedcba9876543210", "lora": "rank=4"})
    assert differences(old, new) == []
    other = RunDefinition(model={"family": "sd3", "weights": "e4m3:0000000000000000", "lora": "rank=4"})
    assert [(d.field, d.key) for d in differences(new, other)] == [("model", "weights")]
    assert [(d.field, d.key) for d in differences(old, new.replace(model={**new.model, "lora": "rank=8"}))] == [
        ("model", "lora")]


def tiny(case, **over):
    values = dict(epochs=1, pairs_per_epoch=2, num_steps=2, sample_batch_size=2, train_batch_size=4, lora_rank=2,
                  lora_alpha=4.0, checkpoint_every=1, lr=1e-2, height=64, width=64)
    values.update(over)
    return load_config("toy", overrides=values)


#: Every setting RESUMABLE_CHANGES lets a resume change that changes how the model is held
#: (the others are counts and cadences): config changes and the backend's offload switch.
HOLDING = {
    "base_weights": dict(base_weights="fp8"),
    "gradient_checkpointing": dict(gradient_checkpointing=True),
    "storage_device": dict(storage_device="cpu"),
    "compile": dict(compile=True),
    "offload": dict(),
}
#: torch.compile's first use imports inductor (~25 s on CI's CPUs): with FDFO_SLOW=1 only.
SLOW = os.environ.get("FDFO_SLOW") == "1"


def test_every_resumable_holding_setting_is_covered():
    assert {"base_weights", "gradient_checkpointing", "storage_device", "compile"} <= RESUMABLE_CHANGES
    assert set(HOLDING) - {"offload"} <= RESUMABLE_CHANGES


@pytest.mark.parametrize("case_id", ["hidream", "wan21", "z-image"])
def test_fingerprint_is_the_same_under_every_resumable_setting(case_id, tmp_path):
    case = CASES_BY_ID[case_id]
    base = DiffusersBackend(case.pipeline(tmp_path / "base", 0), tiny(case), max_sequence_length=case.max_sequence_length)
    expected = base.fingerprint()
    for name, over in HOLDING.items():
        if name == "compile" and not SLOW:
            continue
        backend = DiffusersBackend(case.pipeline(tmp_path / name, 0), tiny(case, **over),
                                   max_sequence_length=case.max_sequence_length, offload=name == "offload")
        assert backend.fingerprint() == expected, name
    assert DiffusersBackend(case.pipeline(tmp_path / "other", 1), tiny(case),
                            max_sequence_length=case.max_sequence_length).fingerprint()["weights"] != expected["weights"]


def trainer(case, tmp, run_dir, seed=0, **over):
    backend = DiffusersBackend(case.pipeline(tmp, seed), tiny(case, **over), max_sequence_length=case.max_sequence_length)
    return FDFOTrainer(backend, build_reward("brightness"), PROMPTS, backend.config, run_dir=run_dir,
                       callbacks=Callbacks(log=None))


@pytest.mark.parametrize("setting", ["base_weights", pytest.param("gradient_checkpointing", marks=pytest.mark.skipif(
    not SLOW, reason="the fingerprint test covers it; the full resume with FDFO_SLOW=1"))])
def test_a_hidream_run_resumes_with_a_resumable_setting_changed(setting, tmp_path):
    """The issue's example: a tiny HiDream run resumed with fp8 base weights (and, alike, with
    gradient checkpointing) continues; another model (other weights, same architecture) is refused."""
    case = CASES_BY_ID["hidream"]
    run = tmp_path / "run"
    trainer(case, tmp_path / "a", run).train()
    resumed = trainer(case, tmp_path / "b", run, epochs=2, **HOLDING[setting])
    resumed.resume(run)
    assert resumed.epoch == 1
    resumed.train()
    assert resumed.epoch == 2
    with pytest.raises(RunChangeRefused) as e:
        trainer(case, tmp_path / "c", run, seed=1, epochs=3, **HOLDING[setting]).resume(run)
    assert [(d.field, d.key) for d in e.value.diffs] == [("model", "weights")]
