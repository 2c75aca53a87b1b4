"""What the browser tests need, and their skip marks: a ComfyUI checkout (COMFYUI_ROOT), Debian's
chromium, and the playwright package in ComfyUI's python (COMFYUI_PYTHON)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
CHROMIUM = "/usr/bin/chromium"


def playwright_missing() -> bool:
    if not COMFYUI_ROOT:
        return True
    return subprocess.run([PYTHON, "-c", "import playwright.sync_api"], capture_output=True).returncode != 0


def browser_skips(what: str) -> list:
    """Skip marks for a browser test module; `what` completes "set COMFYUI_ROOT (...) to ..."."""
    return [
        pytest.mark.skipif(not COMFYUI_ROOT, reason=f"set COMFYUI_ROOT (and COMFYUI_PYTHON) to {what}"),
        pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (apt-get install chromium)"),
        pytest.mark.skipif(playwright_missing(), reason="the playwright package is not installed in COMFYUI_PYTHON"),
    ]
