"""Guardrails against reward hacking: held-out evaluation, the best LoRA, early stop, their cost."""

import json
import math

import pytest
import torch

from fdfo_core.errors import ConfigError
from fdfo_core.config import FDFOConfig
from fdfo_core.run.evaluation import (
    EVAL_SEED_BASE,
    EmbeddingSpace,
    HeldOutSet,
    ImageSpace,
    drift_from_base,
    find_image_space,
    pack_images,
    quantize_images,
    seed_diversity,
    spread_select,
    unpack_images,
)
from fdfo_core.run.guardrails import EVAL_COLUMNS
from fdfo_core.backends.lora_files import load_lora
from fdfo_core.rewards import PerPromptNormalized, Reward, RewardError, WeightedSum
from fdfo_core.run.hooks import Callbacks, TrainingError
from fdfo_core.methods import FDFOTrainer

from flow2d import MinusDistance, PointBackend, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the pieces ----------------------------------------------------------------------------------


def test_heldout_set_spreads_prompts_and_fixes_seeds():
    assert spread_select(list("abcdefgh"), 4) == ["a", "c", "e", "g"]
    assert spread_select(["a", "b", "a"], 4) == ["a", "b"]  # distinct, all when few
    held = HeldOutSet.build([" p1 ", "", "p2", "p3"], count=2, seeds_per_prompt=3)
    assert held.prompts == ("p1", "p2") and held.seeds == tuple(EVAL_SEED_BASE + i for i in range(3))
    assert held.image_prompts() == ["p1"] * 3 + ["p2"] * 3
    assert held.image_seeds() == list(held.seeds) * 2 and held.size == 6
    with pytest.raises(ValueError, match="empty"):
        HeldOutSet.build(["  "], 2, 2)


def test_diversity_and_drift_in_pixel_space():
    space = ImageSpace()
    black, white = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    # prompt 0: black and white (distance 1); prompt 1: two identical greys (distance 0)
    images = torch.cat([black, white, 0.5 * white, 0.5 * white])
    f = space.features(images)
    assert seed_diversity(f, n_prompts=2, n_seeds=2, space=space) == pytest.approx(0.5)
    assert seed_diversity(f, n_prompts=4, n_seeds=1, space=space) is None
    assert drift_from_base(f, f, space) == 0.0
    assert drift_from_base(space.features(images * 0.0), f, space) == pytest.approx((1 + 0.5 + 0.5) / 4)


class Embedder(Reward):
    """A reward with an image encoder: the embedding is the mean colour (so 1 - cos is known)."""

    name = "embedder"

    def image_embeds(self, images):
        return images.mean(dim=(2, 3)) * 7.0  # not unit norm: the space normalises

    def _score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


class Plain(Reward):
    name = "plain"

    def _score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def test_image_space_prefers_the_judges_encoder_then_the_rewards_then_pixels():
    assert find_image_space(Plain(), Plain()).name == "pixel"
    assert find_image_space(None, Embedder()).name == "embedding:reward embedder"
    assert find_image_space(Embedder(), Embedder()).name == "embedding:judge embedder"
    summed = WeightedSum([(1.0, Plain()), (0.5, Embedder())])
    assert find_image_space(Plain(), summed).name.startswith("embedding:reward") and "embedder" in find_image_space(Plain(), summed).name
    assert isinstance(find_image_space(None, PerPromptNormalized(Embedder())), EmbeddingSpace)
    space = find_image_space(None, Embedder())
    red, green = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    red[:, 0], green[:, 1] = 1.0, 1.0
    f = space.features(torch.cat([red, red, green]))
    assert torch.allclose(f.norm(dim=1), torch.ones(3))
    assert drift_from_base(f[:2], f[1:], space) == pytest.approx(0.5)  # (1 - 1) and (1 - 0), averaged


