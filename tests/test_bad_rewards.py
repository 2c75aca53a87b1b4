"""A reward that fails for some images, not all (issue 10, kind 2): one policy for every reward
and method. Images without a usable reward lose their pair, which is counted; the run stops only
when more than `max_bad_pair_fraction` of an epoch's pairs are lost."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fdfo_core.methods import build_trainer
from fdfo_core.errors import ConfigError
from fdfo_core.config import FDFOConfig
from fdfo_core.rewards import PerPromptNormalized, RewardError, WeightedSum
from fdfo_core.rewards.base import PartialRewardError, Reward
from fdfo_core.run.definition import RESUMABLE_CHANGES
from fdfo_core.run.hooks import Callbacks, TrainingError
from fdfo_core.methods import FDFOTrainer

from flow2d import MinusDistance, PointBackend, VelocityMLP

pytestmark = pytest.mark.usefixtures("one_thread")


class ImagePointBackend(PointBackend):
    """The 2-D point flow with 'images' a real reward can take: 3 x 4 x 4 in [0, 1]."""

    def decode(self, latents):
        p = torch.sigmoid(latents.reshape(latents.shape[0], 2))
        img = torch.stack([p[:, 0], p[:, 1], torch.full_like(p[:, 0], 0.5)], 1)
        return img[:, :, None, None].expand(-1, -1, 4, 4).contiguous()


def backend(images: bool = False):
    torch.manual_seed(0)
    base = VelocityMLP(16).eval().requires_grad_(False)  # untrained: the policy does not need a good model
    return (ImagePointBackend if images else PointBackend)(base)


def cfg(**kw):
    base = dict(pairs_per_epoch=32, num_steps=4, churn_strength=0.05, lr=1e-3, epochs=1, height=16, width=16,
                train_batch_size=512, sample_batch_size=32, decode_batch_size=16, checkpoint_every=0,
                optimizer_steps_per_epoch=2)
    base.update(kw)
    return FDFOConfig(**base)


def run_epoch(reward, config, images=False, **kw):
    logs = []
    tr = build_trainer(backend(images), reward, ["x", "y"], config, callbacks=Callbacks(log=logs.append), **kw)
    return tr, tr.train_epoch(), logs


class Calls:
    """A plain reward callable (points in, scores out) that fails on chosen calls (1-based)."""

    name = "flaky"
    differentiable = True

    def __init__(self, fail_on=(), missing_every: int | None = None, exc=RuntimeError("server hiccup"),
                 missing_calls=None):
        self.fail_on, self.missing_every, self.exc = set(fail_on), missing_every, exc
        self.missing_calls = missing_calls  # calls with missing scores (None: all)
        self.calls = 0

    def _missing(self) -> bool:
        return bool(self.missing_every) and (self.missing_calls is None or self.calls in self.missing_calls)

    def __call__(self, pts, prompts):
        self.calls += 1
        if self.calls in self.fail_on:
            raise self.exc
        r = MinusDistance()(pts, prompts)
        if self._missing():
            r = [None if i % self.missing_every == 0 else float(v) for i, v in enumerate(r)]
        return r

    def score_differentiable(self, pts, prompts):
        self.calls += 1
        if self.calls in self.fail_on:
            raise self.exc
        r = MinusDistance()(pts, prompts)
        if self._missing():  # NaN in some samples' values only (their own computation failed)
            nan = torch.zeros_like(r)
            nan[:: self.missing_every] = float("nan")
            r = r + nan
        return r

    def describe(self):
        return self.name


# --- FDFO: missing scores and failed calls -------------------------------------------------------------


def test_missing_scores_drop_their_pair_count_it_and_training_goes_on(tmp_path):
    """None (a JSON null) for every 5th image of each call: those pairs only are dropped."""
    reward = Calls(missing_every=5)
    tr = FDFOTrainer(backend(), reward, ["x"], cfg(epochs=2), run_dir=tmp_path, callbacks=Callbacks(log=None))
    tr.train()
    m = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for e in m:
        missing = 4 * math.ceil(16 / 5)  # 4 calls of 16 images per epoch, indices 0, 5, 10, 15
        assert e["images_without_reward"] == missing and e["reward_errors"] == 0
        assert 0 < e["pairs_dropped"] <= missing and e["pairs"] + e["pairs_dropped"] == 32
        assert e["bad_pair_fraction"] == pytest.approx(e["pairs_dropped"] / 32)
        assert e["items"] == 2 * e["pairs"] * 4
    assert all(torch.isfinite(p).all() for p in tr.params)
    assert (tmp_path / "lora.safetensors").exists()


def test_a_reward_that_raises_for_one_decode_batch_loses_only_that_batch():
    """4 reward calls of 16 images (a-rows 0-15, 16-31, b-rows 0-15, 16-31); the 3rd raises: its
    16 images lose their pairs (50 %, not more than the default 0.5), the error is logged once
    with its count, and the epoch trains on the other 16 pairs."""
    reward = Calls(fail_on={3})
    tr, m, logs = run_epoch(reward, cfg())
    assert reward.calls == 4
    assert m["pairs_dropped"] == 16 and m["pairs"] == 16 and m["images_without_reward"] == 16
    assert m["reward_errors"] == 1 and m["bad_pair_fraction"] == 0.5
    line = [entry for entry in logs if "dropped" in entry]
    assert len(line) == 1 and "1 call (16 images): RuntimeError: server hiccup" in line[0] and "16 of 32 pairs" in line[0]


def test_a_reward_failing_on_its_very_first_call_stops_at_once():
    """Nothing has ever been scored: a setup problem (wrong URL, missing weights), not a bad image."""
    reward = Calls(fail_on={1}, exc=ValueError("weights missing"))
    with pytest.raises(RewardError, match=r"reward 'flaky' failed: ValueError: weights missing"):
        run_epoch(reward, cfg())
    assert reward.calls == 1


def test_too_many_bad_pairs_stop_as_soon_as_it_is_certain():
    reward = Calls(fail_on={2, 3, 4})
    with pytest.raises(TrainingError) as info:
        run_epoch(reward, cfg())
    msg = str(info.value)
    assert reward.calls == 3  # after the 3rd call 32 of 32 pairs are lost: the 4th is not made
    assert "32 of 32 pairs (100%)" in msg and "max_bad_pair_fraction = 0.5" in msg
    assert "--max-bad-pair-fraction" in msg and "2 calls (32 images): RuntimeError: server hiccup" in msg


def test_the_threshold_is_a_setting():
    # 1.0: never stop while a pair is left. Calls of 8 images; a-rows 8-31 fail: 24 of 32 pairs lost.
    _, m, _ = run_epoch(Calls(fail_on={2, 3, 4}), cfg(decode_batch_size=8, max_bad_pair_fraction=1.0))
    assert m["pairs_dropped"] == 24 and m["pairs"] == 8 and m["bad_pair_fraction"] == 0.75
    with pytest.raises(TrainingError, match="24 of 32 pairs"):  # ... which the default does not allow
        run_epoch(Calls(fail_on={2, 3, 4}), cfg(decode_batch_size=8))
    # 0.0: the first missing score stops the run
    with pytest.raises(TrainingError, match="1 of 32 pairs"):
        run_epoch(Calls(missing_every=16), cfg(max_bad_pair_fraction=0.0))
    # nothing left at all is an error whatever the setting
    with pytest.raises(TrainingError, match="every one of the 32 pairs"):
        run_epoch(Calls(missing_every=1), cfg(max_bad_pair_fraction=1.0))


def test_max_bad_pair_fraction_is_validated_resumable_and_a_cli_flag():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="max_bad_pair_fraction must be between 0"):
            FDFOConfig(max_bad_pair_fraction=bad).validate()
    assert FDFOConfig().max_bad_pair_fraction == 0.5
    assert "max_bad_pair_fraction" in RESUMABLE_CHANGES  # raise it to continue a run that stopped
    from fdfo_core.cli.main import build_parser

    args = build_parser().parse_args(["train", "--max-bad-pair-fraction", "0.25"])
    assert args.max_bad_pair_fraction == 0.25


def test_trainer_node_has_the_optional_input():
    from comfy_scripts.nodepack import submodule

    tn = submodule("nodes.trainer_nodes")
    options = submodule("nodes.training_options").FDFOTrainingOptionsNode
    spec = options.INPUT_TYPES()["optional"]["max_bad_pair_fraction"]  # on FDFO Training Options
    assert tn.FDFOTrainerLegacyNode.INPUT_TYPES()["optional"]["max_bad_pair_fraction"] == spec  # and the old one-node Trainer
    assert spec[0] == "FLOAT" and spec[1]["default"] == 0.5 and spec[1]["min"] == 0.0 and spec[1]["max"] == 1.0
    values = {"epochs": 1, "pairs_per_epoch": 4, "steps": 4, "cfg": 1.0, "churn": "raw", "churn_strength": 0.01,
              "width": 64, "height": 64, "seed": 0, "learning_rate": 1e-4, "lora_rank": 4, "lora_alpha": 4.0,
              "clip_range": 0.03, "optimizer_steps_per_epoch": 1, "checkpoint_every": 0}
    assert tn.config_from_inputs({**values, "max_bad_pair_fraction": 0.2}).max_bad_pair_fraction == 0.2
    assert tn.config_from_inputs(values).max_bad_pair_fraction == 0.5


# --- rewards: base class, weighted sums, per-prompt normalisation ---------------------------------------


class PerImage(Reward):
    """A reward over 4x4 images: the red channel's mean; NaN / None / a raise where told."""

    def __init__(self, name="red", missing=(), fail_calls=(), micro_batch=4, as_list=False):
        super().__init__(micro_batch=micro_batch)
        self.name, self.missing, self.fail_calls, self.as_list = name, set(missing), set(fail_calls), as_list
        self.calls = 0
        self.seen = 0

    def _score(self, images, prompts):
        self.calls += 1
        first = self.seen
        self.seen += images.shape[0]
        if self.calls in self.fail_calls:
            raise ConnectionError(f"{self.name} timed out")
        s = images[:, 0].mean(dim=(1, 2))
        if self.as_list:
            return [None if first + i in self.missing else float(v) for i, v in enumerate(s)]
        return torch.where(torch.tensor([first + i in self.missing for i in range(len(s))]), float("nan"), s)


