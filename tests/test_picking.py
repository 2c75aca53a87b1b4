"""Training by picking without ComfyUI: the pick session (answers from another thread, timeout,
Cancel, going on without the rest), the human picks reward (picks.jsonl, resume, mixed mode with
a preference model) and the trainer driven by a scripted artist on the tiny image flow."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fdfo_core.rewards.pairwise import (PairContext, PickConflict, PickError, PickingHub, PickItem, PickRound, PickSession,
                                       parse_answer)
from fdfo_core.rewards.pick_records import read_picks
from fdfo_core.rewards.base import RewardError
from fdfo_core.rewards.human_picks import HumanPicksReward
from fdfo_core.run.hooks import TrainingError, TrainingInterrupted
from fdfo_core.methods import FDFOTrainer
from image_flow import ImageFlowBackend, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def contrast(path) -> float:
    """The spread (standard deviation) of an image file's pixel values, in [0, 0.5]."""
    return float(np.asarray(Image.open(path).convert("RGB"), dtype="float32").std() / 255)


class ScriptedArtist:
    """Answers every open round of a hub from its own thread, like the browser panel: the image
    with the higher `rule(path)` wins (the tiny flow's adapter is linear in the latent, so it can
    learn contrast, not a colour shift), or a fixed choice. Stops after `limit` answers when given."""

    def __init__(self, hub: PickingHub, rule=contrast, choice: str | None = None, limit: int | None = None, delay: float = 0.0):
        self.hub, self.rule, self.choice, self.limit, self.delay = hub, rule, choice, limit, delay
        self.answers: list[tuple[int, int, str]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(5)

    def _run(self):
        while not self._stop.is_set():
            for payload in self.hub.open_rounds():
                for pair in payload["pairs"]:
                    if pair["choice"] is not None or (self.limit is not None and len(self.answers) >= self.limit):
                        continue
                    s, r, i = payload["session"], payload["round"], pair["index"]
                    try:
                        if self.choice:
                            choice = self.choice
                        else:
                            left = self.rule(self.hub.image_path(s, r, i, "left"))
                            right = self.rule(self.hub.image_path(s, r, i, "right"))
                            choice = "left" if left > right else "right"
                        time.sleep(self.delay)
                        self.hub.answer(s, r, i, choice)
                        self.answers.append((payload["epoch"], pair["pair_id"], choice))
                    except ValueError:  # PickError (of either import path): the round closed meanwhile
                        break
            time.sleep(0.01)


def _round(tmp_path, n=3):
    items = [PickItem(pair_id=i, prompt=f"p{i}", left_image=tmp_path / f"{i}l.png", right_image=tmp_path / f"{i}r.png")
             for i in range(n)]
    return PickRound(epoch=0, items=items)


def test_session_waits_for_answers_from_another_thread_and_saves_each_first(tmp_path):
    events, saved = [], []
    session = PickSession(publish=lambda e, d: events.append(e), on_answer=lambda r, it, c: saved.append((it.pair_id, c)))
    hub = PickingHub()
    hub.add(session)
    rnd = _round(tmp_path)
    session.open(rnd)
    assert hub.open_rounds()[0]["total"] == 3
    with ScriptedArtist(hub, choice="equal"):
        outcome = session.wait(timeout=10)
    assert outcome == "complete"
    assert [it.choice for it in rnd.items] == ["equal"] * 3
    assert saved == [(0, "equal"), (1, "equal"), (2, "equal")]
    assert events[0] == "round" and events[-1] == "closed" and "update" in events
    assert hub.open_rounds() == []  # closed


def test_cancel_stops_the_wait_within_a_poll_and_closes_the_round(tmp_path):
    events = []
    session = PickSession(publish=lambda e, d: events.append((e, d)))
    session.open(_round(tmp_path))
    t0 = time.monotonic()

    def cancel():
        if time.monotonic() - t0 > 0.3:
            raise TrainingInterrupted("cancelled")

    with pytest.raises(TrainingInterrupted):
        session.wait(timeout=None, check_cancel=cancel, poll=0.05)
    assert time.monotonic() - t0 < 1.0
    assert events[-1][0] == "closed" and events[-1][1]["reason"] == "cancelled"
    with pytest.raises(PickError, match="not open any more"):
        session.answer(events[0][1]["round"], 0, "left")


def test_timeout_and_going_on_without_the_rest(tmp_path):
    session = PickSession()
    rnd = _round(tmp_path)
    session.open(rnd)
    session.answer(rnd.round_id, 1, "left")
    t0 = time.monotonic()
    assert session.wait(timeout=0.3, poll=0.05) == "timeout"
    assert 0.25 < time.monotonic() - t0 < 2.0
    assert [it.choice for it in rnd.items] == [None, "left", None]

    rnd2 = _round(tmp_path)
    session.open(rnd2)
    session.answer(rnd2.round_id, 0, "right")
    threading.Timer(0.1, lambda: session.finish(rnd2.round_id)).start()
    assert session.wait(timeout=10, poll=0.05) == "finished"


def test_bad_answers_are_refused_with_a_reason(tmp_path):
    hub = PickingHub()
    session = hub.add(PickSession())
    rnd = _round(tmp_path)
    session.open(rnd)
    with pytest.raises(PickError, match="choice must be one of"):
        hub.answer(session.session_id, rnd.round_id, 0, "maybe")
    with pytest.raises(PickError, match="index must be 0..2"):
        hub.answer(session.session_id, rnd.round_id, 7, "left")
    with pytest.raises(PickError, match="no picking session"):
        hub.answer("nope", rnd.round_id, 0, "left")
    with pytest.raises(PickError, match="not open"):
        hub.answer(session.session_id, "old-round", 0, "left")
    with pytest.raises(PickError, match="lacks"):
        parse_answer({"session": "s", "round": "r"})
    with pytest.raises(PickError, match="whole number"):
        parse_answer({"session": "s", "round": "r", "index": "1", "choice": "left"})
    # an answer that cannot be saved is not taken
    session.on_answer = lambda r, it, c: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.raises(OSError):
        hub.answer(session.session_id, rnd.round_id, 0, "left")
    assert rnd.items[0].choice is None
    # a corrected pick replaces the first
    session.on_answer = None
    hub.answer(session.session_id, rnd.round_id, 0, "left")
    hub.answer(session.session_id, rnd.round_id, 0, "Right")
    assert rnd.items[0].choice == "right"


def test_a_second_answer_that_did_not_see_the_first_is_refused_not_overwritten(tmp_path):
    """Two windows (tabs) on one round: an answer states the pick it saw (`expect`); one for a pair
    that holds something else is refused with a message, and the pick made first is kept. A
    correction that names the pick it replaces is taken, and the update says whose pick it changed."""
    events, saved = [], []
    session = PickSession(publish=lambda e, d: events.append((e, d)), on_answer=lambda r, it, c: saved.append((it.pair_id, c)))
    hub = PickingHub()
    hub.add(session)
    rnd = _round(tmp_path)
    session.open(rnd)
    sid, rid = session.session_id, rnd.round_id
    hub.answer(sid, rid, 0, "left", expect=None, client="tab-a")
    with pytest.raises(PickConflict, match=r"pair 1 was answered in another window or tab meanwhile: it holds 'left'.*"
                                           r"'right' was not saved"):
        hub.answer(sid, rid, 0, "right", expect=None, client="tab-b")
    assert rnd.items[0].choice == "left" and rnd.items[0].answered_by == "tab-a" and saved == [(0, "left")]
    # the same window sending twice for what it showed once (a double click, a repeated key)
    with pytest.raises(PickConflict, match="answered in this window meanwhile"):
        hub.answer(sid, rid, 0, "left", expect=None, client="tab-a")
    # a correction that names the pick it replaces, from the other window: taken and reported
    data = hub.answer(sid, rid, 0, "right", expect="left", client="tab-b")
    assert rnd.items[0].choice == "right" and saved == [(0, "left"), (0, "right")]
    assert data["last"] == {"index": 0, "choice": "right", "client": "tab-b", "previous": "left", "previous_client": "tab-a"}
    assert events[-1][0] == "update" and events[-1][1]["last"]["previous_client"] == "tab-a"
    assert data["pairs"][0]["by"] == "tab-b"
    with pytest.raises(PickError, match="expect must be null or one of"):
        hub.answer(sid, rid, 1, "left", expect="maybe")
    # the network form: expect defaults to null (never overwrite what the window did not show)
    assert parse_answer({"session": "s", "round": "r", "index": 1, "choice": "left"}) == ("s", "r", 1, "left", None, None)
    assert parse_answer({"session": "s", "round": "r", "index": 1, "choice": "left", "expect": "right",
                         "client": "c"}) == ("s", "r", 1, "left", "right", "c")
    with pytest.raises(PickError, match="expect must be null or a choice"):
        parse_answer({"session": "s", "round": "r", "index": 1, "choice": "left", "expect": 3})


def test_human_picks_reward_refuses_single_images():
    with pytest.raises(RewardError, match="scores pairs"):
        HumanPicksReward()(torch.rand(2, 3, 8, 8), ["a", "b"])
    with pytest.raises(RewardError, match="needs a preference model"):
        HumanPicksReward(unpicked="preference")


def _trainer(tmp_path, reward, **changes):
    cfg = tiny_config(**{"epochs": 3, "pairs_per_epoch": 6, "checkpoint_every": 0, **changes})
    return FDFOTrainer(ImageFlowBackend(config=cfg), reward, ["a red barn", "a blue lake"], cfg, run_dir=tmp_path / "run",
                       callbacks=__import__("fdfo_core.run.trainer", fromlist=["Callbacks"]).Callbacks(log=None))


def _held_out_contrast(trainer, n=128) -> float:
    """Mean pixel spread of fresh images (seeds never used in training) from the trainer's backend."""
    from fdfo_core.backends.generation import generate_images

    cfg = trainer.config
    img = generate_images(trainer.backend, ["a red barn", "a blue lake"] * (n // 2), range(10_000, 10_000 + n),
                          cfg.num_steps, cfg.height, cfg.width, batch_size=n)
    return float(img.std(dim=(1, 2, 3)).mean())


def test_scripted_artist_trains_the_model_toward_their_taste(tmp_path):
    hub = PickingHub()
    reward = HumanPicksReward(hub=hub)
    trainer = _trainer(tmp_path, reward, epochs=6, lr=0.2)
    before = _held_out_contrast(trainer)
    with ScriptedArtist(hub) as artist:
        history = trainer.train()
    after = _held_out_contrast(trainer)
    print(f"\nscripted artist (the higher-contrast image): held-out contrast {before:.4f} -> {after:.4f}")
    assert after > before + 0.02
    run = tmp_path / "run"
    picks = read_picks(run / "picks.jsonl")
    assert len(picks.records) == 6 * 6 == len(artist.answers)  # every click is in the file
    assert {(r.epoch, r.pair_id, r.choice) for r in picks.records} == set(artist.answers)
    for r in picks.records:  # the images the artist saw are kept, and agree with the rule
        assert r.image_path("left").exists() and r.image_path("right").exists()
        assert (contrast(r.image_path("left")) > contrast(r.image_path("right"))) == (r.choice == "left")
    assert history[-1]["picks_human"] == 6 and history[-1]["pairs"] == 6
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["picks_left"] + metrics[0]["picks_right"] == 6 and metrics[0]["pick_wait_seconds"] >= 0
    assert json.loads((run / "run.json").read_text())["definition"]["reward"] == "human_picks"


def test_skipped_pairs_are_dropped_and_an_all_skipped_epoch_leaves_the_model_alone(tmp_path):
    hub = PickingHub()
    trainer = _trainer(tmp_path, HumanPicksReward(hub=hub), epochs=1, max_bad_pair_fraction=0.0)
    lora_before = trainer.backend.lora_B.detach().clone()
    with ScriptedArtist(hub, choice="skip"):
        history = trainer.train()  # skips are no failures: max_bad_pair_fraction 0 does not stop the run
    assert history[0]["pairs"] == 0 and history[0]["pairs_declined"] == 6 and history[0]["picks_skipped"] == 6
    assert torch.equal(trainer.backend.lora_B, lora_before)
    assert read_picks(tmp_path / "run" / "picks.jsonl").counts()["skip"] == 6


def test_unpicked_pairs_after_a_timeout_are_dropped_and_clicks_kept(tmp_path):
    hub = PickingHub()
    trainer = _trainer(tmp_path, HumanPicksReward(hub=hub, timeout=0.5), epochs=1)
    with ScriptedArtist(hub, limit=2):
        history = trainer.train()
    assert history[0]["pairs"] == 2 and history[0]["pairs_unpicked_dropped"] == 4
    assert history[0]["pick_outcome"] == "timeout"
    assert len(read_picks(tmp_path / "run" / "picks.jsonl").records) == 2


def test_cancel_while_waiting_keeps_the_lora_and_every_click_and_resume_asks_only_the_rest(tmp_path):
    hub = PickingHub()
    reward = HumanPicksReward(hub=hub)
    trainer = _trainer(tmp_path, reward, epochs=3, checkpoint_every=1)
    stop = {"go": False}

    def cancel():
        if stop["go"]:
            raise TrainingInterrupted("Cancel")

    trainer.callbacks.check_cancel = cancel
    trainer.callbacks.on_epoch_end = lambda t, m: None
    with ScriptedArtist(hub, limit=8) as artist:
        # epoch 1 complete, then 2 clicks of epoch 2, then Cancel
        def watch():
            while len(artist.answers) < 8:
                time.sleep(0.01)
            time.sleep(0.2)
            stop["go"] = True

        threading.Thread(target=watch, daemon=True).start()
        with pytest.raises(TrainingInterrupted):
            trainer.train()
    run = tmp_path / "run"
    assert (run / "run-interrupted.safetensors").exists() or list(run.glob("*-interrupted.safetensors"))
    picks = read_picks(run / "picks.jsonl")
    assert len(picks.records) == 8 and {r.epoch for r in picks.records} == {0, 1}

    # resume: epoch 2's two picks are reused, only its other four pairs are asked
    hub2 = PickingHub()
    trainer2 = _trainer(tmp_path, HumanPicksReward(hub=hub2), epochs=2, checkpoint_every=1)
    trainer2.resume(run)
    assert trainer2.epoch == 1
    with ScriptedArtist(hub2) as artist2:
        history = trainer2.train()
    assert len(artist2.answers) == 4
    assert history[-1]["picks_reused"] == 2 and history[-1]["picks_human"] == 6
    assert len(read_picks(run / "picks.jsonl").records) == 12


def test_two_runs_with_the_same_seed_keep_every_pick_apart(tmp_path):
    """Picks carry their run's id (run.json's run_id, made once per run and kept on resume), so the
    picks of two runs made with the same seed (same epochs, pairs, seeds, prompts) are all kept
    when read together and all learned from (issue 27: 200 picks read, 95 fitted)."""
    import reward_fixtures as rf
    from fdfo_core.rewards.image_encoders import load_image_encoder
    from fdfo_core.rewards.preference import PreferenceModel

    runs = []
    for name in ("a", "b"):
        hub = PickingHub()
        trainer = _trainer(tmp_path / name, HumanPicksReward(hub=hub), epochs=2, checkpoint_every=1)
        with ScriptedArtist(hub):
            trainer.train()
        runs.append(tmp_path / name / "run")
    ids = [json.loads((r / "run.json").read_text())["run_id"] for r in runs]
    assert ids[0] != ids[1]
    for run, run_id in zip(runs, ids):
        assert {r.run_id for r in read_picks(run / "picks.jsonl").records} == {run_id}
    # the same pairs in both runs ...
    a, b = (read_picks(r / "picks.jsonl").records for r in runs)
    assert [(r.epoch, r.pair_id, r.seed, r.prompt) for r in a] == [(r.epoch, r.pair_id, r.seed, r.prompt) for r in b]
    both = read_picks([r / "picks.jsonl" for r in runs])
    assert len(both.records) == 24 and both.runs() == 2 and both.duplicates == 0 and both.corrected == 0
    encoder = load_image_encoder("dinov2", str(rf.write_dinov2_folder(tmp_path / "dinov2", seed=0)), reward="preference")
    model = PreferenceModel(encoder)
    assert model.add_records(both.records) == 24 and len(model.pairs) == 24


def test_mixed_mode_the_preference_model_scores_the_pairs_the_artist_does_not_pick(tmp_path):
    import reward_fixtures as rf
    from fdfo_core.rewards.image_encoders import load_image_encoder
    from fdfo_core.rewards.preference import PreferenceModel

    encoder = load_image_encoder("dinov2", str(rf.write_dinov2_folder(tmp_path / "dinov2", seed=0)), reward="preference")
    hub = PickingHub()
    reward = HumanPicksReward(hub=hub, human_pairs=3, unpicked="preference",
                              preference=PreferenceModel(encoder, holdout=0.0), min_picks=3, require_accuracy=False)
    assert reward.spec_options["preference"]["encoder"] == "dinov2" and "timeout" not in reward.spec_options
    trainer = _trainer(tmp_path, reward, epochs=2)
    with ScriptedArtist(hub) as artist:
        history = trainer.train()
    assert len(artist.answers) == 6  # 3 per epoch by hand
    assert history[0]["pairs_model_scored"] == 3 and history[0]["pairs"] == 6  # fitted on the first 3 picks already
    assert history[1]["preference_pairs"] == 6
    picks = read_picks(tmp_path / "run" / "picks.jsonl")
    model = [r for r in picks.records if r.source == "model"]
    assert len(model) == 6 and all(-1 < r.extra["reward_delta"] < 1 for r in model)
    assert all(r.image_path("left").exists() for r in model)


def test_mixed_mode_waits_for_a_measured_accuracy_and_says_so(tmp_path):
    """A preference model fitted on a handful of picks has no measured accuracy: its guesses would
    count like the artist's picks. By default mixed mode drops the unpicked pairs until the held-out
    accuracy is measured and beats always answering one side, and the log says why (issue 27)."""
    import reward_fixtures as rf
    from fdfo_core.rewards.image_encoders import load_image_encoder
    from fdfo_core.rewards.preference import PreferenceModel

    encoder = load_image_encoder("dinov2", str(rf.write_dinov2_folder(tmp_path / "dinov2", seed=0)), reward="preference")
    hub = PickingHub()
    reward = HumanPicksReward(hub=hub, human_pairs=3, unpicked="preference", preference=PreferenceModel(encoder),
                              min_picks=3)
    assert "require_accuracy" not in reward.spec_options  # the default is not recorded (older runs compare equal)
    logs = []
    trainer = _trainer(tmp_path, reward, epochs=2)
    trainer.callbacks.log = logs.append
    with ScriptedArtist(hub):
        history = trainer.train()
    assert [m["pairs_model_scored"] for m in history] == [0, 0]
    assert [m["pairs_unpicked_dropped"] for m in history] == [3, 3]
    assert any("preference model waits: its held-out accuracy is not measured yet" in line for line in logs), logs
    assert not [r for r in read_picks(tmp_path / "run" / "picks.jsonl").records if r.source == "model"]


def test_per_prompt_normalisation_and_several_ranks_are_refused_for_picks(tmp_path):
    from fdfo_core.rewards import wrap_normalization

    trainer = _trainer(tmp_path, wrap_normalization(HumanPicksReward(), "per_prompt"), epochs=1)
    with pytest.raises(TrainingError, match="per-prompt normalisation does not apply"):
        trainer.train()


def test_pair_context_seeds_are_the_pairs_noise_seeds(tmp_path):
    from fdfo_core.rewards.pairwise import PairScores, PairwiseReward
    from fdfo_core.flow.seeds import derive_seed

    seen = {}

    class Constant(PairwiseReward):
        name = "constant"

        def score_pairs(self, left, right, prompts, context: PairContext):
            seen.update(epoch=context.epoch, ids=context.pair_ids, seeds=context.seeds, shape=tuple(left.shape))
            return PairScores(delta=torch.ones(left.shape[0], dtype=torch.float64),
                              declined=torch.zeros(left.shape[0], dtype=torch.bool))

    trainer = _trainer(tmp_path, Constant(), epochs=1)
    trainer.train()
    assert seen["ids"] == list(range(6)) and seen["shape"] == (6, 3, 4, 4)
    assert seen["seeds"] == [derive_seed(trainer.config.seed, "pair", 0, i) for i in range(6)]


def test_a_pairwise_reward_trains_exactly_like_the_reward_whose_difference_it_gives(tmp_path):
    """Sign and scale check: a pairwise reward returning R(left) - R(right) of a per-image reward
    trains the same LoRA as that reward itself (only differences of a pair enter FDFO)."""
    from fdfo_core.rewards.pairwise import PairScores, PairwiseReward
    from fdfo_core.rewards import build_reward

    brightness = build_reward("brightness")

    class BrightnessDifference(PairwiseReward):
        name = "brightness_difference"

        def score_pairs(self, left, right, prompts, context):
            d = (brightness(left, list(prompts)) - brightness(right, list(prompts))).double()
            return PairScores(delta=d, declined=torch.zeros(left.shape[0], dtype=torch.bool))

    results = []
    for i, reward in enumerate((brightness, BrightnessDifference())):
        trainer = _trainer(tmp_path / str(i), reward, epochs=2)
        trainer.train()
        results.append(trainer.backend.lora_B.detach().clone())
    assert results[0].abs().max() > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-6)


def test_the_command_line_points_from_human_picks_to_the_preference_reward():
    from fdfo_core.rewards import build_reward

    with pytest.raises(RewardError, match="preference.picks="):
        build_reward("human_picks")