def test_images_pack_into_a_checkpoint_exactly():
    x = quantize_images(torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    packed = pack_images(x)
    assert packed.dtype == torch.uint8 and torch.equal(unpack_images(packed), x)
    points = torch.randn(5, 2)
    assert torch.equal(unpack_images(pack_images(quantize_images(points))), points)


def test_config_checks_the_guardrail_settings():
    FDFOConfig(eval_every=0).validate()
    with pytest.raises(ConfigError, match="eval_seeds"):
        FDFOConfig(eval_seeds=1).validate()
    with pytest.raises(ConfigError, match="judge needs the held-out evaluation"):
        FDFOConfig(eval_every=0, judge="hpsv2").validate()
    with pytest.raises(ConfigError, match="early_stop_patience needs"):
        FDFOConfig(eval_every=0, early_stop_patience=2).validate()
    with pytest.raises(ConfigError, match="early_stop_min_diversity"):
        FDFOConfig(early_stop_min_diversity=1.5).validate()


# --- in the loop, on the 2-D flow (seconds) ------------------------------------------------------


@pytest.fixture(scope="module")
def flow2d_base():
    return pretrain(steps=1500)


def cfg2d(**kw):
    base = dict(pairs_per_epoch=128, num_steps=10, churn_strength=0.05, lr=1e-3, epochs=6, height=16, width=16,
                train_batch_size=4096, sample_batch_size=128, decode_batch_size=256, checkpoint_every=0,
                eval_every=1, eval_seeds=16, eval_prompt_count=1)
    base.update(kw)
    return FDFOConfig(**base)


class Opposite(MinusDistance):
    """A judge that disagrees with the training reward: + the distance to the rewarded mode."""

    name = "opposite"

    def __init__(self):
        super().__init__(sign=-1.0)


def run2d(base, run_dir=None, judge=None, log=None, **kw):
    logs = [] if log is None else log
    tr = FDFOTrainer(PointBackend(base), MinusDistance(), ["x"], cfg2d(**kw), run_dir=run_dir, judge=judge,
                     callbacks=Callbacks(log=logs.append))
    tr.train()
    return tr


def test_evaluation_changes_nothing_in_training(flow2d_base):
    """Guardrails off or on (judge, early-stop rules that do not fire): the same LoRA bit for bit,
    the same training rewards, and the global RNG left where training leaves it."""
    torch.manual_seed(7)
    off = run2d(flow2d_base, eval_every=0)
    rng_off = torch.get_rng_state()
    torch.manual_seed(7)
    on = run2d(flow2d_base, judge=Opposite(), eval_every=1, early_stop_patience=100, early_stop_min_diversity=0.01)
    rng_on = torch.get_rng_state()
    assert off.guardrails is None and len(on.guardrails.evaluations) == 1 + 6
    a, b = off.backend.adapter_state_dict(), on.backend.adapter_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["reward_mean"] for m in off.history] == [m["reward_mean"] for m in on.history]
    assert torch.equal(rng_off, rng_on)
    assert not set(EVAL_COLUMNS) & set(off.history[0]) and set(EVAL_COLUMNS) <= set(on.history[0])


def test_patience_stops_and_keeps_the_best_lora(flow2d_base, tmp_path):
    """The judge gets worse as the training reward rises: the run stops after `patience`
    evaluations without a new best, and the best LoRA file is the earlier, better-judged one."""
    logs = []
    tr = run2d(flow2d_base, run_dir=tmp_path, judge=Opposite(), log=logs, epochs=12, early_stop_patience=2)
    g = tr.guardrails
    evs = {ev.epoch: ev for ev in g.evaluations}
    # The rewarded direction is the judge's opposite: every epoch trades judge for reward, so the
    # base model (epoch 0) stays the best and the 2nd evaluation without a new best stops the run.
    assert [ev.epoch for ev in g.evaluations] == [0, 1, 2]
    assert evs[0].heldout_reward < evs[1].heldout_reward < evs[2].heldout_reward
    assert evs[0].judge > evs[1].judge > evs[2].judge
    assert g.stop_epoch == tr.epoch == 2 and len(tr.history) == 2
    assert tr.history[-1]["early_stop"].startswith("the judge opposite has not improved for 2 evaluation(s)")
    assert tr.history[0]["early_stop"] is None
    assert any(line.startswith("early stop at epoch 2") and "lora-best.safetensors (epoch 1" in line for line in logs)
    assert "No trained LoRA beat the base model" in logs[-1]
    # The best trained LoRA (epoch 1) is kept beside the last one, with its epoch and criterion.
    tensors, meta = load_lora(tmp_path / "lora-best.safetensors")
    assert meta["best_epoch"] == 1 and meta["epochs"] == 1 and meta["criterion"] == "judge"
    assert meta["criterion_value"] == pytest.approx(evs[1].judge)
    kept = PointBackend(flow2d_base)
    kept.load_adapter_state_dict(g.best_adapter)  # the in-memory copy (the nodes' "best" output) is the file's
    assert all(torch.equal(v.float(), tensors[k]) for k, v in kept.lora_file_tensors().items())
    last, last_meta = load_lora(tmp_path / "lora.safetensors")
    assert last_meta["epochs"] == 2 and any(not torch.equal(tensors[k], last[k]) for k in tensors)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["best_epoch"] for l in lines] == [1, 1] and lines[0]["judge_base"] == pytest.approx(evs[0].judge)
    assert all(l["time_eval"] > 0 and l["time_eval_share"] > 0 and l["eval_space"] == "pixel" for l in lines)


