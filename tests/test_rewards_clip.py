"""PickScore, CLIP score (CLIP and SigLIP), HPSv2 and the aesthetic predictor on tiny random
checkpoints written in their authors' on-disk formats, loaded through the real loaders."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import reward_fixtures as rf
from fdfo_core.rewards import RewardError, build_reward
from fdfo_core.rewards.clip_common import ImageTransform

MEAN = torch.tensor(rf.OPENAI_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(rf.OPENAI_STD).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _isolated_lookup(monkeypatch, tmp_path):
    """No reward folders and an empty Hugging Face cache unless a test sets them."""
    monkeypatch.delenv("FDFO_REWARDS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))


@pytest.fixture(scope="module")
def pick_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pickscore")
    model_dir = rf.write_clip_folder(root / "pickscore", with_processor=False, seed=0)
    proc_dir = rf.write_clip_processor_folder(root / "CLIP-ViT-H-14-laion2B-s32B-b79K")
    return root, model_dir, proc_dir


@pytest.fixture(scope="module")
def pickscore(pick_dirs):
    _, model_dir, proc_dir = pick_dirs
    return build_reward("pickscore", {"pickscore": {"path": str(model_dir), "processor_path": str(proc_dir)}})


def _tokens(tokenizer, prompts):
    return tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")


def test_pickscore_contract(pickscore):
    rf.check_reward_contract(pickscore)
    assert pickscore.differentiable


def test_pickscore_equals_hand_computation(pickscore, pick_dirs):
    from transformers import CLIPModel

    _, model_dir, proc_dir = pick_dirs
    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    images = rf.sample_images(3, 32, 32, seed=3)  # the model's size: preprocessing is normalisation only
    prompts = ["a cat", "a dog", "a red cube"]
    tok = _tokens(pickscore.tokenizer, prompts)
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=(images - MEAN) / STD)
        img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
        txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        expected = model.logit_scale.exp() * (img * txt).sum(-1)
    assert torch.allclose(pickscore(images, prompts), expected, atol=1e-4)
    # and CLIP's own logits agree: logits_per_image[i, i] is the same quantity
    assert torch.allclose(out.logits_per_image.diagonal(), expected, atol=1e-4)


def test_pickscore_resizes_like_the_clip_processor(pickscore):
    """Torch preprocessing follows preprocessor_config.json like transformers' CLIP processor (PIL)."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              image_mean=rf.OPENAI_MEAN, image_std=rf.OPENAI_STD, resample=3)
    images = rf.sample_images(2, 72, 96, seed=5)
    ours = pickscore.transform(images)
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for im in images]
    theirs = torch.as_tensor(proc(images=pil, return_tensors="np")["pixel_values"])
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    assert (ours - theirs).abs().mean() < 0.03


def test_pickscore_pytorch_bin_and_processor_in_model_folder(tmp_path):
    folder = rf.write_clip_folder(tmp_path / "pickscore", with_processor=True, safe=False, seed=0)
    assert (folder / "pytorch_model.bin").exists() or list(folder.glob("*.bin"))
    r = build_reward("pickscore", {"pickscore": {"path": str(folder)}})
    assert r(rf.sample_images(2), ["a cat", "a dog"]).shape == (2,)


def test_pickscore_found_in_rewards_dir(monkeypatch, pick_dirs, pickscore):
    root, _, _ = pick_dirs
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(root))
    r = build_reward("pickscore")
    images = rf.sample_images(2)
    assert torch.allclose(r(images, ["a cat", "a dog"]), pickscore(images, ["a cat", "a dog"]))


def test_clipscore_clip_matches_hand_computation(tmp_path):
    from transformers import CLIPModel

    folder = rf.write_clip_folder(tmp_path / "clip", seed=2, pad_token="<|endoftext|>")
    r = build_reward("clipscore", {"clipscore": {"path": str(folder), "scale": "2.5"}})
    scores = rf.check_reward_contract(r)
    assert (scores >= 0).all()
    model = CLIPModel.from_pretrained(str(folder)).eval()
    images = rf.sample_images(4, 32, 32, seed=7)
    tok = _tokens(r.tokenizer, rf.PROMPTS)
    with torch.no_grad():
        out = model(**tok, pixel_values=(images - MEAN) / STD)
    cos = out.logits_per_image.diagonal() / model.logit_scale.exp()
    assert torch.allclose(r(images, rf.PROMPTS), 2.5 * cos.clamp_min(0), atol=1e-5)


