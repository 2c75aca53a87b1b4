"""The reference-image reward with every encoder kind (CLIP, SigLIP, DINOv2, CSD in both published
layouts) on tiny random checkpoints written in their on-disk formats, robust reading of reference
folders, the content guard, and the weights lookup."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import reward_fixtures as rf
from fdfo_core.files.image_files import ImageFileError, read_image, read_images
from fdfo_core.files.drawing import to_pil
from fdfo_core.rewards import RewardError, build_reward
from fdfo_core.rewards.clip_common import normalize
from fdfo_core.rewards.image_encoders import detect_kind, load_image_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

PALETTE = [0.6, 0.3, 0.05]  # the references' palette: warm oranges
OTHERS = ([0.05, 0.3, 0.6], [0.1, 0.5, 0.2], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [0.55, 0.05, 0.45])


@pytest.fixture(autouse=True)
def _isolated_lookup(monkeypatch, tmp_path):
    monkeypatch.delenv("FDFO_REWARDS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    csd_hub, csd_sd = rf.write_csd_folder(root / "csd", layout="hub", seed=0)
    csd_drive, _ = rf.write_csd_folder(root / "csd_drive", layout="drive", seed=0)
    return {
        "root": root,
        "clip": rf.write_clip_folder(root / "clip-vit-large-patch14", seed=0, pad_token="<|endoftext|>"),
        "siglip": rf.write_siglip_folder(root / "siglip", seed=0),
        "dinov2": rf.write_dinov2_folder(root / "dinov2", seed=0),
        "csd": csd_hub,
        "csd_drive": csd_drive,
        "csd_sd": csd_sd,
    }


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    for i, im in enumerate(rf.palette_images(6, PALETTE, size=48, seed=1)):
        to_pil(im).save(folder / f"ref{i}.png")
    return folder


def palette_test_sets():
    same = rf.palette_images(12, PALETTE, seed=2)
    others = torch.cat([rf.palette_images(6, b, seed=10 + i) for i, b in enumerate(OTHERS)])
    return same, others


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2", "csd", "csd_drive"])
@pytest.mark.parametrize("aggregation", ["topk", "mean_embedding"])
def test_images_of_the_references_palette_rank_first(encoders, ref_dir, kind, aggregation):
    r = build_reward("reference", {"reference": {"images": str(ref_dir), "path": str(encoders[kind]),
                                                 "aggregation": aggregation}})
    assert r.encoder.kind == kind.split("_")[0] and r.num_references == 6
    same, others = palette_test_sets()
    a, b = r(same, ["x"] * len(same)), r(others, ["x"] * len(others))
    auc = float((a[:, None] > b[None, :]).float().mean())
    print(f"{kind} {aggregation}: references' palette {a.mean():.1f}, other palettes {b.mean():.1f}, AUC {auc:.3f}")
    assert auc > 0.95
    assert a.max() <= 100 + 1e-3 and b.min() >= -100 - 1e-3


@pytest.mark.parametrize("kind", ["clip", "dinov2", "csd"])
def test_contract_and_gradients(encoders, ref_dir, kind):
    r = build_reward("reference", {"reference": {"images": str(ref_dir), "path": str(encoders[kind])}})
    rf.check_reward_contract(r, atol=1e-4)
    images = rf.sample_images(2).requires_grad_(True)
    r._score(images, ["a", "b"]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in r.encoder.model.parameters())


def test_aggregations_follow_their_formulas(encoders, ref_dir):
    refs, _ = read_images(ref_dir)
    enc = load_image_encoder("clip", encoders["clip"])
    R = enc.embed_images(refs)
    x = rf.sample_images(5, 32, 32, seed=4)
    with torch.no_grad():
        e = enc(x)
    sims = e @ R.T
    for k in (1, 3, 6, 50):
        r = build_reward("reference", {"reference": {"images": str(ref_dir), "path": str(encoders["clip"]), "top_k": str(k),
                                                     "scale": "1"}})
        expected = sims.topk(min(k, 6), dim=-1).values.mean(-1)
        assert torch.allclose(r(x, ["p"] * 5), expected, atol=1e-5)
    r = build_reward("reference", {"reference": {"images": str(ref_dir), "path": str(encoders["clip"]),
                                                 "aggregation": "mean_embedding", "scale": "1"}})
    assert torch.allclose(r(x, ["p"] * 5), e @ normalize(R.mean(0)), atol=1e-5)
    with pytest.raises(RewardError, match="aggregation"):
        build_reward("reference", {"reference": {"images": str(ref_dir), "path": str(encoders["clip"]), "aggregation": "max"}})


def test_content_guard_terms(encoders, ref_dir):
    """reward = scale * (style - w_c * max_c cos(img, caption_c) + w_p * cos(img, prompt)), in the CLIP space."""
    opts = {"images": str(ref_dir), "path": str(encoders["clip"]), "scale": "1"}
    plain = build_reward("reference", {"reference": opts})
    guarded = build_reward("reference", {"reference": {**opts, "content_captions": "a cat | a dog\na red cube",
                                                       "content_weight": "0.7", "prompt_weight": "0.4"}})
    assert guarded.content_captions == ["a cat", "a dog", "a red cube"]
    enc = guarded.encoder
    x = rf.sample_images(4, 32, 32, seed=8)
    prompts = ["a cat", "a dog on a sofa", "a red cube", "an astronaut"]
    with torch.no_grad():
        e = enc(x)
        caps = enc.embed_texts(["a cat", "a dog", "a red cube"])
        pr = enc.embed_texts(prompts)
    expected = plain(x, prompts) - 0.7 * (e @ caps.T).max(-1).values + 0.4 * (e * pr).sum(-1)
    assert torch.allclose(guarded(x, prompts), expected, atol=1e-5)
    assert set(guarded.components(x, prompts)) == {"style", "content", "prompt"}
    assert "3 captions" in guarded.describe() and "prompt" in guarded.describe()


def test_content_guard_with_an_image_only_encoder_uses_a_clip(encoders, ref_dir, monkeypatch):
    opts = {"images": str(ref_dir), "path": str(encoders["dinov2"]), "prompt_weight": "0.5"}
    # No CLIP anywhere: the error names the folder and where CLIP ViT-L/14 comes from.
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(encoders["root"] / "nowhere"))
    with pytest.raises(RewardError, match="clip-vit-large-patch14"):
        build_reward("reference", {"reference": opts})
    # The default CLIP folder in the reward folders is found; text_path picks one explicitly.
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(encoders["root"]))
    r = build_reward("reference", {"reference": opts})
    assert r.text_encoder is not r.encoder and r.text_encoder.kind == "clip"
    r2 = build_reward("reference", {"reference": {**opts, "text_path": str(encoders["siglip"])}})
    assert r2.text_encoder.kind == "siglip"
    rf.check_reward_contract(r, atol=1e-4)


def test_image_only_text_tower_is_refused_clearly(encoders, ref_dir):
    with pytest.raises(RewardError, match="cannot embed text"):
        build_reward("reference", {"reference": {"images": str(ref_dir), "path": str(encoders["dinov2"]),
                                                 "prompt_weight": "1", "text_path": str(encoders["csd"])}})


def test_csd_equals_the_authors_forward(encoders):
    """Both published layouts load into a CLIP vision model whose output is CSD's style embedding."""
    images = rf.sample_images(3, 32, 32, seed=6)  # the tiny model's size: preprocessing is normalisation only
    mean, std = torch.tensor(rf.OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(rf.OPENAI_STD).view(1, 3, 1, 1)
    expected = rf.csd_reference_embeddings(encoders["csd_sd"], (images - mean) / std, heads=1)
    for key in ("csd", "csd_drive"):
        enc = load_image_encoder("auto", encoders[key])
        assert enc.kind == "csd" and enc.model.config.hidden_act == "quick_gelu"
        with torch.no_grad():
            got = enc(images)
        assert torch.allclose(got, expected, atol=1e-5), (key, (got - expected).abs().max())


def test_dinov2_reads_its_preprocessor_and_pools_the_cls_token(encoders):
    from transformers import Dinov2Model

    enc = load_image_encoder("dinov2", encoders["dinov2"])
    t = enc.transform
    assert t.size == 36 and t.crop == (32, 32)
    assert torch.allclose(t.mean.flatten(), torch.tensor(rf.IMAGENET_MEAN))
    x = rf.sample_images(2, 40, 56, seed=3)
    model = Dinov2Model.from_pretrained(str(encoders["dinov2"])).eval()
    with torch.no_grad():
        expected = normalize(model(pixel_values=t(x)).pooler_output)
        assert torch.allclose(enc(x), expected, atol=1e-5)
    # Without preprocessor_config.json the published DINOv2 settings apply (ImageNet statistics, crop 224).
    bare = rf.write_dinov2_folder(encoders["root"] / "dino_bare", with_preprocessor=False)
    t2 = load_image_encoder("dinov2", bare).transform
    assert t2.crop == (224, 224) and torch.allclose(t2.std.flatten(), torch.tensor(rf.IMAGENET_STD))


def test_kind_detection(encoders, tmp_path):
    assert detect_kind(encoders["clip"]) == "clip"
    assert detect_kind(encoders["siglip"]) == "siglip"
    assert detect_kind(encoders["dinov2"]) == "dinov2"
    assert detect_kind(encoders["csd"]) == "csd"
    assert detect_kind(encoders["csd_drive"]) == "csd"
    assert detect_kind(encoders["csd_drive"] / "checkpoint.pth") == "csd"
    (tmp_path / "odd").mkdir()
    assert detect_kind(tmp_path / "odd") is None
    with pytest.raises(RewardError, match="cannot tell which kind"):
        load_image_encoder("auto", tmp_path / "odd")
    with pytest.raises(RewardError, match="not a dinov2 encoder"):
        load_image_encoder("dinov2", encoders["clip"])


def test_csd_rejects_other_checkpoints(tmp_path):
    torch.save({"model_state_dict": {"encoder.weight": torch.ones(2, 2)}}, tmp_path / "checkpoint.pth")
    with pytest.raises(RewardError, match="not a CSD checkpoint"):
        load_image_encoder("csd", tmp_path)
    torch.save({"model_state_dict": {}, "hook": Image.new("RGB", (1, 1))}, tmp_path / "checkpoint.pth")
    with pytest.raises(RewardError, match="weights_only"):
        load_image_encoder("csd", tmp_path)


@pytest.mark.parametrize(
    "kind, needles",
    [
        ("clip", ["clip-vit-large-patch14", "https://huggingface.co/openai/clip-vit-large-patch14"]),
        ("siglip", ["siglip-so400m-patch14-384", "https://huggingface.co/google/siglip-so400m-patch14-384"]),
        ("dinov2", ["dinov2-base", "https://huggingface.co/facebook/dinov2-base"]),
        ("csd", ["csd", "https://huggingface.co/tomg-group-umd/CSD-ViT-L", "learn2phoenix/CSD"]),
    ],
)
def test_missing_encoder_weights_name_folder_and_source(kind, needles, monkeypatch, tmp_path, ref_dir):
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(tmp_path / "rewards"))
    with pytest.raises(RewardError) as e:
        build_reward("reference", {"reference": {"images": str(ref_dir), "encoder": kind}})
    msg = str(e.value)
    assert str(tmp_path / "rewards" / needles[0]) in msg, msg
    for needle in needles[1:]:
        assert needle in msg, msg