def test_diversity_floor_stops_a_collapsing_run(flow2d_base):
    """Training pulls samples toward one mode, so the spread across seeds shrinks; a short run on the
    2-D flow moves little, hence a floor just under the base model's spread."""
    logs = []
    tr = run2d(flow2d_base, log=logs, epochs=12, lr=1e-2, pairs_per_epoch=64, eval_every=2, early_stop_min_diversity=0.995)
    g = tr.guardrails
    base, last = g.evaluations[0], g.evaluations[-1]
    assert g.stop_epoch == tr.epoch < 30
    assert last.diversity < 0.995 * base.diversity <= g.evaluations[-2].diversity
    assert g.stop_reason.startswith("diversity across seeds fell to") and "pixel distance" in g.stop_reason
    assert any(line.startswith(f"early stop at epoch {tr.epoch}: diversity") for line in logs)


def test_resume_keeps_the_base_images_bests_and_stop(flow2d_base, tmp_path, monkeypatch):
    import fdfo_core.run.guardrails as guardrails_module

    def trainer(run, epochs, eval_prompts=("x",)):
        return FDFOTrainer(PointBackend(flow2d_base), MinusDistance(), ["x"], cfg2d(epochs=epochs, checkpoint_every=1),
                           run_dir=tmp_path / run, judge=Opposite(), callbacks=Callbacks(log=None),
                           eval_prompts=list(eval_prompts))

    full = trainer("full", 4)
    full.train()
    trainer("split", 2).train()
    sampled = []
    real = guardrails_module.sample_heldout
    monkeypatch.setattr(guardrails_module, "sample_heldout",
                        lambda *a, **k: sampled.append(k["use_adapter"]) or real(*a, **k))
    second = trainer("split", 4)
    second.resume(tmp_path / "split")
    second.train()
    assert sampled == [True, True]  # epochs 3 and 4; the base model's images came from the checkpoint

    def figures(tr):
        return [{k: v for k, v in ev.to_dict().items() if k != "seconds"} for ev in tr.guardrails.evaluations]

    assert figures(second) == figures(full) and len(figures(full)) == 5
    assert (second.guardrails.best_lora_epoch, second.guardrails.best_lora_value) == (
        full.guardrails.best_lora_epoch, full.guardrails.best_lora_value)
    a, _ = load_lora(tmp_path / "full" / "lora-best.safetensors")
    b, _ = load_lora(tmp_path / "split" / "lora-best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Other held-out prompts would make the figures incomparable: refused, with the difference named;
    # allowed explicitly, the evaluation starts again on the new set (the base model evaluated anew).
    other = trainer("split", 6, eval_prompts=["y"])
    with pytest.raises(TrainingError, match=r"held-out prompts: \['x'\] in the run, \['y'\] now"):
        other.resume(tmp_path / "split")
    sampled.clear()
    logs = []
    other.callbacks.log = logs.append
    other.resume(tmp_path / "split", allow_change=True)
    other.train()
    assert sampled == [False, True, True] and [ev.epoch for ev in other.guardrails.evaluations] == [0, 5, 6]
    assert any("the held-out evaluation starts again" in line for line in logs)


@pytest.mark.parametrize("changed", ["reward", "judge"])
def test_a_changed_criterion_starts_the_evaluation_again_and_keeps_the_old_best(flow2d_base, tmp_path, monkeypatch,
                                                                                changed):
    """After an allowed change of the reward (criterion: held-out reward) or of the judge, the new
    values are not compared with the old criterion's best: the base model is evaluated anew, the
    best is chosen among the epochs to come, and the old best LoRA keeps its own name (issue 27)."""
    import fdfo_core.run.guardrails as guardrails_module
    from fdfo_core.run.guardrails import retired_best_lora_name
    from fdfo_core.run.hooks import RunChangeRefused

    def trainer(epochs, reward, judge):
        # (front ends record the judge by its spec in the config, as --judge does)
        cfg = cfg2d(epochs=epochs, checkpoint_every=1, judge=judge.name if judge else "")
        return FDFOTrainer(PointBackend(flow2d_base), reward, ["x"], cfg, run_dir=tmp_path / "run", judge=judge,
                           callbacks=Callbacks(log=None))

    first = (MinusDistance(), None) if changed == "reward" else (MinusDistance(), Opposite())
    then = (Opposite(), None) if changed == "reward" else (MinusDistance(), MinusDistance())
    trainer(2, *first).train()
    old_best, _ = load_lora(tmp_path / "run" / "lora-best.safetensors")
    with pytest.raises(RunChangeRefused):
        trainer(4, *then).resume(tmp_path / "run")
    sampled = []
    real = guardrails_module.sample_heldout
    monkeypatch.setattr(guardrails_module, "sample_heldout",
                        lambda *a, **k: sampled.append(k["use_adapter"]) or real(*a, **k))
    logs = []
    resumed = trainer(4, *then)
    resumed.callbacks.log = logs.append
    resumed.resume(tmp_path / "run", allow_change=True)
    resumed.train()
    g = resumed.guardrails
    assert sampled == [False, True, True] and [ev.epoch for ev in g.evaluations] == [0, 3, 4]  # base anew
    assert g.best_lora_epoch in (3, 4)  # chosen among the new criterion's epochs only
    kept = tmp_path / "run" / retired_best_lora_name("lora", 2)
    assert any("the held-out evaluation starts again" in line and kept.name in line for line in logs), logs
    tensors, _ = load_lora(kept)
    assert all(torch.equal(tensors[k], old_best[k]) for k in old_best)
    _, meta = load_lora(tmp_path / "run" / "lora-best.safetensors")
    assert meta["best_epoch"] in (3, 4)


def test_a_stopped_run_stays_stopped_unless_its_rule_is_relaxed(flow2d_base, tmp_path):
    def trainer(logs=None, **kw):
        cfg = cfg2d(**{"epochs": 12, "early_stop_patience": 2, "checkpoint_every": 1, **kw})
        return FDFOTrainer(PointBackend(flow2d_base), MinusDistance(), ["x"], cfg, run_dir=tmp_path, judge=Opposite(),
                           callbacks=Callbacks(log=None if logs is None else logs.append))

    trainer().train()
    logs = []
    again = trainer(logs)
    again.resume(tmp_path)
    again.train()
    assert again.epoch == 2 and any("this run stopped early at epoch 2" in line for line in logs)

    relaxed = trainer(early_stop_patience=0, epochs=4)
    relaxed.resume(tmp_path)
    relaxed.train()
    assert relaxed.epoch == 4 and relaxed.guardrails.stop_reason is None


class HalfScored(MinusDistance):
    """A judge that scores the first half of each call and fails the rest (a scoring server's
    bad request), as `Reward.__call__` reports it: PartialRewardError with NaN scores."""

    name = "half_scored"

    def __call__(self, points, prompts):
        from fdfo_core.rewards.base import PartialRewardError

        scores = super().__call__(points, prompts).clone()
        half = points.shape[0] // 2
        scores[half:] = math.nan
        raise PartialRewardError("half of the images failed", scores, [(points.shape[0] - half, "HTTP 503")])


class Broken(MinusDistance):
    name = "broken"

    def __call__(self, points, prompts):
        raise ConnectionError("connection refused")


def test_held_out_scoring_follows_the_bad_reward_policy(flow2d_base):
    """A judge that fails for some held-out images costs only those images (finite figures from the
    others, one log line per evaluation naming it, training unchanged); one that fails as a whole at
    the base model's evaluation stops the run before training, naming it."""
    logs = []
    tr = run2d(flow2d_base, epochs=2, judge=HalfScored(), log=logs)
    assert tr.epoch == 2 and all(math.isfinite(ev.judge) for ev in tr.guardrails.evaluations)
    lines = [line for line in logs if "without a score" in line and "judge half_scored" in line]
    assert len(lines) == len(tr.guardrails.evaluations) == 3, logs
    assert "of the base model" in lines[0] and "8 of 16 image(s) without a score" in lines[0] and "HTTP 503" in lines[0]
    plain = run2d(flow2d_base, epochs=2, judge=Opposite())
    assert all(torch.equal(a, b) for a, b in zip(tr.backend.adapter_state_dict().values(),
                                                 plain.backend.adapter_state_dict().values()))
    with pytest.raises(RewardError, match="broken.*connection refused"):
        run2d(flow2d_base, epochs=2, judge=Broken())


def test_the_curve_figure_stacks_reward_judge_and_diversity(flow2d_base):
    from fdfo_core.files.drawing import reward_curve_image

    plain = run2d(flow2d_base, epochs=2, eval_every=0)
    assert reward_curve_image(plain.history).size == (640, 400)
    judged = run2d(flow2d_base, epochs=2, judge=Opposite(), early_stop_min_diversity=0.1)
    assert reward_curve_image(judged.history, guardrails=judged.guardrails).size == (640, 3 * 300)
    unjudged = run2d(flow2d_base, epochs=2)
    assert reward_curve_image(unjudged.history, guardrails=unjudged.guardrails).size == (640, 2 * 300)
    # The ComfyUI Trainer lays its curve output out for one size, whatever panels the run has.
    from comfy_scripts.nodepack import submodule

    REWARD_CURVE_SIZE = submodule("nodes.trainer_views").REWARD_CURVE_SIZE

    for run in (plain, judged, unjudged):
        assert reward_curve_image(run.history, size=REWARD_CURVE_SIZE, guardrails=run.guardrails).size == REWARD_CURVE_SIZE


# --- reward hacking caught, on the toy model ----------------------------------------------------


def judge_lora(path, prompts, seeds, cfg):
    """Mean toy-alignment of a LoRA file's images on (prompts, seeds), sampled as `fdfo sample` does."""
    from fdfo_core.backends.diffusers_backend import DiffusersBackend, load_lora_into_pipeline, load_pipeline
    from fdfo_core.backends.generation import generate_images
    from fdfo_core.rewards import build_reward
    from fdfo_core.toy import TOY_MAX_SEQUENCE_LENGTH, default_toy_model_path

    pipe = load_pipeline(default_toy_model_path())
    load_lora_into_pipeline(pipe, path)
    be = DiffusersBackend(pipe, cfg, max_sequence_length=TOY_MAX_SEQUENCE_LENGTH, add_adapter=False)
    images = generate_images(be, prompts, seeds, cfg.num_steps, cfg.height, cfg.width, batch_size=32)
    return build_reward("toy_alignment")(images, prompts)


def test_brightness_hacking_is_caught_by_the_alignment_judge(tmp_path):
    """Trained on brightness alone (a reward the toy model can game), judged by toy alignment: the
    early stop fires, and the kept best LoRA scores higher with the judge than the last one on
    held-out prompts and seeds the evaluation never used."""
    from fdfo_core.backends.diffusers_backend import build_backend
    from fdfo_core.config import load_config
    from fdfo_core.rewards import build_reward
    from fdfo_core.toy import TOY_MAX_SEQUENCE_LENGTH, default_toy_model_path, toy_prompt_sets

    # Aggressive on purpose (lr 1e-2, wide trust region): the toy games brightness in a few epochs.
    cfg = load_config("toy", overrides=dict(
        epochs=8, pairs_per_epoch=12, num_steps=8, lr=1e-2, clip_range=0.05, sample_batch_size=12,
        checkpoint_every=0, eval_every=1, eval_prompt_count=8, eval_seeds=2, judge="toy_alignment",
        early_stop_patience=3))
    train, heldout = toy_prompt_sets(seed=0)
    backend = build_backend(default_toy_model_path(), cfg, max_sequence_length=TOY_MAX_SEQUENCE_LENGTH)
    logs = []
    tr = FDFOTrainer(backend, build_reward("brightness"), train, cfg, run_dir=tmp_path, eval_prompts=heldout[:32],
                     callbacks=Callbacks(log=logs.append))
    tr.train()
    g = tr.guardrails
    evs = g.evaluations
    assert g.stop_reason is not None and tr.epoch == g.stop_epoch < cfg.epochs
    assert any(line.startswith(f"early stop at epoch {tr.epoch}") for line in logs)
    assert g.best_lora_epoch < tr.epoch
    # Independent check: other held-out prompts, other seeds.
    prompts = [p for p in heldout[32:] for _ in range(2)]
    seeds = [7_000_000 + i for i in range(len(prompts))]
    best = judge_lora(tmp_path / "lora-best.safetensors", prompts, seeds, cfg)
    last = judge_lora(tmp_path / "lora.safetensors", prompts, seeds, cfg)
    gain = best - last
    print(f"toy hacking: stop at epoch {tr.epoch} ({g.stop_reason}); best epoch {g.best_lora_epoch}; "
          f"judge on fresh images best {best.mean():.4f} vs last {last.mean():.4f} "
          f"(paired {gain.mean():+.4f} +- {gain.std() / len(gain) ** 0.5:.4f}); "
          f"held-out reward base {evs[0].heldout_reward:.4f} -> last {evs[-1].heldout_reward:.4f}; "
          f"{g.summary('lora', tr.history)}")
    assert gain.mean() > 2 * gain.std() / len(gain) ** 0.5