def images(n):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 4, 4, generator=g)


def test_reward_base_turns_none_into_nan_and_isolates_a_failed_micro_batch():
    x = images(10)
    s = PerImage(missing={1, 7}, as_list=True)(x, ["p"] * 10)
    assert torch.isnan(s[[1, 7]]).all() and torch.isfinite(s[[0, 2, 3, 4, 5, 6, 8, 9]]).all()
    r = PerImage(fail_calls={2})  # micro-batches [0-3], [4-7], [8-9]: the 2nd fails
    with pytest.raises(PartialRewardError, match=r"red: 4 of 10 images could not be scored.*ConnectionError: red timed out") as info:
        r(x, ["p"] * 10)
    assert torch.isnan(info.value.scores[4:8]).all() and torch.isfinite(info.value.scores[[0, 1, 2, 3, 8, 9]]).all()
    # every micro-batch failing is the error itself, not a partial one
    with pytest.raises(ConnectionError):
        PerImage(fail_calls={1, 2, 3})(x, ["p"] * 10)


def test_weighted_sum_propagates_nan_per_image_rather_than_raising():
    x = images(8)
    a, b = PerImage("a", missing={2}), PerImage("b", missing={5})
    total = WeightedSum([(1.0, a), (0.0, b)])(x, ["p"] * 8)  # a zero weight does not hide a missing score
    assert torch.isnan(total[[2, 5]]).all() and torch.isfinite(total[[0, 1, 3, 4, 6, 7]]).all()
    a2, b2 = PerImage("a"), PerImage("b", fail_calls={1})  # b's first micro-batch (images 0-3) fails
    ws = WeightedSum([(1.0, a2), (0.5, b2)])
    with pytest.raises(PartialRewardError, match=r"4 of 8 images.*b: ConnectionError: b timed out") as info:
        ws(x, ["p"] * 8)
    s = info.value.scores
    assert torch.isnan(s[:4]).all()
    torch.testing.assert_close(s[4:], x[4:, 0].mean(dim=(1, 2)) * 1.5)
    assert set(ws.last_components) == {"a", "b"}


