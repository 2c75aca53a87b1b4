"""Load every example workflow into the ComfyUI front end in Debian's chromium, as a user would.

    <comfyui python> tests/comfy_scripts/browser_check.py SERVER_URL SCREENSHOT_DIR

Needs the playwright Python package (no downloaded browser: /usr/bin/chromium). For each
workflow in example_workflows/: `app.loadGraphData` (what dropping the file on the canvas calls),
then checks that every node type is registered, that no "missing nodes" dialog opened, that every
link survived, and converts the graph with the front end's own `app.graphToPrompt`, which must
give exactly the API-format copy in workflows/api/. Saves a screenshot of the fitted graph per
workflow. Prints one `RESULT <json>` line per workflow.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

LOAD = """async ([wf, name]) => {
    const app = window.app;
    await app.loadGraphData(wf, true, true, name);
    await new Promise(r => setTimeout(r, 500));
    const registered = window.LiteGraph.registered_node_types;
    const missing = wf.nodes.filter(n => !registered[n.type]).map(n => n.type);
    const nodes = app.graph._nodes.map(n => ({id: n.id, type: n.type, has_errors: !!n.has_errors}));
    const links = Object.keys(app.graph.links instanceof Map ? Object.fromEntries(app.graph.links) : app.graph.links).length;
    const dialogs = Array.from(document.querySelectorAll('.p-dialog, .comfy-modal'))
        .filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 300));
    const p = await app.graphToPrompt();
    return {missing, nodes, links, dialogs, output: p.output};
}"""


GRAPH_BOUNDS = """() => {
    // The nodes' bounding box on screen (canvas coordinates -> CSS pixels), with a margin.
    const app = window.app, ds = app.canvas.ds, title = window.LiteGraph.NODE_TITLE_HEIGHT;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of app.graph._nodes) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const r = app.canvas.canvas.getBoundingClientRect(), m = 16;
    const x = Math.max(r.left, r.left + (x0 + ds.offset[0]) * ds.scale - m);
    const y = Math.max(r.top, r.top + (y0 + ds.offset[1]) * ds.scale - m);
    const w = Math.min(r.right - x, (x1 - x0) * ds.scale + 2 * m), h = Math.min(r.bottom - y, (y1 - y0) * ds.scale + 2 * m);
    return {x, y, width: w, height: h};
}"""


def main(url: str, shots: Path) -> int:
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000}, device_scale_factor=2)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && window.app.extensionManager", timeout=120000)
        time.sleep(2)
        page.evaluate("""async () => {
            const s = window.app.extensionManager.setting;
            const settings = [['Comfy.Minimap.Visible', false], ['Comfy.TutorialCompleted', true],
                              ['LiteGraph.Canvas.MinFontSizeForLOD', 1], ['LiteGraph.Canvas.LowQualityRenderingZoomThreshold', 0.1],
                              ['Comfy.Graph.CanvasMenu', false], ['Comfy.Graph.CanvasInfo', false]];
            for (const [k, v] of settings) {
                try { await s.set(k, v); } catch (e) {}
            }
        }""")
        # Settings are stored per user on the server; reload so the first-run template dialog stays closed.
        page.reload()
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && window.app.extensionManager", timeout=120000)
        time.sleep(2)
        for wf_path in sorted((REPO / "example_workflows").glob("*.json")):
            name = wf_path.stem
            wf = json.loads(wf_path.read_text())
            api = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
            for _ in range(2):  # close anything left open (a first-run dialog, a previous workflow's)
                page.keyboard.press("Escape")
            errors.clear()
            res = page.evaluate(LOAD, [wf, name])
            expected_links = len(wf["links"])
            diff = {}
            for key, node in api.items():
                got = res["output"].get(key)
                if got is None or got["class_type"] != node["class_type"] or got["inputs"] != node["inputs"]:
                    diff[key] = {"expected": node, "frontend": got}
            extra = sorted(set(res["output"]) - set(api))
            page.evaluate("() => { window.app.canvas.show_info = false; window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
            time.sleep(0.8)
            shot = shots / f"comfyui_{name}.png"
            page.screenshot(path=str(shot), clip=page.evaluate(GRAPH_BOUNDS))
            ok = not res["missing"] and not res["dialogs"] and res["links"] == expected_links and not diff and not extra \
                and not errors
            print("RESULT " + json.dumps({
                "workflow": name, "ok": ok, "missing": res["missing"], "dialogs": res["dialogs"], "links": res["links"],
                "expected_links": expected_links, "api_diff": diff, "extra_nodes": extra, "page_errors": errors[:5],
                "nodes": len(res["nodes"]), "screenshot": str(shot),
            }), flush=True)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
