"""A minimal scoring server for the ``remote`` reward (standard library http.server + Pillow).

Run it, then train with ``--reward remote --reward-opt remote.url=http://127.0.0.1:8765/score``::

    python -m fdfo_core.rewards.remote_server_example --port 8765

It implements protocol fdfo-reward/1 (see `fdfo_core.rewards.remote`): it decodes the images and
answers ``{"scores": [...]}``. The example score is the mean brightness of each image; replace
`score_images` (or pass your own `score_fn` to `make_server`) with your model. It listens on
127.0.0.1 only by default; put it behind a proper server with TLS before exposing it anywhere.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence

ScoreFn = Callable[[list, Sequence[str]], Sequence[float]]


def decode_images(encoded: Sequence[str]) -> list:
    """base64 PNG/JPEG strings -> RGB PIL images."""
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB") for s in encoded]


def score_images(images: list, prompts: Sequence[str]) -> list[float]:
    """Example score: mean brightness in [0, 1]. Replace with a call to your model."""
    out = []
    for im in images:
        grey = im.convert("L")
        hist = grey.histogram()
        total = sum(hist)
        out.append(sum(i * c for i, c in enumerate(hist)) / (255.0 * total))
    return out


class ScoreHandler(BaseHTTPRequestHandler):
    """POST JSON {"prompts": [...], "images": [...]} -> {"scores": [...]}."""

    server_version = "fdfo-reward-example/1"

    def _reply(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        try:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length).decode("utf-8"))
            prompts, encoded = request["prompts"], request["images"]
            if len(prompts) != len(encoded):
                raise ValueError("prompts and images differ in length")
            images = decode_images(encoded)
        except Exception as e:  # a bad request is the client's fault: 400
            self._reply(400, {"error": f"bad request: {e}"})
            return
        try:
            scores = [float(s) for s in self.server.score_fn(images, prompts)]  # type: ignore[attr-defined]
        except Exception as e:
            self._reply(500, {"error": f"scoring failed: {e}"})
            return
        self._reply(200, {"scores": scores})

    def log_message(self, format: str, *args) -> None:  # quieter than the default
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)


def make_server(host: str = "127.0.0.1", port: int = 8765, score_fn: ScoreFn = score_images,
                verbose: bool = False) -> ThreadingHTTPServer:
    """A server ready for `serve_forever()` (port 0 picks a free port: see `server.server_address`)."""
    server = ThreadingHTTPServer((host, port), ScoreHandler)
    server.score_fn = score_fn  # type: ignore[attr-defined]
    server.verbose = verbose  # type: ignore[attr-defined]
    return server


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, verbose=True)
    print(f"scoring on http://{args.host}:{server.server_address[1]}/ (Ctrl+C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
