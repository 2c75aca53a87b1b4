"""Fetching reward weights on request (fdfo_core/rewards/fetch.py) against a local stand-in for the
Hub's file endpoints (tests/fake_hub.py): only the files a reward needs, atomic, resumable, the
wrong size refused, offline refused with a clear message, and the fetched folder loads."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

import reward_fixtures as rf
from fake_hub import FakeHub
from fdfo_core.rewards import RewardError, build_reward, list_reward_folders
from fdfo_core.rewards.fetch import STAGING, FetchError, fetch_plan, fetch_weights

PICK_REPO = "yuvalkirstain/PickScore_v1"
CLIP_H_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def _read(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """A tiny PickScore repository and a CLIP-H repository holding big weights the reward must not fetch."""
    root = tmp_path_factory.mktemp("hub")
    pick = _read(rf.write_clip_folder(root / "pick", with_processor=False, seed=0))
    pick["pytorch_model.bin"] = b"\0" * 4096  # the pickle copy the Hub also has: not needed beside safetensors
    pick["README.md"] = b"# PickScore"
    clip_h = _read(rf.write_clip_processor_folder(root / "cliph"))
    clip_h["model.safetensors"] = b"\1" * 300_000  # stands in for the 4 GB CLIP-H weights
    clip_h["open_clip_pytorch_model.bin"] = b"\2" * 1000
    return {PICK_REPO: pick, CLIP_H_REPO: clip_h}


@pytest.fixture
def online(monkeypatch, tmp_path):
    """An empty reward folder, the Hub switched on (the test suite runs offline)."""
    rewards = tmp_path / "rewards"
    monkeypatch.setenv("FDFO_REWARDS_DIR", str(rewards))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return rewards


def _pickscore_is_usable() -> None:
    reward = build_reward("pickscore")  # no path: found in the reward folder
    scores = reward(rf.sample_images(2), ["a red square", "a blue circle"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_fetch_pickscore_takes_only_what_the_loader_reads(repos, online, monkeypatch):
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        seen = []
        result = fetch_weights("pickscore", progress=lambda done, total: seen.append((done, total)), log=None)
        assert sorted(p.name for p in result.folders) == ["CLIP-ViT-H-14-laion2B-s32B-b79K", "pickscore"]
        assert sorted(_read(online / "pickscore")) == ["config.json", "model.safetensors"]
        assert _read(online / "pickscore")["model.safetensors"] == repos[PICK_REPO]["model.safetensors"]
        clip_files = set(_read(online / "CLIP-ViT-H-14-laion2B-s32B-b79K"))
        assert {"preprocessor_config.json", "vocab.json", "merges.txt"} <= clip_files
        assert not clip_files & {"model.safetensors", "open_clip_pytorch_model.bin"}
        for name in ("pytorch_model.bin", "open_clip_pytorch_model.bin", "README.md"):
            assert hub.gets(name) == [], name
        assert not any("model.safetensors" in p and CLIP_H_REPO in p for m, p, _ in hub.requests if m == "GET")
        # progress in bytes, rising to the total of the files fetched
        expected = sum(len(repos[PICK_REPO][n]) for n in ("config.json", "model.safetensors")) + sum(
            len(repos[CLIP_H_REPO][n]) for n in clip_files)
        assert seen[-1] == (expected, expected)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert not (online / STAGING).exists()
        _pickscore_is_usable()
        # A second fetch finds everything in place and downloads nothing.
        before = len(hub.requests)
        again = fetch_weights("pickscore", log=None)
        assert again.folders == [] and len(again.already_present) == 2 and len(hub.requests) == before


def test_interrupted_download_is_continued_and_never_half_visible(repos, online, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub writes what it receives in chunks (10 MB); small ones here, so that the tiny
    # file has a part written before the drop (a real interrupt loses at most the chunk in flight).
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 8192)
    weights = repos[PICK_REPO]["model.safetensors"]
    half = len(weights) // 2
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.drop_after["model.safetensors"] = half  # the connection drops halfway, then the server fails
        with pytest.raises(FetchError, match="run the fetch again"):
            fetch_weights("pickscore", log=None)
        # Nothing half-done is visible as a model: no pickscore folder, the staging folder is hidden.
        assert not (online / "pickscore").exists()
        assert "pickscore" not in list_reward_folders() and STAGING not in list_reward_folders()
        with pytest.raises(RewardError, match="PickScore_v1 not found"):
            build_reward("pickscore")
        hub.heal()
        fetch_weights("pickscore", log=None)
        assert hub.gets("model.safetensors")[0] is None
        resumed = hub.gets("model.safetensors")[-1]  # continued, not started again
        assert resumed is not None and 0 < int(resumed[len("bytes="):-1]) <= half, resumed
        assert (online / "pickscore" / "model.safetensors").read_bytes() == weights
        _pickscore_is_usable()


def test_wrong_size_is_refused_and_the_next_fetch_starts_clean(repos, online, monkeypatch):
    weights = repos[PICK_REPO]["model.safetensors"]
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.announce["model.safetensors"] = len(weights) + 7
        with pytest.raises(FetchError, match="different size"):
            fetch_weights("pickscore", log=None)
        assert not (online / "pickscore").exists()
        leftovers = [p for p in (online / STAGING).rglob("model.safetensors*") if p.is_file()]
        assert leftovers == []  # the bad partial file is gone
        hub.announce.clear()
        fetch_weights("pickscore", log=None)
        assert hub.gets("model.safetensors")[-1] is None  # fetched whole again
        assert (online / "pickscore" / "model.safetensors").read_bytes() == weights


def test_offline_is_the_default_and_says_what_to_do(repos, online, monkeypatch):
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(FetchError) as e:
            fetch_weights("pickscore", log=None)
        assert "HF_HUB_OFFLINE" in str(e.value) and "by hand" in str(e.value) and str(online) in str(e.value)
        assert hub.requests == []


def test_unreachable_hub_names_the_endpoint(online, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(FetchError, match="HF_ENDPOINT") as e:
        fetch_weights("clipscore", log=None)
    assert f"127.0.0.1:{port}" in str(e.value)


def test_cli_fetch_into_a_folder(repos, online, monkeypatch, tmp_path, capsys):
    from fdfo_core.cli.main import main

    dest = tmp_path / "elsewhere"
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert main(["rewards", "fetch", "pickscore", "--dest", str(dest)]) == 0
        assert (dest / "pickscore" / "config.json").is_file()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert main(["rewards", "fetch", "nonsense"]) == 2
    assert "fetchable names are" in capsys.readouterr().err


def test_plans_name_only_the_loaders_files():
    pick = fetch_plan("pickscore")
    assert [p.folder for p in pick] == ["pickscore", "CLIP-ViT-H-14-laion2B-s32B-b79K"]
    clip_h_files = {n for f in pick[1].files for n in f.names}
    assert not clip_h_files & {"model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"}
    hps = fetch_plan("hpsv2", {"version": "2.0"})
    assert [n for f in hps[0].files for n in f.names] == ["HPS_v2_compressed.pt"]
    assert fetch_plan("vlm", {"model": "Qwen/Qwen2.5-VL-3B-Instruct"})[0].folder == "Qwen2.5-VL-3B-Instruct"
    assert [p.folder for p in fetch_plan("reference", {"encoder": "csd", "content_captions": "a cat"})] == [
        "csd", "clip-vit-large-patch14"]
    with pytest.raises(FetchError, match="fetchable names"):
        fetch_plan("brightness")


def test_node_switch_fetches_only_when_on(repos, online, monkeypatch):
    from comfy_scripts.nodepack import submodule

    rn = submodule("nodes.reward_nodes")
    node = rn.FDFOPickScoreReward()
    assert node.INPUT_TYPES()["optional"]["fetch_missing_weights"][1]["default"] is False
    with FakeHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(Exception, match="(?i)pickscore_v1 not found"):
            node.load("auto", "auto", "auto", 16, "cpu")  # off (the default): nothing is downloaded
        assert hub.requests == []
        reward, = node.load("auto", "auto", "auto", 16, "cpu", fetch_missing_weights=True)
        assert (online / "pickscore" / "model.safetensors").is_file()
        scores = reward(rf.sample_images(2), ["a", "b"])
        assert torch.isfinite(scores).all()
        before = len(hub.requests)
        node.load("auto", "auto", "auto", 16, "cpu", fetch_missing_weights=True)  # present now: no request
        assert len(hub.requests) == before


@pytest.mark.parametrize("status, url, says", [
    (503, "http://127.0.0.1:46401/org/repo/resolve/main/model.safetensors", "run the fetch again"),
    (503, "https://mirror.example/401/403/model.safetensors", "run the fetch again"),
    (401, "https://huggingface.co/org/repo/resolve/main/model.safetensors", "needs you to log in"),
    (403, "https://huggingface.co/org/repo/resolve/main/model.safetensors", "needs you to log in"),
])
def test_the_answers_status_decides_the_advice_not_a_number_in_the_url(online, status, url, says):
    """A server error on a port such as :46401 (a random local port, a mirror's path) is not a
    login problem: the advice follows the HTTP status of the answer (seen: a flaky CI failure when the
    fake hub's port held '401')."""
    from types import SimpleNamespace

    from fdfo_core.rewards.fetch import _explain, fetch_plan

    class HfHubHTTPError(Exception):
        def __init__(self):
            super().__init__(f"Server error '{status}' for url '{url}'")
            self.response = SimpleNamespace(status_code=status)

    part = fetch_plan("pickscore")[0]
    message = str(_explain(HfHubHTTPError(), part, "model.safetensors", "http://127.0.0.1:46401"))
    assert says in message, message
