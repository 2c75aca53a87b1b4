"""The example workflows in the real ComfyUI front end, in Debian's chromium, as a person uses them
(needs COMFYUI_ROOT, /usr/bin/chromium and the playwright package in COMFYUI_PYTHON; no browser
is downloaded). Window 1700 x 1000.

A headless ComfyUI serves the front end; tests/comfy_scripts/browser_check.py:
- loads every example workflow as the Templates menu does and checks that no node type is
  missing, no "missing nodes" dialog opens, every link survives, and the front end's own
  `app.graphToPrompt` gives exactly the API-format copy the end-to-end test queues;
- shows in each the outputs a run would show (at the sizes the workflow declares) and checks, at
  the template's own zoom, that no two nodes overlap, every node is inside the window and every
  image shows whole at its declared scale (1 = pixel for pixel for the toy);
- loads a workflow saved with the one-node Trainer of before FDFO Training Options;
- runs the toy template to the end as a person does (load, click Run, wait): the Trainer's epoch
  line, its live image and its reward-curve and base-vs-trained views update during the run, and
  the same layout checks pass on the real outputs; after the job has ended the Trainer still shows
  its summary (the last epoch line, done, and the LoRA) in all front ends, 1.58 included. Its end-of-run screenshot is
  docs/images/comfyui_fdfo_toy.png (the README and docs/comfyui.md show it), one taken during the
  run docs/images/comfyui_fdfo_toy_running.png; the other workflows' screenshots are
  docs/images/comfyui_<workflow>.png.

FDFO_BROWSER_RUN=0 skips the toy run (about 5 minutes on 2 idle CPU cores, 25 under load);
FDFO_BROWSER_EPOCHS / FDFO_BROWSER_PAIRS shorten it (typed into the Trainer's widgets before Run;
5 epochs keep 3 running epoch lines to watch). The screenshots of a shortened run are not copied
into docs/images.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from comfy_scripts.browser_env import COMFYUI_ROOT, PYTHON, browser_skips
from comfy_scripts.server import ComfyServer
from comfy_scripts.toy_fixture import toy_model_env
from comfy_scripts.results import script_results

REPO = Path(__file__).resolve().parents[1]
RUN = os.environ.get("FDFO_BROWSER_RUN", "1") != "0"


pytestmark = [
    pytest.mark.browser,
    *browser_skips("test the workflows in the front end"),
]
WORKFLOWS = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
LEGACY = sorted(p.stem for p in (REPO / "tests" / "data" / "legacy_workflows").glob("*.json") if not p.name.endswith(".api.json"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui_browser")
    env = toy_model_env(tmp_path_factory.getbasetemp())
    server = ComfyServer(COMFYUI_ROOT, PYTHON, base, env=env).start()
    shots = base / "screenshots"
    args = [PYTHON, str(REPO / "tests" / "comfy_scripts" / "browser_check.py"), server.url, str(base), str(shots)]
    try:
        proc = subprocess.run(args + ([] if RUN else ["--no-run"]), capture_output=True, text=True, timeout=3600)
    finally:
        server.stop()
    found = script_results(proc, lambda r: (r["kind"], r["workflow"]), what="the browser check")
    images = REPO / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    # Template screenshots first; the toy's end-of-run screenshot replaces its template one (not
    # from a shortened run: the docs show the template's own).
    for key in sorted(found, key=lambda k: k[0] == "run"):
        if found[key].get("shortened"):
            continue
        for shot in (found[key].get("screenshot"), found[key].get("mid_screenshot")):
            if shot and Path(shot).exists():
                shutil.copyfile(shot, images / Path(shot).name)
    return found


def layout_problems(r: dict) -> dict:
    return {k: r[k] for k in ("overlaps", "outside_window", "too_small", "unexpected_images", "wrong_size", "no_images") if r.get(k)}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_loads_and_converts_in_the_front_end(results, name):
    r = results.get(("template", name))
    assert r is not None, f"{name} was not checked"
    assert r["missing"] == [], f"node types missing in the front end: {r['missing']}"
    assert r["dialogs"] == [], r["dialogs"]
    assert r["links"] == r["expected_links"]
    assert r["api_diff"] == {} and r["extra_nodes"] == [], json.dumps(r["api_diff"], indent=1)[:4000]
    assert r["page_errors"] == [] and r["console_errors"] == [], (r["page_errors"], r["console_errors"])
    assert (REPO / "docs" / "images" / f"comfyui_{name}.png").exists()


@pytest.mark.parametrize("name", WORKFLOWS)
def test_outputs_show_whole_and_nothing_overlaps(results, name):
    r = results[("template", name)]
    assert r["images_loaded"], "the declared outputs did not show"
    assert not layout_problems(r), json.dumps({**layout_problems(r), "images": r["images"]}, indent=1)
    assert r["zoom"] == r["template_zoom"]


@pytest.mark.parametrize("name", LEGACY)
def test_workflow_saved_with_the_old_trainer_still_loads(results, name):
    r = results[("legacy", name)]
    assert r["missing"] == [] and r["dialogs"] == [] and r["page_errors"] == [] and r["console_errors"] == []
    assert r["links"] == r["expected_links"]
    assert r["api_diff"] == {} and r["extra_nodes"] == [], json.dumps(r["api_diff"], indent=1)[:4000]
    # Only inputs appended to the old Trainer after the file was saved, at their defaults.
    assert all(v == {"allow_run_changes": False, "max_bad_pair_fraction": 0.5} for v in r["added_inputs"].values()), r["added_inputs"]


@pytest.mark.skipif(not RUN, reason="FDFO_BROWSER_RUN=0")
def test_toy_template_runs_to_the_end_as_a_person_sees_it(results):
    r = results.get(("run", "fdfo_toy"))
    assert r is not None, "the toy run was not checked"
    print(f"\ntoy template: {r['run_to_last_image_s']:.0f} s from Run to the last image (clicked {r['clicked']}); "
          f"last epoch line: {r['final_text']!r}")
    assert r["finished"] and r["run_to_last_image_s"] is not None
    wanted = {k: int(os.environ[e]) for k, e in (("epochs", "FDFO_BROWSER_EPOCHS"), ("pairs_per_epoch", "FDFO_BROWSER_PAIRS"))
              if os.environ.get(e)}
    assert r["shortened"] == wanted, r["shortened"]
    assert r["page_errors"] == [] and r["console_errors"] == [], (r["page_errors"], r["console_errors"])
    # Live feedback while the Trainer runs: the epoch line (reward, epoch k of n, time left) and the
    # latest grid on the Trainer node, the reward curve and base-vs-trained views updating.
    seen = r["seen"]
    assert seen["distinct_epoch_lines"] >= 3, seen
    assert any("reward" in line and "left" in line for line in seen["epoch_lines"]), seen
    assert seen["trainer_images"] >= 3 and seen["curve_updates"] >= 3 and seen["compare_updates"] >= 3, seen
    # After the run the Trainer keeps its summary (its ui.text, web/fdfo_trainer.js): the last epoch
    # line, done, and the LoRA, in place of the progress text (front end 1.58 removes that one).
    assert r["final_text"] and r["final_text"].split("\n")[0].endswith("· done"), r["final_text"]
    epochs = wanted.get("epochs", 40)
    assert r["final_text"].startswith(f"epoch {epochs}/{epochs} · reward "), r["final_text"]
    assert "fdfo_toy.safetensors" in r["final_text"] and "run folder" in r["final_text"], r["final_text"]
    assert r["progress_text_after_run"] is None, r["progress_text_after_run"]
    # At the end: every output whole, at its natural size, nothing overlapping, all in the window.
    assert not layout_problems(r), json.dumps({**layout_problems(r), "images": r["images"]}, indent=1)
    assert (REPO / "docs" / "images" / "comfyui_fdfo_toy.png").exists()
