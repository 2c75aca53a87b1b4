"""Start a headless ComfyUI on CPU with this node pack, in a temporary folder layout.

`--base-directory` puts models/, custom_nodes/, input/, output/, temp/ and user/ in a temporary
folder (this repository is symlinked into its custom_nodes/), the database lives in memory and
Python writes no bytecode, so a test run leaves no file in the ComfyUI checkout.

COMFYUI_FRONTEND_ROOT (optional) serves another front end than the one ComfyUI's requirements pin:
the `static` folder of a `comfyui-frontend-package` (passed as `main.py --front-end-root`), e.g.
`pip download --no-deps comfyui-frontend-package==1.58.1`, unzip, and point it at
`comfyui_frontend_package/static`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-FDFO"
FRONTEND_ROOT = os.environ.get("COMFYUI_FRONTEND_ROOT") or None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfy_root: str | Path, python: str | None, base: Path, env: dict[str, str] | None = None,
                 extra_nodes: list[Path] | None = None, front_end_root: str | Path | None = FRONTEND_ROOT):
        """`extra_nodes`: more custom-node folders to link in (test fixtures); `front_end_root`: the
        static folder of the front end to serve (default COMFYUI_FRONTEND_ROOT; None = ComfyUI's own)."""
        self.root = Path(comfy_root)
        self.extra_nodes = [Path(p) for p in extra_nodes or []]
        self.front_end_root = Path(front_end_root) if front_end_root else None
        if self.front_end_root is not None and not (self.front_end_root / "index.html").is_file():
            raise FileNotFoundError(f"COMFYUI_FRONTEND_ROOT {self.front_end_root} has no index.html: point it at the "
                                    "'static' folder of an unpacked comfyui-frontend-package")
        self.python = python or sys.executable
        self.base = Path(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("OMP_NUM_THREADS", self.env.get("FDFO_TEST_THREADS", "1"))
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.env["HF_HUB_OFFLINE"] = "1"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base / "server.log"

    # --- life cycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 300.0) -> "ComfyServer":
        for sub in ("custom_nodes", "models/loras", "models/vae", "models/checkpoints", "input", "output", "temp", "user"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        for folder in self.extra_nodes:
            extra = self.base / "custom_nodes" / folder.name
            if not extra.exists():
                extra.symlink_to(folder.resolve(), target_is_directory=True)
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        if self.front_end_root is not None:
            cmd += ["--front-end-root", str(self.front_end_root)]
        self._log = open(self.log_path, "w")
        # Own process group: stopping the server never touches other processes.
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=5)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if getattr(self, "_log", None):
            self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- HTTP ----------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 60.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.load(r)

    def post(self, path: str, data: Any, timeout: float = 60.0) -> tuple[int, Any]:
        body = json.dumps(data).encode() if data is not None else b""
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode()
                return r.status, (json.loads(text) if text.strip() else None)
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            try:
                return e.code, json.loads(text)
            except json.JSONDecodeError:
                return e.code, text

    def queue(self, prompt: dict[str, Any]) -> str:
        status, reply = self.post("/prompt", {"prompt": prompt, "client_id": "fdfo-tests"})
        if status != 200:
            raise PromptRejected(reply)
        return reply["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 1800.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error") or entry["status"].get("completed"):
                    return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI died:\n{self.log_tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
        return self.wait(self.queue(prompt), timeout)

    def interrupt(self) -> None:
        self.post("/interrupt", None)


class PromptRejected(RuntimeError):
    """POST /prompt refused the graph (validation errors); `.reply` holds the server's JSON."""

    def __init__(self, reply: Any):
        super().__init__(json.dumps(reply)[:3000])
        self.reply = reply


def error_message(entry: dict[str, Any]) -> str | None:
    """The exception message of a failed prompt, from its history entry."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
    return None


def was_interrupted(entry: dict[str, Any]) -> bool:
    return any(kind == "execution_interrupted" for kind, _ in entry.get("status", {}).get("messages", []))


def output_files(base: Path, entry: dict[str, Any], node_id: str) -> list[Path]:
    images = entry.get("outputs", {}).get(node_id, {}).get("images", [])
    return [base / im["type"] / im["subfolder"] / im["filename"] for im in images]
