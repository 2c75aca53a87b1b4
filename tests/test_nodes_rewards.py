"""Reward loader nodes, Combine Rewards and Score Images (weight-free rewards; learned ones are
checked for passing valid options only: their weights are not here)."""

import pytest
import torch

from comfy_scripts.nodepack import submodule

rn = submodule("nodes.reward_nodes")
sn = submodule("nodes.scoring_nodes")
rewards_pkg = submodule("fdfo_core.rewards")
RewardError = rewards_pkg.RewardError


def images(values):
    """ComfyUI IMAGE batch [N, 8, 8, 3] with constant grey levels."""
    return torch.stack([torch.full((8, 8, 3), float(v)) for v in values])


def test_simple_reward_loader_builds_brightness():
    reward, = rn.FDFOSimpleReward().load("brightness", 95)
    s = reward(images([0.2, 0.8]), ["a", "b"])
    assert torch.allclose(s, torch.tensor([0.2, 0.8]), atol=1e-6)


def test_jpeg_quality_only_goes_to_the_jpeg_metrics(monkeypatch):
    seen = {}
    monkeypatch.setattr(rn, "build_reward", lambda name, options=None, device=None: seen.setdefault(name, options))
    rn.FDFOSimpleReward().load("jpeg_compressibility", 80)
    rn.FDFOSimpleReward().load("saturation", 80)
    assert seen == {"jpeg_compressibility": {"jpeg_compressibility": {"quality": 80}}, "saturation": None}


