"""VLM yes/no reward on a tiny Qwen2-VL checkpoint (model, tokenizer, image processor, chat
template saved with save_pretrained), and the paper's combined spec "pickscore + 0.1*vlm"."""

from __future__ import annotations

import pytest
import torch

import reward_fixtures as rf
from fdfo_core.rewards import RewardError, WeightedSum, build_reward
from fdfo_core.rewards.vlm import DEFAULT_QUESTION, QUESTION_PRESETS, answer_token_id


@pytest.fixture(autouse=True)
def _isolated_lookup(monkeypatch, tmp_path):
    monkeypatch.delenv("FDFO_REWARDS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))


@pytest.fixture(scope="module")
def rewards_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    rf.write_qwen2_vl_folder(root / "vlm", image_size=56)
    rf.write_clip_folder(root / "pickscore", with_processor=False)
    rf.write_clip_processor_folder(root / "CLIP-ViT-H-14-laion2B-s32B-b79K")
    return root


@pytest.fixture(scope="module")
def vlm(rewards_root):
    return build_reward("vlm", {"vlm": {"path": str(rewards_root / "vlm"), "image_size": "56"}})


def test_vlm_contract(vlm):
    scores = rf.check_reward_contract(vlm)
    assert ((scores > 0) & (scores < 100)).all()
    assert len(set(scores.tolist())) > 1


def _hand_scores(folder, processor, images, prompts):
    """100 * sigmoid(logit(Yes) - logit(No)) at the position after the generation prompt."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(folder)).eval()
    yes = processor.tokenizer.convert_tokens_to_ids("Yes")
    no = processor.tokenizer.convert_tokens_to_ids("No")
    out = []
    for i, prompt in enumerate(prompts):
        question = f'Does this image match the caption "{prompt}"? Answer Yes or No.'
        text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                f"<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")
        arr = (images[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        from PIL import Image

        inputs = processor(text=[text], images=[Image.fromarray(arr)], return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        out.append(100 * torch.sigmoid(logits[yes] - logits[no]))
    return torch.stack(out), (yes, no)


def test_vlm_equals_hand_computation(vlm, rewards_root):
    images = rf.sample_images(2, 56, 56, seed=11)  # already at image_size: no resize
    prompts = ["a red cube", "two dogs"]
    expected, ids = _hand_scores(rewards_root / "vlm", vlm.processor, images, prompts)
    assert (vlm.target_id, vlm.contrast_id) == ids
    assert torch.allclose(vlm(images, prompts), expected, atol=1e-4)


def test_qwen2_5_vl(tmp_path):
    folder = rf.write_qwen2_vl_folder(tmp_path / "Qwen2.5-VL-tiny", version="2.5")
    r = build_reward("vlm", {"vlm": {"path": str(folder), "image_size": 56}})
    assert type(r.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    rf.check_reward_contract(r, images=rf.sample_images(3, 64, 64), prompts=rf.PROMPTS[:3])
    images = rf.sample_images(2, 56, 56, seed=12)
    expected, _ = _hand_scores(folder, r.processor, images, ["a cat", "a dog"])
    assert torch.allclose(r(images, ["a cat", "a dog"]), expected, atol=1e-4)


def test_vlm_resizes_to_image_size(vlm):
    big = rf.sample_images(1, 120, 90, seed=2)
    small = torch.nn.functional.interpolate(big, size=(56, 56), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(vlm(big, ["a cat"]), vlm(small, ["a cat"]), atol=1e-5)


def test_vlm_question_presets_and_words(rewards_root):
    r = build_reward("vlm", {"vlm": {"path": str(rewards_root / "vlm"), "image_size": 56,
                                     "question": "photorealism", "target": "No", "contrast": "Yes"}})
    assert r.question == QUESTION_PRESETS["photorealism"]
    default = build_reward("vlm", {"vlm": {"path": str(rewards_root / "vlm"), "image_size": 56,
                                           "question": "photorealism"}})
    images = rf.sample_images(2, 56, 56)
    # swapping target and contrast mirrors the score around 50
    assert torch.allclose(r(images, ["a", "b"]), 100 - default(images, ["a", "b"]), atol=1e-4)
    assert "{prompt}" in DEFAULT_QUESTION


def test_answer_token_leading_space_and_errors(vlm):
    tok = vlm.tokenizer
    assert answer_token_id(tok, "Yes") == tok.convert_tokens_to_ids("Yes")
    with pytest.raises(RewardError, match="several tokens"):
        answer_token_id(tok, "Maybe")
    # after "Assistant:" (no whitespace before the answer) the model writes " Yes"
    assert answer_token_id(tok, "Yes", after_space=False) == tok.convert_tokens_to_ids("\u0120Yes")
    assert answer_token_id(tok, " Yes") == tok.convert_tokens_to_ids("\u0120Yes")


def test_vlm_missing_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path / "rw"))
    with pytest.raises(RewardError) as e:
        build_reward("vlm")
    msg = str(e.value)
    assert str(tmp_path / "rw" / "vlm") in msg and "https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct" in msg
    with pytest.raises(RewardError, match="Qwen2.5-VL-3B-Instruct"):
        build_reward("vlm", {"vlm": {"model": "Qwen/Qwen2.5-VL-3B-Instruct"}})


def test_pickscore_plus_vlm_spec(rewards_root, monkeypatch, vlm):
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(rewards_root))
    r = build_reward("pickscore+0.1*vlm", {"vlm": {"image_size": 56}})
    assert isinstance(r, WeightedSum)
    images = rf.sample_images(3)
    prompts = ["a cat", "a dog", "a cat"]
    total = r(images, prompts)
    pick = build_reward("pickscore")(images, prompts)
    v = vlm(images, prompts)
    assert torch.allclose(total, pick + 0.1 * v, atol=1e-4)
    assert set(r.last_components) == {"pickscore", "vlm"}
    assert r.describe().startswith("1*pickscore + 0.1*vlm(")