def test_encoders_found_in_the_reward_folders(encoders, ref_dir, monkeypatch, tmp_path):
    root = tmp_path / "rewards"
    (root / "dinov2-base").parent.mkdir(parents=True)
    (root / "dinov2-base").symlink_to(encoders["dinov2"], target_is_directory=True)
    (root / "csd").symlink_to(encoders["csd_drive"], target_is_directory=True)
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(root))
    for kind in ("dinov2", "csd"):
        r = build_reward("reference", {"reference": {"images": str(ref_dir), "encoder": kind}})
        assert r.encoder.kind == kind


def test_missing_images_option_says_what_to_do():
    with pytest.raises(RewardError, match="reference.images="):
        build_reward("reference")


# ---- reading reference images ------------------------------------------------------------------


def _save_variety(folder):
    """Reference files as people have them: RGBA, greyscale, 16-bit, palette, a sideways JPEG, mixed sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))
    rgba.save(folder / "a_transparent.png")
    Image.new("L", (64, 48), 128).save(folder / "b_grey.png")
    Image.fromarray(np.full((20, 20), 65535 // 4, dtype=np.uint16)).save(folder / "c_16bit.png")
    Image.new("RGB", (30, 30), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "d_palette.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 60 wide, shown 60 tall
    Image.new("RGB", (60, 20), (250, 250, 0)).save(folder / "e_rotated.JPG", exif=exif)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"junk")


def test_reference_folders_are_read_robustly(tmp_path):
    _save_variety(tmp_path / "refs")
    images, paths = read_images(tmp_path / "refs")
    assert [p.name for p in paths] == ["a_transparent.png", "b_grey.png", "c_16bit.png", "d_palette.gif", "e_rotated.JPG"]
    assert all(im.shape[0] == 3 and im.dtype == torch.float32 and 0 <= im.min() and im.max() <= 1 for im in images)
    transparent, grey, sixteen, palette, rotated = images
    assert torch.allclose(transparent[:, 0, 5], torch.tensor([0.0, 0.0, 1.0]))  # opaque blue
    assert torch.allclose(transparent[:, 0, 30], torch.ones(3))  # transparent: white, not the hidden red
    assert torch.allclose(grey[:, 0, 0], torch.full((3,), 128 / 255))
    assert torch.allclose(sixteen[:, 0, 0], torch.full((3,), (65535 // 4) / 65535), atol=1e-4)  # not its low byte
    assert palette[1, 0, 0] > 0.7 and palette[0, 0, 0] < 0.1
    assert rotated.shape[1:] == (60, 20)  # EXIF orientation applied
    # Large images are reduced on reading (shorter side at most 1024 by default).
    Image.new("RGB", (3000, 1500), (10, 20, 30)).save(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png").shape == (3, 1024, 2048)


def test_reference_reward_over_mixed_files_and_an_image_batch(encoders, tmp_path):
    _save_variety(tmp_path / "refs")
    r = build_reward("reference", {"reference": {"images": str(tmp_path / "refs"), "path": str(encoders["clip"])}})
    assert r.num_references == 5 and r.reference_names[0].endswith("a_transparent.png")
    # The same references as tensors (the node's IMAGE input, NHWC) give the same reward.
    images, _ = read_images(tmp_path / "refs")
    r2 = build_reward("reference", {"reference": {"images": images, "path": str(encoders["clip"])}})
    x = rf.sample_images(3)
    assert torch.allclose(r(x, "p"), r2(x, "p"), atol=1e-5)
    batch = torch.stack([torch.nn.functional.interpolate(i[None], size=(32, 32))[0] for i in images]).permute(0, 2, 3, 1)
    r3 = build_reward("reference", {"reference": {"images": batch, "path": str(encoders["clip"])}})
    assert r3.num_references == 5


def test_bad_reference_files_are_named(encoders, tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    to_pil(rf.sample_images(1)[0]).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a png")
    with pytest.raises(RewardError, match="broken.png"):
        build_reward("reference", {"reference": {"images": str(folder), "path": str(encoders["clip"])}})
    data = (folder / "good.png").read_bytes()
    (folder / "broken.png").write_bytes(data[: len(data) // 2])  # a half-copied file
    with pytest.raises(ImageFileError, match="broken.png"):
        read_images(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(RewardError, match="no images in .*readme.txt"):
        build_reward("reference", {"reference": {"images": str(empty), "path": str(encoders["clip"])}})
    with pytest.raises(RewardError, match="does not exist"):
        build_reward("reference", {"reference": {"images": str(tmp_path / "nope"), "path": str(encoders["clip"])}})


def test_several_folders_and_files(encoders, ref_dir, tmp_path):
    import os

    extra = tmp_path / "more.png"
    to_pil(rf.palette_images(1, PALETTE, seed=9)[0]).save(extra)
    r = build_reward("reference", {"reference": {"images": f"{ref_dir}{os.pathsep}{extra}", "path": str(encoders["clip"])}})
    assert r.num_references == 7
    r = build_reward("reference", {"reference": {"images": f"{ref_dir}\n{extra}\n", "path": str(encoders["clip"])}})
    assert r.num_references == 7


def test_recursive_folders(encoders, ref_dir, tmp_path):
    nested = tmp_path / "styles"
    (nested / "sub").mkdir(parents=True)
    to_pil(rf.palette_images(1, PALETTE, seed=3)[0]).save(nested / "top.png")
    to_pil(rf.palette_images(1, PALETTE, seed=4)[0]).save(nested / "sub" / "deep.png")
    (nested / ".cache").mkdir()
    to_pil(rf.palette_images(1, PALETTE, seed=5)[0]).save(nested / ".cache" / "hidden.png")
    flat = build_reward("reference", {"reference": {"images": str(nested), "path": str(encoders["clip"])}})
    deep = build_reward("reference", {"reference": {"images": str(nested), "path": str(encoders["clip"]), "recursive": "true"}})
    assert flat.num_references == 1 and deep.num_references == 2


def test_a_run_records_the_references_by_content(encoders, ref_dir, tmp_path):
    """run.json records the reference images by count and hash (not a tensor's text), so a resumed
    run notices changed references, from a folder or from the node's IMAGE input."""
    import shutil

    r = build_reward("reference", {"reference": {"images": str(ref_dir), "path": str(encoders["clip"])}})
    rec = r.spec_options["images"]
    assert rec["source"] == str(ref_dir) and rec["count"] == 6 and len(rec["sha256"]) == 64
    images, _ = read_images(ref_dir)
    as_tensors = build_reward("reference", {"reference": {"images": images, "path": str(encoders["clip"])}})
    assert as_tensors.spec_options["images"]["sha256"] == rec["sha256"]
    assert as_tensors.spec_options["images"]["source"] == "images given as tensors"
    changed = tmp_path / "changed"
    shutil.copytree(ref_dir, changed)
    to_pil(rf.palette_images(1, OTHERS[0], size=48, seed=1)[0]).save(changed / "ref0.png")
    r2 = build_reward("reference", {"reference": {"images": str(changed), "path": str(encoders["clip"])}})
    assert r2.spec_options["images"]["sha256"] != rec["sha256"]
    from fdfo_core.run.definition import reward_fields

    fields = reward_fields(r)
    assert fields["reward"] == "reference" and json.dumps(fields["reward_options"])  # plain JSON


# --- memory of reference folders (issue 27 item 8) ----------------------------------------------------


def _count_decoded(monkeypatch):
    """Wrap the file decoder the reference reward uses: how many decoded references are alive at
    once (weak references: a tensor counts until it is freed)."""
    import weakref

    import fdfo_core.files.image_files as image_files

    real = image_files.read_image
    state = {"alive": 0, "peak": 0, "read": 0}

    def gone():
        state["alive"] -= 1

    def counted(path, *a, **k):
        t = real(path, *a, **k)
        state["alive"] += 1
        state["read"] += 1
        state["peak"] = max(state["peak"], state["alive"])
        weakref.finalize(t, gone)
        return t

    monkeypatch.setattr(image_files, "read_image", counted)
    return state


@pytest.mark.parametrize("count", [6, 30])
def test_reference_folders_are_streamed_in_micro_batches(encoders, tmp_path, monkeypatch, count):
    """Building the reward decodes at most micro_batch references at a time, however many the
    folder holds (100 PNGs of 1536 x 1024 went from 0.35 to 4.4 GB when all were decoded first),
    and gives the embeddings and content hash of decoding them all."""
    from fdfo_core.rewards.reference import images_sha256

    folder = tmp_path / "refs"
    folder.mkdir()
    for i, im in enumerate(rf.palette_images(count, PALETTE, size=24, seed=3)):
        to_pil(im).save(folder / f"r{i:03d}.png")
    state = _count_decoded(monkeypatch)
    r = build_reward("reference", {"reference": {"images": str(folder), "path": str(encoders["clip"]), "micro_batch": "4"}})
    assert state["read"] == count and state["peak"] <= 4, state
    monkeypatch.undo()
    images, _ = read_images(folder)
    enc = load_image_encoder("clip", str(encoders["clip"]))
    assert torch.allclose(r.reference_embeddings.cpu(), enc.embed_images(images).float().cpu(), atol=1e-5)
    assert r.spec_options["images"]["sha256"] == images_sha256(images) and r.num_references == count


def _rgba_file(path):
    """A 40 x 40 RGBA PNG: an opaque blue square on a fully transparent background whose hidden
    colour is red (what Load Image's RGB shows)."""
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red under the transparency
    rgba[10:30, 10:30] = (20, 40, 220, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def test_rgba_references_embed_alike_through_a_folder_and_load_image(encoders, tmp_path):
    """The folder composites a transparent reference over white; ComfyUI's Load Image gives the
    RGB under the transparency and the transparency as a MASK (1 - alpha): the node composites
    the same way when the mask is connected, so both give one embedding (issue 27)."""
    from comfy_scripts.nodepack import submodule

    rn = submodule("nodes.reward_nodes")
    folder = tmp_path / "refs"
    folder.mkdir()
    rgba = _rgba_file(folder / "logo.png")
    # ComfyUI's LoadImage: image = RGB (alpha dropped) [1, H, W, 3]; mask = 1 - alpha [1, H, W]
    image = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0)[None]
    mask = 1.0 - torch.from_numpy(rgba[..., 3].astype(np.float32) / 255.0)[None]
    composited = rn.composite_over_white(image.permute(0, 3, 1, 2), mask)
    assert torch.allclose(composited[0], read_image(folder / "logo.png"), atol=1 / 255)
    opts = {"path": str(encoders["clip"])}
    via_folder = build_reward("reference", {"reference": {"images": str(folder), **opts}})
    via_node = build_reward("reference", {"reference": {"images": list(composited.unbind(0)), **opts}})
    ignored = build_reward("reference", {"reference": {"images": list(image.permute(0, 3, 1, 2).unbind(0)), **opts}})
    a, b, c = (r.reference_embeddings.cpu() for r in (via_folder, via_node, ignored))
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    assert not torch.allclose(a, c, atol=1e-2)  # without the mask, the red under the transparency counts
    # Load Image's placeholder mask of an opaque file (64 x 64 zeros) changes nothing; a wrong one is refused
    assert torch.equal(rn.composite_over_white(composited, torch.zeros(1, 64, 64)), composited)
    with pytest.raises(submodule("fdfo_core.rewards").RewardError, match="does not fit"):
        rn.composite_over_white(composited, torch.ones(1, 64, 64))
