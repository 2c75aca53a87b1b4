"""Remote reward: score images with a model served over HTTP (standard library only).

Nothing is sent anywhere unless the user gives a ``url``; there is no default address.

Protocol (version 1)
--------------------
Request: ``POST <url>`` with ``Content-Type: application/json`` and the body::

    {
      "protocol": "fdfo-reward/1",
      "prompts": ["a cat", "a dog"],                 # one prompt per image
      "images": ["iVBORw0KGgo...", "iVBORw0KGgo..."],  # base64 (standard alphabet, no line breaks)
      "format": "png",                                # or "jpeg" (option image_format)
      "width": 512, "height": 512                     # of every image in this request
    }

Images are 8-bit RGB, rounded from the [0, 1] floats. One request carries at most ``micro_batch``
images (default 8); a larger batch is sent as several requests, in order.

Reply: status 200 with a JSON object ``{"scores": [0.73, 0.12]}``: exactly one number per image,
in the order of the request (higher is better). ``null`` (or NaN) marks an image the server could
not score: training drops that image's pair, counts it and goes on (the run stops only when more
than ``max_bad_pair_fraction`` of an epoch's pairs are lost). Other keys are ignored (put anything
you like to log there).

Errors: HTTP 429 and 5xx replies, timeouts and connection failures are retried ``retries`` times
(default 3) after ``backoff``, ``2*backoff``, ``4*backoff``... seconds (default 1 s, capped at 60 s).
Other 4xx replies and malformed replies (not JSON, no "scores", wrong count, values that are not
numbers or null) raise a `RewardError` at once, quoting the start of the reply. A request that
fails costs only its own images (they score NaN) when other requests of the same call succeed.

Authentication: ``api_key_env`` names an environment variable whose value is sent as
``Authorization: Bearer <value>`` (so secrets stay off the command line); ``headers`` adds any
other headers (a dict, or ``"Name: value; Name2: value2"``).

`remote_server_example.py` beside this module is a small server to adapt.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Mapping, Sequence

import numpy as np
import torch

from ..files.text_files import TextFileError, decode_text
from .base import Reward, RewardError
from .registry import register_reward

PROTOCOL = "fdfo-reward/1"


def encode_image(image: torch.Tensor, fmt: str = "png", quality: int = 95) -> str:
    """One CHW float image in [0, 1] -> base64 PNG/JPEG text."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    else:
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def parse_headers(headers: Mapping[str, str] | str | None) -> dict[str, str]:
    if not headers:
        return {}
    if isinstance(headers, Mapping):
        return {str(k): str(v) for k, v in headers.items()}
    out = {}
    for part in str(headers).split(";"):
        if not part.strip():
            continue
        if ":" not in part:
            raise RewardError(f"remote: cannot read header {part.strip()!r}; write 'Name: value; Name2: value2'")
        k, v = part.split(":", 1)
        out[k.strip()] = v.strip()
    return out


class RemoteReward(Reward):
    name = "remote"

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 headers: Mapping[str, str] | str | None = None, api_key_env: str | None = None,
                 image_format: str = "png", jpeg_quality: int = 95, micro_batch: int = 8, device=None):
        super().__init__(micro_batch=micro_batch, device=device)
        if not url:
            raise RewardError("remote: give the scoring server's url (there is no default)")
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RewardError(f"remote: url must be an http:// or https:// address, got {url!r}")
        if image_format not in ("png", "jpeg"):
            raise RewardError(f"remote: image_format must be 'png' or 'jpeg', got {image_format!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise RewardError("remote: timeout must be > 0, retries and backoff >= 0")
        self.url = url
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = 60.0
        self.image_format = image_format
        self.jpeg_quality = int(jpeg_quality)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json",
                        "User-Agent": "fdfo-remote-reward/1"}
        self.headers.update(parse_headers(headers))
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise RewardError(f"remote: the environment variable {api_key_env} (api_key_env) is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self._sleep = time.sleep  # replaced in tests

    def describe(self) -> str:
        host = urllib.parse.urlparse(self.url).netloc
        return f"remote({host})"

    def _where(self) -> str:
        p = urllib.parse.urlparse(self.url)
        return f"{p.scheme}://{p.netloc}{p.path}"  # no query string: it may hold a key

    def _post(self, body: bytes) -> bytes:
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read(300).decode("utf-8", "replace") if e.fp else ""
                last = f"HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")
                if e.code != 429 and e.code < 500:
                    raise RewardError(f"remote: {self._where()} answered {last}") from e
            except (socket.timeout, TimeoutError) as e:
                last = f"no reply within {self.timeout:g} s ({e})"
            except urllib.error.URLError as e:
                reason = e.reason
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    last = f"no reply within {self.timeout:g} s"
                else:
                    last = f"cannot connect ({reason})"
            except (ConnectionError, OSError) as e:
                last = f"connection failed ({e})"
        raise RewardError(f"remote: {self._where()} failed after {self.retries + 1} attempt(s): {last}")

    def _score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        n = images.shape[0]
        payload = {
            "protocol": PROTOCOL,
            "prompts": list(prompts),
            "images": [encode_image(im, self.image_format, self.jpeg_quality) for im in images],
            "format": self.image_format,
            "width": int(images.shape[-1]),
            "height": int(images.shape[-2]),
        }
        raw = self._post(json.dumps(payload).encode("utf-8"))
        return torch.tensor(self.parse_reply(raw, n), dtype=torch.float32)

    def parse_reply(self, raw: bytes, n: int) -> list[float]:
        shown = raw[:200].decode("utf-8", "replace")
        try:  # UTF-8, a byte-order mark allowed (some servers send one)
            reply = json.loads(decode_text(raw, "the reply"))
        except (TextFileError, json.JSONDecodeError) as e:
            raise RewardError(f"remote: {self._where()} did not reply with JSON ({e}): {shown!r}") from e
        if not isinstance(reply, dict) or "scores" not in reply:
            raise RewardError(f"remote: the reply must be a JSON object with a 'scores' list, got {shown!r}")
        scores = reply["scores"]
        if not isinstance(scores, list):
            raise RewardError(f"remote: 'scores' must be a list, got {type(scores).__name__}")
        if len(scores) != n:
            raise RewardError(f"remote: sent {n} images but got {len(scores)} scores back")
        out = []
        for i, s in enumerate(scores):
            if s is None:  # the server could not score this image: it loses its pair, training goes on
                out.append(math.nan)
            elif isinstance(s, bool) or not isinstance(s, (int, float)):
                raise RewardError(f"remote: score {i} is {s!r}, not a number (or null for an image it could not score)")
            else:
                out.append(float(s))  # NaN / Infinity are kept: the trainer drops such pairs
        return out


@register_reward("remote", "POST images + prompts as JSON to a scoring server you run; one number per image back")
def _remote(url: str | None = None, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
            headers: str | None = None, api_key_env: str | None = None, image_format: str = "png",
            jpeg_quality: int = 95, micro_batch: int = 8, device=None) -> RemoteReward:
    """url: the server's address (required)."""
    return RemoteReward(url or "", timeout=timeout, retries=retries, backoff=backoff, headers=headers,
                        api_key_env=api_key_env, image_format=image_format, jpeg_quality=jpeg_quality,
                        micro_batch=micro_batch, device=device)
