"""FDFO LoRA files load in real ComfyUI with the right strength (needs COMFYUI_ROOT)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.comfyui
@pytest.mark.skipif(not COMFYUI_ROOT, reason="set COMFYUI_ROOT (and COMFYUI_PYTHON) to check LoRA files in ComfyUI")
def test_lora_file_gives_the_same_velocity_in_comfyui_as_in_diffusers(tmp_path):
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    proc = subprocess.run(
        [python, str(REPO / "tests" / "comfy_scripts" / "lora_in_comfyui.py"), COMFYUI_ROOT, str(REPO), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, f"ComfyUI check failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    print(result)
    assert result["lora_effect"] > 1e-2  # the LoRA was applied
    assert result["max_diff"] < 1e-4  # ... at the right strength (alpha / rank) on the right slices
