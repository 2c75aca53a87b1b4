"""A local stand-in for the Hugging Face Hub's file endpoints, for fetch tests (no internet).

Serves `HEAD` and `GET /<repo>/resolve/<revision>/<filename>` the way huggingface_hub's
`get_hf_file_metadata` and `http_get` read them: `X-Repo-Commit` (a 40-hex commit), `ETag`,
`Content-Length`, HTTP range requests (206 + `Content-Range`) to resume, and 404 with
`X-Error-Code: EntryNotFound` / `RepoNotFound` for what is not there. Faults to test with:

- `drop_after[filename] = n`: the next GET of that file sends its headers and n bytes, then closes
  the connection (a dropped download); every later GET of it answers 503 until `heal()`.
- `announce[filename] = size`: the HEAD announces `size` bytes while GET sends the real file (a
  file of the wrong size).

It listens on 127.0.0.1 on a free port chosen by the system, in daemon threads, with a socket
timeout, and records every request in `requests` as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Mapping
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: Mapping[str, Mapping[str, bytes]]):
        self.repos = {r: dict(files) for r, files in repos.items()}
        self.drop_after: dict[str, int] = {}
        self.announce: dict[str, int] = {}
        self.broken: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold a thread for long

            def log_message(self, *args):  # quiet
                pass

            def _lookup(self):
                path = unquote(self.path.split("?", 1)[0]).lstrip("/")
                if "/resolve/" not in path:
                    return None, None, None
                repo, rest = path.split("/resolve/", 1)
                filename = rest.split("/", 1)[1] if "/" in rest else ""
                files = hub.repos.get(repo)
                if files is None:
                    return repo, filename, "RepoNotFound"
                if filename not in files:
                    return repo, filename, "EntryNotFound"
                return repo, filename, None

            def _not_found(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", f"{code}: {self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _meta_headers(self, data: bytes, filename: str) -> None:
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")

            def do_HEAD(self):  # noqa: N802
                hub.requests.append(("HEAD", self.path, self.headers.get("Range")))
                repo, filename, error = self._lookup()
                if error or repo is None:
                    return self._not_found(error or "EntryNotFound")
                data = hub.repos[repo][filename]
                self.send_response(200)
                self._meta_headers(data, filename)
                self.send_header("Content-Length", str(hub.announce.get(filename, len(data))))
                self.end_headers()

            def do_GET(self):  # noqa: N802
                rng = self.headers.get("Range")
                hub.requests.append(("GET", self.path, rng))
                repo, filename, error = self._lookup()
                if error or repo is None:
                    return self._not_found(error or "EntryNotFound")
                if filename in hub.broken:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = hub.repos[repo][filename]
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[len("bytes="):].split("-", 1)[0])
                body = data[start:]
                self.send_response(206 if start else 200)
                self._meta_headers(data, filename)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = hub.drop_after.pop(filename, None)
                if cut is not None:
                    hub.broken.add(filename)
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def heal(self) -> None:
        self.broken.clear()
        self.drop_after.clear()

    def gets(self, filename: str) -> list[str | None]:
        """The Range headers of the GETs of `filename` (None: the whole file)."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + filename)]

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
