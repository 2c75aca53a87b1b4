"""The remote reward against small HTTP servers on 127.0.0.1 (the example server and failing ones)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import reward_fixtures as rf
from fdfo_core.rewards import RewardError, build_reward
from fdfo_core.rewards.remote import RemoteReward
from fdfo_core.rewards.remote_server_example import make_server, score_images


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}/score"


@pytest.fixture
def example_server():
    seen = []

    def score(images, prompts):
        seen.append((len(images), list(prompts), images[0].size))
        return score_images(images, prompts)  # the example's own score: mean brightness

    server = make_server("127.0.0.1", 0, score_fn=score)
    url = _serve(server)
    yield url, seen
    server.shutdown()
    server.server_close()


class Scripted(BaseHTTPRequestHandler):
    """Answers with the next scripted reply: (status, body bytes, delay seconds)."""

    script: list = []
    requests: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"body": body, "headers": dict(self.headers)})
        status, payload, delay = type(self).script.pop(0) if type(self).script else (200, b"{}", 0)
        if delay:
            time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    Scripted.script, Scripted.requests = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.daemon_threads = True
    url = _serve(server)
    yield url, Scripted
    server.shutdown()
    server.server_close()


def _ok(scores):
    return 200, json.dumps({"scores": scores}).encode(), 0


def test_scores_come_back_in_order(example_server):
    url, seen = example_server
    r = build_reward("remote", {"remote": {"url": url, "micro_batch": "3"}})
    images = rf.sample_images(5, 24, 32)
    prompts = [f"prompt {i}" for i in range(5)]
    scores = r(images, prompts)
    assert scores.shape == (5,)
    expected = images.mul(255).round().div(255)  # 8-bit PNG round trip
    luma = (0.299 * expected[:, 0] + 0.587 * expected[:, 1] + 0.114 * expected[:, 2]).mean(dim=(1, 2))
    assert torch.allclose(scores, luma, atol=3e-3)
    assert [s[0] for s in seen] == [3, 2] and seen[0][1] == prompts[:3] and seen[0][2] == (32, 24)
    rf.check_reward_contract(r, atol=1e-6)


def test_request_body_and_headers(scripted, monkeypatch):
    url, handler = scripted
    monkeypatch.setenv("MY_SCORER_KEY", "s3cret")
    handler.script = [_ok([1.5, 2])]
    r = build_reward("remote", {"remote": {"url": url, "api_key_env": "MY_SCORER_KEY", "headers": "X-Run: 7"}})
    assert torch.equal(r(rf.sample_images(2, 8, 8), ["a", "b"]), torch.tensor([1.5, 2.0]))
    req = handler.requests[0]
    assert req["headers"]["Authorization"] == "Bearer s3cret" and req["headers"]["X-Run"] == "7"
    body = req["body"]
    assert body["protocol"] == "fdfo-reward/1" and body["prompts"] == ["a", "b"] and body["format"] == "png"
    assert (body["width"], body["height"]) == (8, 8)
    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert im.format == "PNG" and im.size == (8, 8) and im.mode == "RGB"
    assert "s3cret" not in r.describe()


def test_retries_transient_errors_with_backoff(scripted):
    url, handler = scripted
    handler.script = [(500, b'{"error": "busy"}', 0), (503, b"", 0), _ok([0.25])]
    r = RemoteReward(url, retries=3, backoff=0.5)
    delays = []
    r._sleep = delays.append
    assert torch.equal(r(rf.sample_images(1, 8, 8), ["a"]), torch.tensor([0.25]))
    assert delays == [0.5, 1.0] and len(handler.requests) == 3


def test_gives_up_after_retries(scripted):
    url, handler = scripted
    handler.script = [(500, b"boom", 0)] * 3
    r = RemoteReward(url, retries=2, backoff=0)
    with pytest.raises(RewardError, match=r"failed after 3 attempt\(s\): HTTP 500.*boom"):
        r(rf.sample_images(1, 8, 8), ["a"])


def test_client_errors_are_not_retried(scripted):
    url, handler = scripted
    handler.script = [(401, b'{"error": "who are you"}', 0), _ok([1.0])]
    r = RemoteReward(url, retries=3, backoff=0)
    with pytest.raises(RewardError, match="HTTP 401"):
        r(rf.sample_images(1, 8, 8), ["a"])
    assert len(handler.requests) == 1


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not json", "did not reply with JSON"),
        (b'{"score": [1]}', "'scores' list"),
        (b'[1, 2]', "'scores' list"),
        (b'{"scores": [1]}', "sent 2 images but got 1 scores"),
        (b'{"scores": [1, "2"]}', "score 1 is '2'"),
        (b'{"scores": [true, 1]}', "score 0 is True"),
        (b'{"scores": 3}', "must be a list"),
    ],
)
def test_malformed_replies(scripted, payload, message):
    url, handler = scripted
    handler.script = [(200, payload, 0)]
    with pytest.raises(RewardError, match=message):
        RemoteReward(url, retries=2, backoff=0)(rf.sample_images(2, 8, 8), ["a", "b"])
    assert len(handler.requests) == 1  # a malformed reply is not retried


def test_null_and_nan_scores_mark_only_their_image(scripted):
    """Issue 10's example: a server answering null for one image used to stop the whole run
    ("remote: score 0 is None, not a finite number"); now that image alone has no score (NaN)."""
    url, handler = scripted
    handler.script = [(200, b'{"scores": [null, 0.5, NaN, Infinity]}', 0)]
    scores = RemoteReward(url, retries=0)(rf.sample_images(4, 8, 8), ["a"] * 4)
    assert torch.isnan(scores[0]) and scores[1] == 0.5 and torch.isnan(scores[2]) and torch.isinf(scores[3])


def test_a_failed_request_costs_only_its_images(scripted):
    """micro_batch 2 over 5 images: the second request fails for good (HTTP 400); the other
    requests' scores come back inside a PartialRewardError, the failed images as NaN."""
    from fdfo_core.rewards.base import PartialRewardError

    url, handler = scripted
    handler.script = [_ok([1, 2]), (400, b'{"error": "image too dark"}', 0), _ok([5])]
    r = RemoteReward(url, retries=2, backoff=0, micro_batch=2)
    with pytest.raises(PartialRewardError, match=r"2 of 5 images could not be scored.*HTTP 400.*image too dark") as info:
        r(rf.sample_images(5, 8, 8), ["a"] * 5)
    s = info.value.scores
    assert s[:2].tolist() == [1, 2] and torch.isnan(s[2:4]).all() and s[4] == 5
    assert [k for k, _ in info.value.errors] == [2]


def test_timeout(scripted):
    url, handler = scripted
    handler.script = [(200, b'{"scores": [1]}', 1.0), (200, b'{"scores": [1]}', 1.0)]
    r = RemoteReward(url, timeout=0.2, retries=1, backoff=0)
    t0 = time.time()
    with pytest.raises(RewardError, match=r"no reply within 0.2 s"):
        r(rf.sample_images(1, 8, 8), ["a"])
    assert time.time() - t0 < 1.5


def test_connection_refused():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = RemoteReward(f"http://127.0.0.1:{port}/", retries=1, backoff=0)
    with pytest.raises(RewardError, match="cannot connect"):
        r(rf.sample_images(1, 8, 8), ["a"])


def test_needs_an_explicit_http_url():
    with pytest.raises(RewardError, match="no default"):
        build_reward("remote")
    with pytest.raises(RewardError, match="http"):
        build_reward("remote", {"remote": {"url": "file:///etc/passwd"}})
    with pytest.raises(RewardError, match="not set"):
        build_reward("remote", {"remote": {"url": "http://127.0.0.1:1/", "api_key_env": "FDFO_SURELY_UNSET_VAR"}})
