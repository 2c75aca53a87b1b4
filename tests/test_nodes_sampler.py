"""The FDFO Paired Sampler node shows exactly the pairs the FDFO trainer trains on: the same prompt
order, shared noise, churn draws and final latents, whatever the batch size (in-process, with the
fake ComfyUI of tests/fake_comfy.py, whose ComfyBackend is the tiny `image_flow.ImageFlowBackend`)."""

import pytest
import torch

from comfy_scripts.nodepack import submodule
from fake_comfy import install as install_fake_comfy

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]
PAIRS = 5
#: Paired Sampler widgets: CFG with a negative prompt, interval churn (a random centre per pair)
WIDGETS = dict(seed=11, steps=4, cfg=2.0, churn="interval", churn_strength=0.3, width=16, height=16,
               negative_prompt="blurry")


@pytest.fixture
def comfy(monkeypatch, tmp_path):
    return install_fake_comfy(monkeypatch, tmp_path / "comfy")


def trainer_config(batch_size: int):
    """The trainer's config for the widgets above (as the Trainer node builds it from the same widgets)."""
    w = WIDGETS
    return submodule("fdfo_core.config").FDFOConfig(
        pairs_per_epoch=PAIRS, num_steps=w["steps"], cfg_scale=w["cfg"], churn=w["churn"],
        churn_strength=w["churn_strength"], width=w["width"], height=w["height"], seed=w["seed"],
        negative_prompt=w["negative_prompt"], sample_batch_size=batch_size, optimizer_steps_per_epoch=1,
        lora_rank=2, lora_alpha=2.0,
    ).validate()


def trainer_rollout(epoch: int, batch_size: int):
    """The FDFO trainer's own sampling phase of `epoch` (node pack modules, as the Trainer node runs it)."""
    ImageFlowBackend = submodule("nodes.comfy_backend").ComfyBackend  # the fake: an ImageFlowBackend
    FDFOTrainer = submodule("fdfo_core.methods.fdfo").FDFOTrainer
    Brightness = submodule("fdfo_core.rewards.simple").Brightness
    Callbacks = submodule("fdfo_core.run.hooks").Callbacks
    cfg = trainer_config(batch_size)
    backend = ImageFlowBackend({"seed": 0}, None, None, cfg)
    trainer = FDFOTrainer(backend, Brightness(), PROMPTS, cfg, callbacks=Callbacks(log=None))
    return trainer.sample_epoch(epoch), backend


@pytest.mark.parametrize("epoch", [0, 2])
def test_the_paired_sampler_node_shows_the_trainers_pairs(comfy, epoch):
    node = submodule("nodes.sampler_nodes").FDFOPairedSampler()
    images, _, report, rewards = node.sample({"seed": 0}, None, None, PROMPTS, PAIRS, epoch=epoch, batch_size=3,
                                             **WIDGETS)
    roll, backend = trainer_rollout(epoch, batch_size=2)

    # The same prompt of every pair, in the trainer's order.
    lines = report.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [PROMPTS[i] for i in roll.prompt_ids.tolist()]
    # Identical images a0, b0, a1, b1, ...: the same initial noise, churn and latents, bit for bit.
    with torch.no_grad():
        decoded = backend.decode(roll.final)
    trainer_images = torch.stack([decoded[:PAIRS], decoded[PAIRS:]], dim=1).flatten(0, 1)
    assert torch.equal(images.permute(0, 3, 1, 2), trainer_images)
    # Churn is on: the two images of a pair differ (an equality of both branches would prove little).
    assert float((roll.final[:PAIRS] - roll.final[PAIRS:]).abs().min()) > 0
    assert rewards == []


def test_sample_epoch_pairs_is_the_trainers_draw_for_any_batch_size(comfy):
    sn = submodule("nodes.sampler_nodes")
    roll, backend = trainer_rollout(1, batch_size=PAIRS)
    for batch_size in (1, 4):
        cfg = trainer_config(batch_size)
        with backend.session(train=False):
            latents, prompt_idx = sn.sample_epoch_pairs(backend, cfg, PROMPTS, 1)
        assert prompt_idx == roll.prompt_ids.tolist()
        assert torch.equal(latents, roll.final)
    # Another epoch draws other pairs (the test can fail).
    with backend.session(train=False):
        other, _ = sn.sample_epoch_pairs(backend, trainer_config(2), PROMPTS, 0)
    assert not torch.equal(other, roll.final)
