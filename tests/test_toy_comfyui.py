"""ComfyUI loads the toy diffusion model and VAE and samples exactly like diffusers.

Runs only when COMFYUI_ROOT points at a ComfyUI checkout; COMFYUI_PYTHON is the interpreter with
ComfyUI's dependencies plus diffusers/transformers (default: this interpreter). The check runs in
a subprocess (tests/comfy_scripts/toy_check.py) so ComfyUI's imports stay out of pytest.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")

pytestmark = pytest.mark.comfyui


@pytest.mark.skipif(not COMFYUI_ROOT, reason="set COMFYUI_ROOT (and COMFYUI_PYTHON) to run the ComfyUI loading test")
def test_comfyui_loads_and_matches_diffusers():
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(
        [python, str(ROOT / "tests" / "comfy_scripts" / "toy_check.py"), "--comfyui-root", COMFYUI_ROOT]
        + (["--model", os.environ["FDFO_TOY_MODEL"]] if os.environ.get("FDFO_TOY_MODEL") else []),
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("COMFYUI_CHECK ")]
    assert lines, f"the check printed no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len("COMFYUI_CHECK "):])
    print(f"\nComfyUI check: {result}")
    assert result["comfy_model"] == "SD3" and result["comfy_latent_format"] == "SD3"
    assert result["comfy_vae"] == "TAESD" and result["comfy_vae_latent_channels"] == 16
    assert result["comfy_shift"] == 3.0
    assert result["image_shape"] == [2, 64, 64, 3]
    assert result["match"], result