def test_per_prompt_normaliser_ignores_nan():
    n = PerPromptNormalized(PerImage(), min_group=2)
    raw = torch.tensor([1.0, float("nan"), 3.0, float("inf"), 2.0, 4.0])
    prompts = ["a", "a", "a", "b", "b", "b"]
    out = n.normalize(raw, prompts)
    assert torch.isnan(out[[1, 3]]).all()
    ref = PerPromptNormalized(PerImage(), min_group=2).normalize(torch.tensor([1.0, 3.0, 2.0, 4.0]), ["a", "a", "b", "b"])
    torch.testing.assert_close(out[[0, 2, 4, 5]], ref)
    assert all(math.isfinite(v) for h in n.history.values() for v in h)
    assert all(math.isfinite(v) for v in n.global_history)
    # a partial failure of the inner reward: the scored images are normalised, the others stay NaN
    wrapped = PerPromptNormalized(PerImage(fail_calls={1}), min_group=2)
    with pytest.raises(PartialRewardError) as info:
        wrapped(images(8), ["a"] * 4 + ["b"] * 4)
    s = info.value.scores
    assert torch.isnan(s[:4]).all() and torch.isfinite(s[4:]).all() and abs(float(s[4:].mean())) < 1e-5


def test_trainer_loses_only_the_failed_micro_batch_of_a_combined_reward():
    """A Reward that can say which images failed (micro_batch 4 inside a decode batch of 16)
    costs 4 images, not the whole decode batch; combined and normalised rewards pass it on."""
    inner = WeightedSum([(1.0, PerImage("a")), (0.1, PerImage("b", fail_calls={6}))])
    reward = PerPromptNormalized(inner, min_group=2)
    _, m, logs = run_epoch(reward, cfg(), images=True)
    assert m["images_without_reward"] == 4 and m["reward_errors"] == 1 and 1 <= m["pairs_dropped"] <= 4
    assert any("b: ConnectionError: b timed out" in entry for entry in logs)