def test_clipscore_siglip(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    folder = tmp_path / "siglip"
    tok = rf.write_clip_tokenizer(folder, pad_token="<|endoftext|>", model_max_length=16)
    config = SiglipConfig(
        text_config=dict(vocab_size=tok["vocab_size"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
    )
    torch.manual_seed(0)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2)
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "resample": 2, "size": {"height": 32, "width": 32}, "image_processor_type": "SiglipImageProcessor"}))
    r = build_reward("clipscore", {"clipscore": {"path": str(folder)}})
    assert r.transform.crop is None and r.text_inputs == ("input_ids",)
    rf.check_reward_contract(r)
    images = rf.sample_images(2, 32, 32, seed=1)
    prompts = ["a cat", "a dog"]
    ids = r.tokenizer(prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        img = model.get_image_features(pixel_values=(images - 0.5) / 0.5)
        txt = model.get_text_features(input_ids=ids)
        img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
    cos = torch.nn.functional.cosine_similarity(img, txt)
    assert torch.allclose(r(images, prompts), 100 * cos.clamp_min(0), atol=1e-4)


@pytest.fixture(scope="module")
def hps_setup(tmp_path_factory):
    folder, sd = rf.write_hps_folder(tmp_path_factory.mktemp("rewards") / "hpsv2")
    return folder, sd


def test_hpsv2_matches_open_clip_reference(hps_setup):
    folder, sd = hps_setup
    r = build_reward("hpsv2", {"hpsv2": {"path": str(folder)}})
    assert r.model.config.vision_config.num_attention_heads == 2  # width 128 / 64
    images = rf.sample_images(3, 28, 28, seed=4)  # 2x2 patches of 14 px: no resize, no crop
    prompts = ["a cat", "a dog on a sofa", "an astronaut"]
    tokens = _tokens(r.tokenizer, prompts)["input_ids"]
    expected = rf.openclip_reference_scores(sd, (images - MEAN) / STD, tokens, heads=2)
    got = r(images, prompts)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    assert got.abs().max() <= 1.0  # published convention: a cosine similarity


def test_hpsv2_contract_and_scale(hps_setup):
    folder, _ = hps_setup
    r = build_reward("hpsv2", {"hpsv2": {"path": str(folder / "HPS_v2.1_compressed.pt"), "scale": 100}})
    scores = rf.check_reward_contract(r, atol=2e-4)  # float32 noise of ~1e-6 in the cosine, times 100
    base = build_reward("hpsv2", {"hpsv2": {"path": str(folder)}})
    assert torch.allclose(scores, 100 * base(rf.sample_images(), rf.PROMPTS), atol=1e-4)


def test_hpsv2_version_2_0_and_plain_state_dict(tmp_path):
    folder, sd = rf.write_hps_folder(tmp_path / "hpsv2", version="2.0", seed=1)
    ckpt = folder / "HPS_v2_compressed.pt"
    torch.save({"module." + k: v for k, v in sd.items()}, ckpt)  # no "state_dict" key, DDP prefix
    with pytest.raises(RewardError, match="HPS_v2.1_compressed.pt"):
        build_reward("hpsv2", {"hpsv2": {"path": str(folder)}})  # default version 2.1 is absent
    r = build_reward("hpsv2", {"hpsv2": {"path": str(folder), "version": "2.0"}})
    assert r.describe() == "hpsv2(v2.0)"
    assert r(rf.sample_images(2), ["a", "b"]).shape == (2,)


def test_hpsv2_rejects_pickled_objects(tmp_path):
    folder, sd = rf.write_hps_folder(tmp_path / "hpsv2")
    # training scripts often save their argparse.Namespace next to the weights
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1e-5)}, folder / "HPS_v2.1_compressed.pt")
    with pytest.raises(RewardError, match="weights_only"):
        build_reward("hpsv2", {"hpsv2": {"path": str(folder)}})


def test_aesthetic_matches_hand_computation(tmp_path, monkeypatch):
    from transformers import CLIPModel

    head_dir, clip_dir, sd = rf.write_aesthetic_folders(tmp_path)
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path))  # finds aesthetic/ and clip-vit-large-patch14/
    r = build_reward("aesthetic")
    rf.check_reward_contract(r)
    clip = CLIPModel.from_pretrained(str(clip_dir)).eval()
    images = rf.sample_images(3, 32, 32, seed=9)
    with torch.no_grad():
        emb = clip.get_image_features(pixel_values=(images - MEAN) / STD)
        emb = getattr(emb, "pooler_output", emb)
        x = emb / emb.norm(dim=-1, keepdim=True)
        for i in (0, 2, 4, 6, 7):  # no activations in the published head
            x = torch.nn.functional.linear(x, sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"])
    assert torch.allclose(r(images, ["x"] * 3), x.squeeze(-1), atol=1e-5)


def test_differentiable_wrt_pixels(pickscore):
    images = rf.sample_images(2).requires_grad_(True)
    scores = pickscore._score(images, ["a cat", "a dog"])
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in pickscore.model.parameters())


@pytest.mark.parametrize(
    "name, needles",
    [
        ("pickscore", ["pickscore", "https://huggingface.co/yuvalkirstain/PickScore_v1"]),
        ("hpsv2", ["hpsv2", "HPS_v2.1_compressed.pt", "https://huggingface.co/xswu/HPSv2"]),
        ("aesthetic", ["aesthetic", "sac+logos+ava1-l14-linearMSE.pth", "improved-aesthetic-predictor"]),
        ("clipscore", ["clipscore", "https://huggingface.co/openai/clip-vit-large-patch14"]),
    ],
)
def test_missing_weights_name_folder_and_repo(name, needles, monkeypatch, tmp_path):
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path / "rewards"))
    with pytest.raises(RewardError) as e:
        build_reward(name)
    msg = str(e.value)
    assert str(tmp_path / "rewards" / needles[0]) in msg, msg
    for needle in needles[1:]:
        assert needle in msg, msg


def test_missing_processor_names_clip_h(pick_dirs, monkeypatch, tmp_path):
    _, model_dir, _ = pick_dirs
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path))
    with pytest.raises(RewardError) as e:
        build_reward("pickscore", {"pickscore": {"path": str(model_dir)}})
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K" in str(e.value)
    assert "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in str(e.value)


def test_image_transform_reads_legacy_and_dict_configs(tmp_path):
    rf.write_clip_preprocessor(tmp_path / "a", 32, legacy_ints=True)
    rf.write_clip_preprocessor(tmp_path / "b", 32, legacy_ints=False)
    a = ImageTransform.from_preprocessor_config(tmp_path / "a" / "preprocessor_config.json")
    b = ImageTransform.from_preprocessor_config(tmp_path / "b" / "preprocessor_config.json")
    x = rf.sample_images(2, 50, 40)
    assert a(x).shape == b(x).shape == (2, 3, 32, 32)
    assert torch.equal(a(x), b(x))
