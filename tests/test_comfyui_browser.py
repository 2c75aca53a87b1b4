"""The example workflows in the real ComfyUI front end, in Debian's chromium (needs COMFYUI_ROOT,
/usr/bin/chromium and the playwright package in COMFYUI_PYTHON; no browser is downloaded).

A headless ComfyUI serves the front end; tests/comfy_scripts/browser_check.py loads every example
workflow with `app.loadGraphData` (what dropping the file on the canvas does) and checks that no
node type is missing, no "missing nodes" dialog opens, every link survives, and the front end's own
`app.graphToPrompt` gives exactly the API-format copy the end-to-end test queues. Screenshots of
the graphs go to docs/images/comfyui_<workflow>.png (the README shows the toy one).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_scripts.server import ComfyServer
from comfy_scripts.toy_fixture import toy_model_env

REPO = Path(__file__).resolve().parents[1]
COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
CHROMIUM = "/usr/bin/chromium"


def _playwright_missing() -> bool:
    if not COMFYUI_ROOT:
        return True
    return subprocess.run([PYTHON, "-c", "import playwright.sync_api"], capture_output=True).returncode != 0


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not COMFYUI_ROOT, reason="set COMFYUI_ROOT (and COMFYUI_PYTHON) to test the workflows in the front end"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(_playwright_missing(), reason="the playwright package is not installed in COMFYUI_PYTHON"),
]
WORKFLOWS = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui_browser")
    server = ComfyServer(COMFYUI_ROOT, PYTHON, base, env=toy_model_env(tmp_path_factory.getbasetemp())).start()
    shots = base / "screenshots"
    try:
        proc = subprocess.run([PYTHON, str(REPO / "tests" / "comfy_scripts" / "browser_check.py"), server.url, str(shots)],
                              capture_output=True, text=True, timeout=900)
    finally:
        server.stop()
    found = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            found[r["workflow"]] = r
    if not found:
        pytest.fail(f"the browser check printed no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    images = REPO / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for r in found.values():
        if Path(r["screenshot"]).exists():
            shutil.copyfile(r["screenshot"], images / Path(r["screenshot"]).name)
    return found


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_loads_and_converts_in_the_front_end(results, name):
    assert name in results, f"{name} was not checked"
    r = results[name]
    assert r["missing"] == [], f"node types missing in the front end: {r['missing']}"
    assert r["dialogs"] == [], r["dialogs"]
    assert r["links"] == r["expected_links"]
    assert r["api_diff"] == {} and r["extra_nodes"] == [], json.dumps(r["api_diff"], indent=1)[:4000]
    assert r["page_errors"] == [], r["page_errors"]
    assert (REPO / "docs" / "images" / f"comfyui_{name}.png").exists()