LOADERS = {
    "pickscore": (rn.FDFOPickScoreReward, ("auto", "auto", "auto", 16, "cpu")),
    "hpsv2": (rn.FDFOHPSv2Reward, ("auto", "2.1", "auto", 1.0, "auto", 16, "cpu")),
    "aesthetic": (rn.FDFOAestheticReward, ("auto", "auto", "auto", 32, "cpu")),
    "clipscore": (rn.FDFOClipScoreReward, ("auto", "openai/clip-vit-large-patch14", 100.0, "auto", 32, "cpu")),
    "vlm": (rn.FDFOVLMReward, ("auto", "Is it red? {prompt}", "Yes", "No", 0, "Qwen/Qwen2.5-VL-3B-Instruct", 100.0, "auto", 4, "cpu")),
    "remote": (rn.FDFORemoteReward, ("http://127.0.0.1:1/score", 5.0, 0, 0.0, "", "", "png", 95, 8)),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_learned_loaders_pass_only_valid_options(monkeypatch, name):
    cls, args = LOADERS[name]
    seen = {}

    def fake_build(spec, options=None, device=None):
        seen["spec"], seen["options"], seen["device"] = spec, options, device
        return "built"

    monkeypatch.setattr(rn, "build_reward", fake_build)
    assert getattr(cls(), cls.FUNCTION)(*args) == ("built",)
    assert seen["spec"] == name and seen["device"] == torch.device("cpu")
    valid = set(rewards_pkg.reward_options(name))
    given = set((seen["options"] or {}).get(name, {}))
    assert given <= valid, given - valid
    assert "path" not in given  # "auto" means: let the reward find its default folder
    # Every widget the node shows reaches the reward (nothing silently ignored), except "auto" /
    # empty values, which mean "the reward's default", and the device, which goes to build_reward.
    widgets = dict(zip(cls.INPUT_TYPES()["required"], args))
    shown = {k for k, v in widgets.items() if k != "device" and v not in ("auto", "")}
    assert shown == given


def test_vlm_image_size_zero_means_keep_the_size(monkeypatch):
    seen = {}
    monkeypatch.setattr(rn, "build_reward", lambda spec, options=None, device=None: seen.update(options[spec]))
    rn.FDFOVLMReward().load("auto", "q {prompt}", "Yes", "No", 0, "m", 100.0, "auto", 4, "cpu")
    assert seen["image_size"] == "none"


def test_missing_weights_error_names_the_reward(tmp_path, monkeypatch):
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(RewardError, match="(?i)pickscore"):
        rn.FDFOPickScoreReward().load("auto", "auto", "auto", 16, "cpu")


def test_remote_without_url_is_refused():
    with pytest.raises(RewardError, match="URL"):
        rn.FDFORemoteReward().load("  ", 5.0, 0, 0.0, "", "", "png", 95, 8)


def test_combine_rewards_weighted_sum():
    bright, = rn.FDFOSimpleReward().load("brightness", 95)
    sat, = rn.FDFOSimpleReward().load("saturation", 95)
    combined, = sn.FDFOCombineRewards().combine(bright, 1.0, reward_2=sat, weight_2=-0.5)
    img = torch.zeros(2, 8, 8, 3)
    img[0, ..., 0] = 1.0  # pure red: brightness 0.299, saturation 1
    img[1] = 0.5  # grey: brightness 0.5, saturation 0
    assert torch.allclose(combined(img, ["x", "y"]), torch.tensor([0.299 - 0.5, 0.5]), atol=1e-5)
    assert set(combined.last_components) == {"brightness", "saturation"}
    # One reward at weight 1 is passed through unchanged.
    assert sn.FDFOCombineRewards().combine(bright, 1.0)[0] is bright


def test_score_images_sorts_and_labels():
    bright, = rn.FDFOSimpleReward().load("brightness", 95)
    node = sn.FDFOScoreImages()
    scores, report, grid, ordered = node.score(images([0.5, 0.9, 0.1]), ["p"], bright, "best first", 2)
    assert scores == pytest.approx([0.9, 0.5, 0.1], abs=1e-6)
    assert torch.allclose(ordered[:, 0, 0, 0], torch.tensor([0.9, 0.5, 0.1]))
    assert report.splitlines()[0].startswith("#1 image 1: 0.9000")
    assert grid.ndim == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
    scores, _, _, _ = node.score(images([0.5, 0.9, 0.1]), ["p"], bright, "none", 4)
    assert scores == pytest.approx([0.5, 0.9, 0.1], abs=1e-6)


def test_score_images_prompt_broadcasting():
    split = submodule("nodes.common").split_prompts_for_images
    assert split(["a"], 3) == ["a", "a", "a"]
    assert split(["a", "b"], 4) == ["a", "a", "b", "b"]
    assert split(["a", "b", "c"], 3) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="divides"):
        split(["a", "b"], 3)
    with pytest.raises(ValueError, match="empty"):
        split([], 3)


def test_a_failing_reward_says_which_and_why():
    class Broken(rewards_pkg.Reward):
        name = "broken_scorer"

        def _score(self, images, prompts):
            raise ConnectionError("server down")

    with pytest.raises(RewardError, match="broken_scorer.*ConnectionError.*server down"):
        sn.FDFOScoreImages().score(images([0.5]), ["p"], Broken(), "none", 4)


def test_score_images_shows_partial_scores_last_with_the_reason():
    """Issue 10: a reward that fails for one micro-batch gives NaN for its images, not an error."""
    base = submodule("fdfo_core.rewards.base")

    class OneBadRequest(base.Reward):
        name = "one_bad_request"

        def __init__(self):
            super().__init__(micro_batch=2)
            self.calls = 0

        def _score(self, x, prompts):
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("timed out")
            return x.mean(dim=(1, 2, 3))

    scores, report, _, ordered = sn.FDFOScoreImages().score(images([0.5, 0.9, 0.1, 0.7]), ["p"], OneBadRequest(),
                                                             "best first", 2)
    assert scores[:2] == pytest.approx([0.7, 0.1], abs=1e-6) and all(s != s for s in scores[2:])  # NaN last
    assert torch.allclose(ordered[:2, 0, 0, 0], torch.tensor([0.7, 0.1]))
    assert "2 of 4 images could not be scored" in report and "ConnectionError: timed out" in report
