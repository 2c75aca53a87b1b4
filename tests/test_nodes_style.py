"""FDFO Reference Style Reward and FDFO Preference Reward nodes: inputs from ComfyUI's input and
output folders only, the IMAGE input, re-execution when files change, and the report text."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import reward_fixtures as rf
from comfy_scripts.nodepack import submodule
from fdfo_core.files.drawing import to_pil
from fdfo_core.rewards.pick_records import PickRecord

rn = submodule("nodes.reward_nodes")
RewardError = submodule("fdfo_core.rewards").RewardError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return rf.write_clip_folder(tmp_path_factory.mktemp("enc") / "clip-vit-large-patch14", seed=0,
                                pad_token="<|endoftext|>")


@pytest.fixture
def comfy(tmp_path, monkeypatch, clip_dir):
    """A stand-in folder_paths: input/ with a reference folder, output/ with a picking run, and a
    reward folder holding the CLIP encoder."""
    root = tmp_path / "ComfyUI"
    inp, out, rewards = root / "input", root / "output", root / "models" / "fdfo_rewards"
    (inp / "styles" / "ink").mkdir(parents=True)
    for i, im in enumerate(rf.palette_images(4, [0.6, 0.3, 0.05], size=40, seed=1)):
        to_pil(im).save(inp / "styles" / "ink" / f"{i}.png")
    to_pil(rf.sample_images(1)[0]).save(inp / "loose.png")  # images directly in input/ are not a folder choice
    (inp / "notes").mkdir()
    (inp / "notes" / "a.txt").write_text("x")
    rewards.mkdir(parents=True)
    (rewards / "clip-vit-large-patch14").symlink_to(clip_dir, target_is_directory=True)
    fake = types.SimpleNamespace(get_input_directory=lambda: str(inp), get_output_directory=lambda: str(out),
                                 models_dir=str(root / "models"), folder_names_and_paths={})
    fake.add_model_folder_path = lambda name, path, is_default=False: fake.folder_names_and_paths.setdefault(name, ([path], set()))
    fake.get_folder_paths = lambda name: list(fake.folder_names_and_paths[name][0])
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    monkeypatch.delenv("FDFO_REWARDS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    return types.SimpleNamespace(root=root, input=inp, output=out, rewards=rewards)


REF_DEFAULTS = dict(encoder="clip", path="auto", aggregation="topk", top_k=3, content_captions="", content_weight=1.0,
                    prompt_weight=0.0, text_path="auto", scale=100.0, dtype="auto", micro_batch=16, device="cpu")


def test_reference_node_from_a_folder_and_an_image_batch(comfy):
    node = rn.FDFOReferenceStyleReward()
    choices = rn.FDFOReferenceStyleReward.INPUT_TYPES()["required"]["folder"][0]
    assert choices == [rn.NO_FOLDER, "styles/ink"]
    reward, = node.load(folder="styles/ink", **REF_DEFAULTS)
    assert reward.num_references == 4 and reward.encoder.kind == "clip"
    # The same references as a ComfyUI IMAGE batch (NHWC): the same reward.
    from fdfo_core.files.image_files import read_images

    batch = torch.stack(read_images(comfy.input / "styles" / "ink")[0]).permute(0, 2, 3, 1)
    from_batch, = node.load(folder=rn.NO_FOLDER, images=batch, **REF_DEFAULTS)
    x = rf.sample_images(3)
    assert torch.allclose(reward(x, "p"), from_batch(x, "p"), atol=1e-4)
    both, = node.load(folder="styles/ink", images=batch[:2], **REF_DEFAULTS)
    assert both.num_references == 6
    with pytest.raises(RewardError, match="connect reference images"):
        node.load(folder=rn.NO_FOLDER, **REF_DEFAULTS)
    with pytest.raises(RewardError, match="outside ComfyUI's input folder"):
        node.load(folder="../output", **REF_DEFAULTS)
    with pytest.raises(RewardError, match="does not exist"):
        node.load(folder="styles/gone", **REF_DEFAULTS)


def test_reference_node_passes_its_widgets_to_the_reward(comfy, monkeypatch):
    seen = {}
    monkeypatch.setattr(rn, "build_reward", lambda spec, options=None, device=None: seen.update(options[spec]) or "built")
    rn.FDFOReferenceStyleReward().load(folder="styles/ink", **{**REF_DEFAULTS, "content_captions": "a fox", "prompt_weight": 0.5})
    valid = set(submodule("fdfo_core.rewards").reward_options("reference"))
    assert set(seen) <= valid
    assert seen["content_captions"] == "a fox" and seen["prompt_weight"] == 0.5 and len(seen["images"]) == 4
    assert "path" not in seen and "text_path" not in seen  # "auto": the reward's own lookup


def test_reference_node_reruns_when_the_folder_changes(comfy):
    before = rn.FDFOReferenceStyleReward.IS_CHANGED(folder="styles/ink", **REF_DEFAULTS)
    assert before == rn.FDFOReferenceStyleReward.IS_CHANGED(folder="styles/ink", **REF_DEFAULTS)
    to_pil(rf.sample_images(1)[0]).save(comfy.input / "styles" / "ink" / "new.png")
    assert rn.FDFOReferenceStyleReward.IS_CHANGED(folder="styles/ink", **REF_DEFAULTS) != before


def _picking_run(folder, n=60):
    from test_preference import write_picks

    return write_picks(folder, n=n, seed=2, every_skip=0)


PREF_DEFAULTS = dict(model_file=rn.NO_MODEL, encoder="clip", encoder_path="auto", head="linear", hidden=64,
                     use_prompt=False, holdout=0.2, save_as="", scale=1.0, dtype="auto", micro_batch=16, device="cpu")


def test_preference_node_fits_reports_and_saves(comfy):
    _picking_run(comfy.output / "fdfo" / "my_style")
    node = rn.FDFOPreferenceReward()
    reward, report = node.load(picks="fdfo/my_style\n# a comment\n", **{**PREF_DEFAULTS, "save_as": "taste"})
    assert reward.report.pairs == 60 and "held-out accuracy" in report and "60 picks from 1 file(s)" in report
    saved = comfy.rewards / "preference" / "taste.safetensors"
    assert saved.is_file() and str(saved) in report
    assert rn.preference_models() == ["preference/taste.safetensors"]
    # The saved model, chosen in the drop-down, is the same reward.
    again, report2 = node.load(picks="", **{**PREF_DEFAULTS, "model_file": "preference/taste.safetensors"})
    x = rf.sample_images(4)
    assert torch.allclose(again(x, "p"), reward(x, "p"), atol=1e-5) and "loaded preference/taste.safetensors" in report2
    with pytest.raises(RewardError, match="give picks"):
        node.load(picks="", **PREF_DEFAULTS)
    with pytest.raises(RewardError, match="inside ComfyUI's output or input folder"):
        node.load(picks="/etc/passwd", **PREF_DEFAULTS)
    with pytest.raises(RewardError, match="plain file name"):
        node.load(picks="fdfo/my_style", **{**PREF_DEFAULTS, "save_as": "../x"})


def test_preference_node_reruns_when_picks_arrive(comfy):
    path = _picking_run(comfy.output / "fdfo" / "run2", n=10)
    before = rn.FDFOPreferenceReward.IS_CHANGED(picks="fdfo/run2", **PREF_DEFAULTS)
    with path.open("a", encoding="utf-8") as f:
        f.write(PickRecord(prompt="p", epoch=5, pair_id=0, choice="left", left_image="picks/0000-l.png",
                           right_image="picks/0000-r.png").to_json() + "\n")
    assert rn.FDFOPreferenceReward.IS_CHANGED(picks="fdfo/run2", **PREF_DEFAULTS) != before
