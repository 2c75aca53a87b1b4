"""Reward specs, weighted sums, option handling, per-prompt normalisation and the weight lookup."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import reward_fixtures as rf
from fdfo_core.rewards import (
    PerPromptNormalized,
    RewardError,
    WeightedSum,
    available_rewards,
    build_reward,
    parse_reward_spec,
    reward_options,
)
from fdfo_core.rewards import weights


@pytest.mark.parametrize(
    "spec, terms",
    [
        ("pickscore", [(1.0, "pickscore")]),
        ("pickscore+0.1*vlm", [(1.0, "pickscore"), (0.1, "vlm")]),
        ("pickscore + 0.1*vlm - 0.5*brightness", [(1.0, "pickscore"), (0.1, "vlm"), (-0.5, "brightness")]),
        ("vlm*0.1", [(0.1, "vlm")]),
        ("1e-3*saturation+aesthetic", [(1e-3, "saturation"), (1.0, "aesthetic")]),
        ("2.5E+2 * brightness-saturation", [(250.0, "brightness"), (-1.0, "saturation")]),
        ("-brightness", [(-1.0, "brightness")]),
        ("- 1e-2*vlm + hpsv2", [(-0.01, "vlm"), (1.0, "hpsv2")]),
        ("0.5*vlm*2", [(1.0, "vlm")]),
    ],
)
def test_parse_reward_spec(spec, terms):
    got = parse_reward_spec(spec)
    assert [n for _, n in got] == [n for _, n in terms]
    assert [w for w, _ in got] == pytest.approx([w for w, _ in terms])


@pytest.mark.parametrize("spec", ["", "   ", "pickscore +", "0.1*", "Pickscore", "pick score", "0.1*0.2"])
def test_bad_specs(spec):
    with pytest.raises(RewardError):
        build_reward(spec)


def test_unknown_reward_lists_available():
    with pytest.raises(RewardError, match="available:.*pickscore"):
        build_reward("imagereward")
    assert {"pickscore", "hpsv2", "aesthetic", "clipscore", "vlm", "remote", "brightness"} <= set(available_rewards())


def test_weighted_sum_and_components():
    images = rf.sample_images(3)
    r = build_reward("brightness - 0.5*saturation + 2*colourfulness")
    assert isinstance(r, WeightedSum)
    b = build_reward("brightness")(images, "x")
    s = build_reward("saturation")(images, "x")
    c = build_reward("colourfulness")(images, "x")
    assert torch.allclose(r(images, "x"), b - 0.5 * s + 2 * c, atol=1e-5)
    assert set(r.last_components) == {"brightness", "saturation", "colourfulness"}
    assert r.describe() == "1*brightness + -0.5*saturation + 2*colourfulness"
    assert build_reward("brightness").name == "brightness"  # a single unit term is the reward itself


def test_options_are_checked_and_coerced():
    r = build_reward("jpeg_compressibility", {"jpeg_compressibility": {"quality": "80", "micro_batch": "2"}})
    assert r.quality == 80 and r.micro_batch == 2
    with pytest.raises(RewardError, match="has no option 'qualty'.*quality"):
        build_reward("jpeg_compressibility", {"jpeg_compressibility": {"qualty": 80}})
    with pytest.raises(RewardError, match="cannot read 'high'"):
        build_reward("jpeg_compressibility", {"jpeg_compressibility": {"quality": "high"}})
    with pytest.raises(RewardError, match="does not use"):
        build_reward("brightness", {"saturation": {}})
    assert build_reward("brightness", micro_batch=5).micro_batch == 5


def test_reward_options_describe_factories():
    opts = reward_options("vlm")
    assert opts["question"].startswith("Does this image match") and opts["image_size"] == 504
    assert {"path", "model", "target", "contrast", "scale", "dtype", "micro_batch"} <= set(opts)
    assert {"path", "processor_path", "dtype", "micro_batch"} <= set(reward_options("pickscore"))
    assert reward_options("remote")["url"] is None


# ---- per-prompt normalisation ------------------------------------------------------------------


class Fixed:
    """Stands in for a reward: returns preset scores in call order."""

    micro_batch = 4
    device = torch.device("cpu")
    name = "fixed"

    def __init__(self, batches):
        self.batches = [torch.tensor(b, dtype=torch.float32) for b in batches]

    def __call__(self, images, prompts, layout="auto"):
        return self.batches.pop(0)

    def describe(self):
        return "fixed"

    def to(self, device):
        return self


def test_groups_of_three_use_batch_statistics():
    norm = PerPromptNormalized(Fixed([[1, 2, 3, 10, 20, 30, 5]]), min_group=3)
    out = norm(torch.zeros(7, 3, 4, 4), ["a"] * 3 + ["b"] * 3 + ["c"])
    a, b = out[:3], out[3:6]
    for g in (a, b):
        assert g.mean().abs() < 1e-6 and (g.std(unbiased=False) - 1).abs() < 1e-4
    assert torch.allclose(a, b, atol=1e-5)  # per prompt: scale and offset removed
    assert out[6] == 0  # a prompt seen once with one image: nothing to compare with


def test_pairs_are_centred_and_scaled_by_the_global_spread():
    norm = PerPromptNormalized(Fixed([[1.0, 3.0, 10.0, 14.0]]), min_group=3)
    out = norm(torch.zeros(4, 3, 4, 4), ["a", "a", "b", "b"])
    spread = torch.tensor([1.0, 3.0, 10.0, 14.0], dtype=torch.float64).std(unbiased=False).item()
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / spread
    assert torch.allclose(out, expected.float(), atol=1e-5)


def test_small_groups_use_the_running_history():
    norm = PerPromptNormalized(Fixed([[1.0, 3.0], [5.0, 7.0], [4.0]]), min_group=3, window=64)
    x = torch.zeros(2, 3, 4, 4)
    norm(x, ["a", "a"])
    out = norm(x, ["a", "a"])  # history of "a": 1, 3, 5, 7
    hist = torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    assert torch.allclose(out, ((torch.tensor([5.0, 7.0], dtype=torch.float64) - hist.mean()) / hist.std(unbiased=False)).float())
    out = norm(x[:1], ["a"])  # history 1, 3, 5, 7, 4 (mean 4): a single image still gets a signal
    assert out.abs().item() < 1e-6


def test_normalisation_is_deterministic_and_resumable():
    batches = [[1.0, 2.0, 4.0], [3.0, 3.5, 9.0], [2.0, 8.0, 1.0]]
    prompts = ["a", "a", "b"]
    x = torch.zeros(3, 3, 4, 4)
    full = PerPromptNormalized(Fixed(batches))
    ref = [full(x, prompts) for _ in batches]
    first = PerPromptNormalized(Fixed(batches[:1]))
    assert torch.equal(first(x, prompts), ref[0])
    resumed = PerPromptNormalized(Fixed(batches[1:]))
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed(x, prompts), ref[1]) and torch.equal(resumed(x, prompts), ref[2])


def test_build_reward_normalize_option():
    r = build_reward("brightness + saturation", normalize="per_prompt", normalize_options={"min_group": 2})
    assert isinstance(r, PerPromptNormalized) and r.min_group == 2
    images = rf.sample_images(4)
    out = r(images, ["a", "a", "b", "b"])
    assert torch.allclose(out.abs(), torch.ones(4), atol=1e-3)  # groups of two normalise to -1/+1 (up to eps)
    assert set(r.last_components) == {"brightness", "saturation"} and r.last_raw.shape == (4,)
    assert build_reward("brightness", normalize="none").name == "brightness"
    with pytest.raises(RewardError, match="unknown normalisation"):
        build_reward("brightness", normalize="per_batch")
    with pytest.raises(RewardError, match="min_group"):
        build_reward("brightness", normalize="per_prompt", normalize_options={"min_group": 1})


# ---- where weights are looked up -------------------------------------------------------------


def test_reward_dirs_order_with_comfyui(monkeypatch, tmp_path):
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path / "ComfyUI" / "models")
    fake.folder_names_and_paths = {}

    def add_model_folder_path(name, path, is_default=False):
        fake.folder_names_and_paths.setdefault(name, ([], set()))[0].append(path)

    fake.add_model_folder_path = add_model_folder_path
    fake.get_folder_paths = lambda name: list(fake.folder_names_and_paths[name][0])
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path / "cli"))
    dirs = weights.reward_dirs()
    assert dirs[0] == tmp_path / "ComfyUI" / "models" / "fdfo_rewards"
    assert dirs[1] == tmp_path / "cli"
    assert "fdfo_rewards" in fake.folder_names_and_paths
    (dirs[0] / "vlm").mkdir(parents=True)
    assert weights.list_reward_folders() == ["vlm"]


def test_importing_rewards_is_light():
    import subprocess

    code = ("import sys; import fdfo_core.rewards as r; r.ensure_registered(); "
            "bad = [m for m in ('transformers', 'folder_paths', 'comfy', 'open_clip') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(rf._ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_path_by_folder_name_and_hf_cache(monkeypatch, tmp_path):
    rf.write_clip_folder(tmp_path / "rw" / "my-clip", seed=3, pad_token="<|endoftext|>")
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path / "rw"))
    by_name = build_reward("clipscore", {"clipscore": {"path": "my-clip"}})
    # The same files in a Hugging Face cache layout, found offline by repository id.
    cache = tmp_path / "hf"
    snap = cache / "models--someone--tiny-clip" / "snapshots" / ("0" * 40)
    snap.parent.mkdir(parents=True)
    (tmp_path / "rw" / "my-clip").rename(snap)
    (cache / "models--someone--tiny-clip" / "refs").mkdir()
    (cache / "models--someone--tiny-clip" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path / "empty"))
    cached = build_reward("clipscore", {"clipscore": {"model": "someone/tiny-clip"}})
    images = rf.sample_images(2)
    assert torch.equal(by_name(images, ["a", "b"]), cached(images, ["a", "b"]))
    with pytest.raises(RewardError, match="not found at 'nope'"):
        build_reward("clipscore", {"clipscore": {"path": "nope"}})


def test_dtype_option():
    assert weights.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert weights.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert weights.resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(RewardError, match="unknown dtype"):
        weights.resolve_dtype("int8", torch.device("cpu"))
