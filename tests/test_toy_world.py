"""Toy world: grammar, renderer, tokenizer, prompt sets, diversity figure (no model weights needed)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fdfo_core.toy import grammar as G  # noqa: E402
from fdfo_core.toy.diversity import pairwise_pixel_diversity, prompt_diversity  # noqa: E402
from fdfo_core.toy.prompts import sample_toy_prompts, toy_prompt_sets  # noqa: E402
from fdfo_core.toy.render import render, render_with_layout  # noqa: E402
from fdfo_core.toy.tokenizer import MAX_LENGTH, build_toy_tokenizer, train_merges  # noqa: E402


def test_captions_parse_back_and_flip():
    rng = np.random.default_rng(0)
    for _ in range(300):
        spec = G.sample_spec(rng)
        assert G.is_valid(spec)
        assert G.parse_caption(spec.caption()) == spec
        assert G.split_of(spec) == G.split_of(spec.flipped())
        assert spec.flipped().flipped() == spec
    assert G.parse_caption("two red circles above a blue square on a yellow background") == G.SceneSpec(
        (G.Group(2, "red", "circle"), G.Group(1, "blue", "square")), "above", "yellow"
    )
    assert G.parse_caption("a photo of a cat") is None


def test_renderer_is_deterministic_and_follows_layout_rules():
    rng = np.random.default_rng(1)
    for i in range(50):
        spec = G.sample_spec(rng)
        a, shapes = render_with_layout(spec, i)
        b = render(spec, i)
        assert a.shape == (64, 64, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)
        assert len(shapes) == sum(g.count for g in spec.groups)
        if spec.relation is not None:
            first = [s.centre for s in shapes if s.group == 0]
            second = [s.centre for s in shapes if s.group == 1]
            axis = 1 if spec.relation in ("above", "below") else 0
            before = spec.relation in ("above", "left of")
            for p in first:
                for q in second:
                    assert (p[axis] < q[axis]) == before
    assert not np.array_equal(render(spec, 0), render(spec, 1))


def test_tokenizer_one_token_per_word():
    tok = build_toy_tokenizer()
    assert tok.model_max_length == MAX_LENGTH
    for word in G.vocabulary():
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, (word, ids)
    caption = "three green triangles right of three yellow squares on a white background"
    ids = tok(caption).input_ids
    assert len(ids) == len(caption.split()) + 2 <= MAX_LENGTH
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    # Out-of-grammar text still tokenizes (character pieces), never to unknown tokens only.
    assert len(tok("purple hexagon", add_special_tokens=False).input_ids) > 2
    assert train_merges(G.vocabulary()) == train_merges(list(reversed(G.vocabulary())))


def test_prompt_sets_are_deterministic_and_disjoint():
    assert sample_toy_prompts(20, "train", seed=3) == sample_toy_prompts(20, "train", seed=3)
    assert sample_toy_prompts(20, "train", seed=3) != sample_toy_prompts(20, "train", seed=4)
    train, held = toy_prompt_sets(300, 100, seed=0)
    assert len(set(train)) == 300 and len(set(held)) == 100
    assert not set(train) & set(held)
    assert all(G.split_of(G.parse_caption(p)) == "heldout" for p in held)
    assert all(G.split_of(G.parse_caption(p)) == "train" for p in train)
    with pytest.raises(ValueError, match="split"):
        sample_toy_prompts(2, "test")


def test_diversity_figure():
    img = torch.rand(1, 3, 16, 16)
    assert pairwise_pixel_diversity(img.repeat(4, 1, 1, 1)) == 0.0
    x = torch.zeros(2, 3, 16, 16)
    x[1] = 1.0
    assert pairwise_pixel_diversity(x) == pytest.approx(1.0)
    assert 0.0 < pairwise_pixel_diversity(torch.rand(5, 16, 16, 3)) < 1.0  # NHWC accepted
    both = torch.cat([img.repeat(2, 1, 1, 1), x])
    assert prompt_diversity(both, ["a", "a", "b", "b"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_pixel_diversity(img)
