"""Installing the node pack as a person does leaves ComfyUI's environment as it was (needs COMFYUI_PYTHON).

ComfyUI-Manager, the Comfy registry (`comfy node install`) and the manual instructions all run
`pip install -r requirements.txt` with ComfyUI's Python after the folder lands in `custom_nodes/`.
Here pip's resolver runs that install as a dry run (`--dry-run --report`, offline: `--no-index`)
in ComfyUI's environment: it must want to install, upgrade or downgrade nothing. A requirement that
would change a ComfyUI package (numpy below ComfyUI's) is seen by the same check, so it can fail.
That the pack then loads there is shown by the other ComfyUI-gated suites (tests/test_comfyui_e2e.py
starts ComfyUI with the folder in `custom_nodes/`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON")

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_PYTHON, reason="set COMFYUI_PYTHON (ComfyUI's interpreter) to check the install"),
]


def installed(python: str) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


def pip_would_change(python: str, requirements: Path, tmp_path: Path) -> tuple[list[str], str]:
    """(["name old -> new", ...] for every package pip's resolver would install or change, pip's
    error text if it cannot resolve offline), for `pip install -r requirements` in that environment."""
    report = tmp_path / "report.json"
    proc = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--no-index", "--report", str(report),
                           "--disable-pip-version-check", "-r", str(requirements)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return [], proc.stderr[-2000:] or proc.stdout[-2000:]
    before = installed(python)
    changes = []
    for item in json.loads(report.read_text()).get("install", []):
        meta = item.get("metadata", {})
        name = str(meta.get("name", "?")).lower().replace("_", "-")
        changes.append(f"{name} {before.get(name, '(new)')} -> {meta.get('version', '?')}")
    return changes, ""


def test_requirements_change_nothing_in_comfyuis_environment(tmp_path):
    changes, error = pip_would_change(COMFYUI_PYTHON, REPO / "requirements.txt", tmp_path)
    assert not error, f"pip could not resolve requirements.txt in ComfyUI's environment without downloading:\n{error}"
    assert not changes, f"installing requirements.txt would change ComfyUI's environment: {changes}"


def test_the_check_sees_a_requirement_that_would_change_comfyui(tmp_path):
    numpy = installed(COMFYUI_PYTHON).get("numpy")
    assert numpy, "ComfyUI's environment has no numpy"
    bad = tmp_path / "requirements.txt"
    bad.write_text(f"numpy<{numpy}\n")
    changes, error = pip_would_change(COMFYUI_PYTHON, bad, tmp_path)
    assert changes or error, "a requirement below ComfyUI's numpy went unnoticed"
