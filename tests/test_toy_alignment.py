"""Toy alignment reward validated on the renderer's ground truth."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fdfo_core.rewards import RewardError, build_reward  # noqa: E402
from fdfo_core.toy import grammar as G  # noqa: E402
from fdfo_core.rewards.toy_alignment import alignment_checks  # noqa: E402
from fdfo_core.toy.render import render, to_tensor_images  # noqa: E402


def _renders(n, seed):
    rng = np.random.default_rng(seed)
    specs = [G.sample_spec(rng) for _ in range(n)]
    return specs, to_tensor_images([render(s, 1000 * seed + i) for i, s in enumerate(specs)])


def test_correct_pairs_score_high_shuffled_pairs_low():
    reward = build_reward("toy_alignment")
    specs, images = _renders(200, seed=0)
    captions = [s.caption() for s in specs]
    correct = reward(images, captions)
    shuffled_captions = [captions[j] for j in np.random.default_rng(1).permutation(len(captions))]
    shuffled = reward(images, shuffled_captions)
    se = lambda x: float(x.std() / len(x) ** 0.5)  # noqa: E731
    print(
        f"\ntoy_alignment on 200 renders: correct {correct.mean():.3f} +- {se(correct):.3f} "
        f"(min {correct.min():.3f}), shuffled {shuffled.mean():.3f} +- {se(shuffled):.3f}"
    )
    assert correct.min() >= 0 and correct.max() <= 1 and shuffled.min() >= 0
    assert correct.mean() > 0.95
    assert shuffled.mean() < 0.3
    assert (correct > shuffled).float().mean() > 0.9


def test_graded_checks_and_nhwc_layout():
    spec = G.parse_caption("two red circles above a blue square on a yellow background")
    image = to_tensor_images([render(spec, 0)])
    checks = alignment_checks(image[0], spec)
    assert set(checks) == {"background", "group0_colour", "group0_count", "group1_colour", "group1_count", "relation", "no_extras"}
    assert all(v == pytest.approx(1.0) for v in checks.values())
    reward = build_reward("toy_alignment")
    # One wrong attribute costs one check, not everything.
    wrong = [
        "two red circles below a blue square on a yellow background",
        "three red circles above a blue square on a yellow background",
        "two red circles above a blue square on a green background",
    ]
    scores = reward(image.repeat(3, 1, 1, 1).permute(0, 2, 3, 1), wrong)  # NHWC, as ComfyUI's IMAGE
    assert torch.all(scores < 1.0) and torch.all(scores > 0.6)


def test_unparseable_prompt_names_the_grammar():
    reward = build_reward("toy_alignment")
    with pytest.raises(RewardError, match="toy captions look like"):
        reward(torch.rand(1, 3, 64, 64), ["a photo of a cat"])
