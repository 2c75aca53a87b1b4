"""The FDFO Human Picks node with the Trainer node, in-process with a fake ComfyUI
(tests/fake_comfy.py): a scripted artist answers through the node pack's picking hub (what the
routes call), picks land in the run folder, and Cancel during the wait keeps the LoRA and the clicks."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from comfy_scripts.nodepack import submodule
from fake_comfy import install as install_fake_comfy
from fdfo_core.rewards.pick_records import read_picks
from test_picking import ScriptedArtist

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def comfy(monkeypatch, tmp_path):
    return install_fake_comfy(monkeypatch, tmp_path / "comfy")


def picks_reward(**changes):
    node = submodule("nodes.picks_nodes").FDFOHumanPicksReward
    spec = node.INPUT_TYPES()["required"]
    values = {k: v[1].get("default", v[0][0] if isinstance(v[0], list) else None) for k, v in spec.items()}
    values.update(changes)
    return node().load(**values)[0]


def test_the_node_trains_on_picks_and_keeps_them_in_the_run_folder(comfy):
    hub = submodule("nodes.picks_server").HUB
    reward = picks_reward()
    assert reward.describe() == "human_picks(all pairs; unpicked pairs dropped)"
    with ScriptedArtist(hub) as artist:
        out = comfy.train(reward=reward, epochs=2, pairs_per_epoch=4)
    assert "2/2 epochs" in out["ui"]["text"][0]
    picks = read_picks(comfy.run_dir() / "picks.jsonl")
    assert len(picks.records) == len(artist.answers) == 8
    assert (comfy.loras / "art.safetensors").exists()
    assert hub.open_rounds() == []
    # The held-out evaluation (on by default) has no reward of its own for a pairwise reward: it
    # watches diversity and drift, chooses no best LoRA, and never asks the artist.
    import json

    lines = [json.loads(x) for x in (comfy.run_dir() / "metrics.jsonl").read_text().splitlines()]
    evaluated = [m for m in lines if m.get("diversity") is not None]
    assert evaluated and all(m["heldout_reward"] is None and m["drift"] is not None for m in evaluated)
    assert all(m["best_epoch"] is None for m in evaluated)
    assert not (comfy.run_dir() / "art-best.safetensors").exists()


def test_early_stop_on_the_criterion_needs_a_judge_with_picks(comfy):
    TrainingError = submodule("fdfo_core.run.hooks").TrainingError
    with pytest.raises(TrainingError, match="early_stop_patience.*connect a judge"):
        comfy.train(reward=picks_reward(), epochs=1, pairs_per_epoch=4, early_stop_patience=2)
    assert submodule("nodes.picks_server").HUB.open_rounds() == []


def test_an_epoch_with_every_pair_skipped_trains_nothing_and_the_node_finishes(comfy):
    hub = submodule("nodes.picks_server").HUB
    with ScriptedArtist(hub, choice="skip"):
        out = comfy.train(reward=picks_reward(), epochs=1, pairs_per_epoch=4)
    assert "1/1 epochs" in out["ui"]["text"][0]
    assert read_picks(comfy.run_dir() / "picks.jsonl").counts()["skip"] == 4
    assert (comfy.run_dir() / "reward_curve.png").exists()


def test_cancel_while_waiting_keeps_the_lora_and_every_click(comfy, monkeypatch):
    hub = submodule("nodes.picks_server").HUB
    stop = threading.Event()

    class InterruptProcessingException(Exception):
        pass

    def interrupted():
        if stop.is_set():
            raise InterruptProcessingException()

    monkeypatch.setattr(sys.modules["comfy.model_management"], "throw_exception_if_processing_interrupted", interrupted)
    with ScriptedArtist(hub, limit=5) as artist:
        def cancel_after_five():
            while len(artist.answers) < 5:
                time.sleep(0.01)
            time.sleep(0.3)  # the trainer is waiting for pair 2 of epoch 2
            stop.set()

        threading.Thread(target=cancel_after_five, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(InterruptProcessingException):
            comfy.train(reward=picks_reward(), epochs=3, pairs_per_epoch=4, preview_every=0)
    assert time.monotonic() - t0 < 60
    assert (comfy.loras / "art-interrupted.safetensors").exists()
    assert len(read_picks(comfy.run_dir() / "picks.jsonl").records) == 5
    assert hub.open_rounds() == []


def test_mixed_mode_needs_an_encoder_it_can_load(comfy, tmp_path, monkeypatch):
    from fdfo_core.rewards.base import RewardError

    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path / "no_rewards"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    with pytest.raises(Exception) as e:
        picks_reward(unpicked="preference model", encoder="dinov2")
    assert "dinov2" in str(e.value).lower()
    assert isinstance(e.value, RewardError) or type(e.value).__name__ == "RewardError"
