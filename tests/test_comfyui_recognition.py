"""ComfyUI's own model classes at their true widths, through the nodes' recognition (COMFYUI_ROOT gated).

tests/comfy_scripts/recognition_in_comfyui.py builds each model the way ComfyUI's loaders do (its
detector on a state dict's keys and shapes, on the meta device: no weights), and checks that the
ComfyUI backend trains Flux.2 dev and Z-Image as their families (and refuses them by name as
predating them when the ComfyUI reports v0.3.64), and refuses Chroma Radiance and Kandinsky 5 Image by
name with the reason. Classes a ComfyUI version lacks are skipped there (v0.3.64 has only Chroma
Radiance of these). Run: COMFYUI_ROOT=... COMFYUI_PYTHON=... python -m pytest -q tests/test_comfyui_recognition.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_scripts.results import script_results

REPO = Path(__file__).resolve().parents[1]
COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
MODELS = ["Flux2", "ZImage", "ChromaRadiance", "Kandinsky5Image"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if not COMFYUI_ROOT:
        pytest.skip("set COMFYUI_ROOT (and COMFYUI_PYTHON) to run the recognition checks in ComfyUI")
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    work = tmp_path_factory.mktemp("recognition")
    proc = subprocess.run([python, str(REPO / "tests" / "comfy_scripts" / "recognition_in_comfyui.py"), COMFYUI_ROOT],
                          cwd=str(work), capture_output=True, text=True, timeout=600)
    return script_results(proc, "check")


@pytest.mark.comfyui
@pytest.mark.parametrize("model", MODELS)
def test_comfyui_model_class_is_recognised_or_refused_by_name(results, model):
    r = results.get(model)
    assert r is not None, f"{model} did not run"
    print(json.dumps(r, indent=1)[:3000])
    if r.get("skipped"):
        pytest.skip(r["skipped"])
    assert r["ok"], json.dumps(r, indent=1)[:5000]