def test_the_issue_example_remote_null_trains_on():
    """A scoring server returning null for one image of a batch no longer stops the run."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from fdfo_core.rewards import build_reward

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            scores = [None if i == 0 else 0.5 + 0.01 * i for i in range(len(body["images"]))]
            data = json.dumps({"scores": scores}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reward = build_reward("remote", {"remote": {"url": f"http://127.0.0.1:{server.server_address[1]}/",
                                                    "micro_batch": "8"}})
        _, m, logs = run_epoch(reward, cfg(), images=True)
    finally:
        server.shutdown()
        server.server_close()
    assert m["images_without_reward"] == 8 and m["reward_errors"] == 0  # 64 images / 8 per request
    assert 4 <= m["pairs_dropped"] <= 8 and m["pairs"] == 32 - m["pairs_dropped"]
    assert any("8 image(s) got a NaN, infinite or missing score" in entry for entry in logs)


# --- baselines share the policy ---------------------------------------------------------------------------


GRPO = dict(method="flow_grpo", grpo_group_size=4, grpo_groups_per_epoch=8, grpo_kl_beta=0.0)
NFT = dict(method="diffusion_nft", nft_group_size=4, nft_groups_per_epoch=8, nft_kl_beta=0.0)


@pytest.mark.parametrize("group", [GRPO, NFT], ids=["flow_grpo", "diffusion_nft"])
def test_group_baselines_drop_groups_and_stop_on_the_same_threshold(group):
    reward = Calls(missing_every=16)  # one missing image per call of 16: 2 of 8 groups
    tr, m, logs = run_epoch(reward, cfg(**group))
    assert m["images_without_reward"] == 2 and m["pairs_dropped"] == 2 * 4 // 2
    assert any("dropped 2 of 8 groups" in entry for entry in logs)
    assert all(torch.isfinite(p).all() for p in tr.params)  # the NaN never reached the LoRA
    reward = Calls(fail_on={2})  # 2nd of 2 calls raises: 4 of 8 groups lost (50 %): goes on
    _, m, _ = run_epoch(reward, cfg(**group))
    assert m["reward_errors"] == 1 and m["images_without_reward"] == 16
    with pytest.raises(TrainingError, match="4 of 8 groups.*max_bad_pair_fraction = 0.25"):
        run_epoch(Calls(fail_on={2}), cfg(**group, max_bad_pair_fraction=0.25))


@pytest.mark.parametrize("method", ["grad_copy", "backprop_chain"])
def test_gradient_baselines_drop_samples_without_a_reward(method):
    # NaN for the first sample of the 2nd call of 16: grad_copy drops that sample, backprop_chain
    # its whole batch of 16 (a NaN would reach the shared LoRA gradient through the backward pass)
    reward = Calls(missing_every=16, missing_calls={2})
    tr, m, logs = run_epoch(reward, cfg(method=method, decode_batch_size=16, sample_batch_size=8))
    assert m["images_without_reward"] == 1
    dropped = 1 if method == "grad_copy" else 16
    assert any(f"dropped {dropped} of 64 samples" in entry for entry in logs)
    assert m["pairs"] == (64 - dropped) // 2 and m["pairs_dropped"] == 32 - m["pairs"]
    assert all(torch.isfinite(p).all() for p in tr.params)  # the NaN never reached the LoRA
    tr, m, _ = run_epoch(Calls(fail_on={2}), cfg(method=method, decode_batch_size=16, sample_batch_size=8))
    assert m["reward_errors"] == 1 and m["images_without_reward"] == 16
    with pytest.raises(RewardError, match="server hiccup"):  # the very first call failing stops at once
        run_epoch(Calls(fail_on={1}), cfg(method=method, decode_batch_size=16, sample_batch_size=8))
