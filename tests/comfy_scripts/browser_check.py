"""The example workflows in the ComfyUI front end in Debian's chromium, as a person uses them.

    <comfyui python> tests/comfy_scripts/browser_check.py SERVER_URL SERVER_BASE_DIR SCREENSHOT_DIR [--no-run]

Needs the playwright Python package (no downloaded browser: /usr/bin/chromium). Window 1700 x 1000.
Prints one `RESULT <json>` line per check.

For every workflow in example_workflows/ (kind "template"): load it as the Templates menu does
(fetch /api/workflow_templates/<pack>/<name>.json, then `app.loadGraphData`); check that every
node type is registered, no "missing nodes" dialog opened, every link survived, and the front
end's own `app.graphToPrompt` gives exactly the API-format copy in workflows/api/. Then the
outputs a run would show arrive (an "executed" message per image node with images of the sizes
the workflow declares in extra.fdfo_layout, and the Trainer's progress text), and at the
template's own zoom: no two nodes overlap, every node is inside the window and under none of the
front end's bars and buttons (what is on screen at its corners, edges and centre), and every image
shows whole at no less than its declared scale (1 = pixel for pixel). A screenshot of the
window goes to SCREENSHOT_DIR/comfyui_<name>.png.

Then (kind "run", unless --no-run) the toy template runs to the end as a person runs it: load
it, click Run, wait. During the run the Trainer's epoch line, its live image and the updates of
its reward-curve and base-vs-trained views are recorded; at the end the same layout checks run
on the real outputs (whose sizes must be the declared ones), and the window's screenshot
replaces comfyui_fdfo_toy.png. The time from the click to the last image is reported.

Finally (kind "legacy") a workflow saved with the Trainer before FDFO Training Options existed
(tests/data/legacy_workflows/) loads and converts to its saved API copy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from page_errors import ErrorLog
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
PACK = "ComfyUI-FDFO"
WINDOW = {"width": 1700, "height": 1000}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
READY = "() => window.app && window.app.graph && window.LiteGraph && window.app.extensionManager"

LOAD_TEMPLATE = """async ([name, pack]) => {
    const r = await fetch(`/api/workflow_templates/${pack}/${name}.json`);
    const wf = await r.json();
    await window.app.loadGraphData(wf, true, true, name);
    return wf;
}"""

LOAD_JSON = """async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }"""

INSPECT = """async (wf) => {
    const app = window.app;
    const registered = window.LiteGraph.registered_node_types;
    const missing = wf.nodes.filter(n => !registered[n.type]).map(n => n.type);
    const nodes = app.graph._nodes.map(n => ({id: n.id, type: n.type}));
    const links = Object.keys(app.graph.links instanceof Map ? Object.fromEntries(app.graph.links) : app.graph.links).length;
    const dialogs = Array.from(document.querySelectorAll('.p-dialog, .comfy-modal'))
        .filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 300));
    const p = await app.graphToPrompt();
    return {missing, nodes, links, dialogs, output: p.output};
}"""

# Geometry as the front end draws it: node boxes (title bar included; LiteGraph's boundingRect),
# and for each node with images the scale at which renderPreview draws them.
GEOMETRY = """() => {
    const app = window.app, ds = app.canvas.ds, LG = window.LiteGraph;
    const sizeText = app.extensionManager.setting.get('Comfy.Node.AllowImageSizeDraw') ? 15 : 0;
    const canvasRect = app.canvas.canvas.getBoundingClientRect();
    function grid(imgs, dw, dh) {  // the front end's calculateImageGrid: the scale of a batch
        let best = 0, scale = 0;
        const w = imgs[0].naturalWidth, h = imgs[0].naturalHeight;
        for (let c = 1; c <= imgs.length; c++) {
            const r = Math.ceil(imgs.length / c);
            const s = Math.min(dw / c / w, dh / r / h, 1);
            const area = w * s * h * s * imgs.length;
            if (area > best) { best = area; scale = s; }
        }
        return scale;
    }
    const nodes = app.graph._nodes.map(n => {
        const b = n.boundingRect;
        const out = {id: n.id, type: n.type, title: n.title, box: [b[0], b[1], b[2], b[3]], collapsed: !!(n.flags && n.flags.collapsed)};
        out.screen = [canvasRect.left + (b[0] + ds.offset[0]) * ds.scale, canvasRect.top + (b[1] + ds.offset[1]) * ds.scale,
                      b[2] * ds.scale, b[3] * ds.scale];
        const imgs = (n.imgs || []).filter(i => i.naturalWidth > 0);
        if (imgs.length) {
            const w = (n.widgets || []).find(w => w.name === '$$canvas-image-preview');
            const top = w ? (w.y ?? w.last_y) : 0;
            const dw = n.size[0], dh = n.size[1] - top - sizeText;
            const same = imgs.every(i => i.naturalWidth * imgs[0].naturalHeight === i.naturalHeight * imgs[0].naturalWidth);
            const scale = imgs.length === 1 ? Math.min(dw / imgs[0].naturalWidth, dh / imgs[0].naturalHeight, 1)
                : (same ? grid(imgs, dw, dh) : null);
            out.images = imgs.map(i => [i.naturalWidth, i.naturalHeight]);
            out.image_area = [dw, dh];
            out.image_top = top;
            out.scale = scale;
        }
        const text = (n.widgets || []).find(w => w.name === '$$node-text-preview');
        if (text) out.text = String(text.value);
        const summary = (n.widgets || []).find(w => w.name === 'fdfo_summary');  // web/fdfo_trainer.js
        if (summary) out.summary = String(summary.value);
        // What a person sees at the box's corners, edges and centre: the canvas (or the node's own
        // DOM widgets), not the front end's bars, menus and buttons laid over the canvas.
        const [sx, sy, sw, sh] = out.screen, covered = new Set();
        for (const fx of [0, 0.5, 1]) for (const fy of [0, 0.5, 1]) {
            const x = sx + 1 + fx * (sw - 2), y = sy + 1 + fy * (sh - 2);
            const el = document.elementFromPoint(x, y);
            if (el === app.canvas.canvas) continue;
            if (el && el.closest('.dom-widget, .comfy-multiline-input, [data-node-id], .lg-node')) continue;
            covered.add(el ? el.tagName.toLowerCase() + (typeof el.className === 'string' && el.className
                ? '.' + el.className.trim().split(/\s+/).slice(0, 2).join('.') : '') : 'outside the window');
        }
        out.covered_by = [...covered];
        return out;
    });
    return {zoom: ds.scale, offset: [...ds.offset], canvas: [canvasRect.left, canvasRect.top, canvasRect.right, canvasRect.bottom], nodes};
}"""

# The progress text first (as during the run), then the outputs; a node's `ui.text` (the Trainer's
# summary, which replaces its progress text at the end) comes with its images.
SEND_OUTPUTS = """([outputs, texts, summaries]) => {
    const api = window.app.api;
    for (const [id, text] of Object.entries(texts)) {
        api.dispatchCustomEvent('progress_text', {nodeId: id, text});
    }
    for (const id of new Set([...Object.keys(outputs), ...Object.keys(summaries)])) {
        const output = {images: outputs[id] || []};
        if (summaries[id]) output.text = [summaries[id]];
        api.dispatchCustomEvent('executed', {node: id, display_node: id, prompt_id: 'layout-check', output});
    }
}"""

# Node images are created when the canvas draws: ask for a redraw while waiting.
IMAGES_LOADED = """(ids) => {
    window.app.graph.setDirtyCanvas(true, true);
    return ids.every(id => {
        const n = window.app.graph.getNodeById(Number(id));
        return n && n.imgs && n.imgs.length && n.imgs.every(i => i.complete && i.naturalWidth > 0);
    });
}"""

# FDFO_BROWSER_EPOCHS / FDFO_BROWSER_PAIRS: a shorter toy run (set on the Trainer's widgets before
# Run, as a person would type them); the template's own 40 x 32 when unset.
SHORT_RUN = {k: int(v) for k, v in (("epochs", os.environ.get("FDFO_BROWSER_EPOCHS")),
                                    ("pairs_per_epoch", os.environ.get("FDFO_BROWSER_PAIRS"))) if v}
SET_WIDGETS = """([id, values]) => {
    const n = window.app.graph.getNodeById(Number(id)), set = {};
    for (const [name, value] of Object.entries(values)) {
        const w = (n.widgets || []).find(w => w.name === name);
        if (w) { w.value = value; w.callback?.(value); set[name] = w.value; }
    }
    window.app.graph.setDirtyCanvas(true, true);
    return set;
}"""

# What a person sees of the Trainer and its views during the run.
WATCH = """(ids) => {
    const g = window.app.graph, get = id => g.getNodeById(Number(id));
    const t = get(ids.trainer);
    const widget = name => ((t && t.widgets) || []).find(w => w.name === name);
    const text = widget('$$node-text-preview'), summary = widget('fdfo_summary');
    const imgs = n => (n && n.imgs ? n.imgs.filter(i => i.naturalWidth > 0).map(i => i.src) : []);
    return {text: text ? String(text.value) : (summary ? String(summary.value) : null),
            trainer: imgs(t), curve: imgs(get(ids.curve)), compare: imgs(get(ids.compare))};
}"""


# Notices a person closes (front end 1.58: "fdfo_toy.safetensors is missing", "4 issues found" for
# model files this test ComfyUI lacks): closed before the layout is measured, their texts reported.
DISMISS_NOTICES = """() => {
    const closed = [];
    for (const box of document.querySelectorAll('[role=status], .p-toast-message')) {
        const r = box.getBoundingClientRect();
        if (!r.width || !r.height) continue;
        const close = Array.from(box.querySelectorAll('button')).find(b => !b.textContent.trim()
            || /close|dismiss/i.test(b.getAttribute('aria-label') || ''));
        if (close) { closed.push(box.innerText.slice(0, 200)); close.click(); }
    }
    return closed;
}"""


#: Seconds after the queue empties until the front end's completion summary (1.35 and later: "1 job
#: completed" under the Run button) has hidden itself: its timer is 6 s; the rest is margin for a
#: loaded machine.
COMPLETION_SUMMARY_S = 10.0


def dismiss_notices(page) -> list[str]:
    closed = page.evaluate(DISMISS_NOTICES)
    if closed:
        time.sleep(0.5)
    return closed


def check_layout(geom: dict, layout: dict, exact_sizes: bool) -> dict:
    """Overlaps, nodes outside the window, images shown below their declared scale (or of other
    sizes than declared, when the outputs are real)."""
    nodes = geom["nodes"]
    overlaps = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax, ay, aw, ah = a["box"]
            bx, by, bw, bh = b["box"]
            w = min(ax + aw, bx + bw) - max(ax, bx)
            h = min(ay + ah, by + bh) - max(ay, by)
            if w > 0.5 and h > 0.5:
                overlaps.append([a["title"], b["title"], round(w), round(h)])
    cx0, cy0, cx1, cy1 = geom["canvas"]
    # Outside the canvas, or under something the front end lays over it (menu bar, side bar, buttons).
    outside = [[n["title"] or n["type"], *n["covered_by"]] for n in nodes
               if n["screen"][0] < cx0 - 0.5 or n["screen"][1] < cy0 - 0.5
               or n["screen"][0] + n["screen"][2] > cx1 + 0.5 or n["screen"][1] + n["screen"][3] > cy1 + 0.5
               or n["covered_by"]]
    images, too_small, unexpected, wrong_size = {}, [], [], []
    for n in nodes:
        if "images" not in n:
            continue
        spec = layout.get(str(n["id"]))
        images[n["title"]] = {"images": n["images"][:2] + ([f"... {len(n['images'])}"] if len(n["images"]) > 2 else []),
                              "area": [round(v) for v in n["image_area"]], "scale": n["scale"]}
        if spec is None:
            unexpected.append(n["title"])
            continue
        if n["scale"] is None or n["scale"] < spec["min_scale"] - 1e-6:
            too_small.append([n["title"], n["scale"], spec["min_scale"]])
        if exact_sizes and sorted(map(tuple, n["images"])) != sorted(map(tuple, spec["images"])):
            wrong_size.append([n["title"], n["images"][:3], spec["images"][:3]])
    missing = [k for k in layout if not any(str(n["id"]) == k and "images" in n for n in nodes)]
    return {"overlaps": overlaps, "outside_window": outside, "images": images, "too_small": too_small,
            "unexpected_images": unexpected, "wrong_size": wrong_size, "no_images": missing, "zoom": geom["zoom"]}


def make_images(base: Path, sizes: set[tuple[int, int]]) -> dict[tuple[int, int], dict]:
    """PNGs of the given sizes in the server's temp folder, as ComfyUI's image records."""
    from PIL import Image, ImageDraw

    folder = base / "temp" / "fdfo_layout_check"
    folder.mkdir(parents=True, exist_ok=True)
    records = {}
    for w, h in sizes:
        name = f"{w}x{h}.png"
        img = Image.new("RGB", (w, h), (70, 110, 160))
        ImageDraw.Draw(img).rectangle([0, 0, w - 1, h - 1], outline=(255, 255, 255))
        img.save(folder / name)
        records[(w, h)] = {"filename": name, "subfolder": "fdfo_layout_check", "type": "temp"}
    return records


def open_page(pw, url: str):
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport=WINDOW)
    errors = ErrorLog(page)
    page.goto(url)
    page.wait_for_function(READY, timeout=120000)
    time.sleep(2)
    # First-run tutorial off; the minimap (a floating overview a person can close) off.
    page.evaluate("""async () => {
        const s = window.app.extensionManager.setting;
        for (const [k, v] of [['Comfy.TutorialCompleted', true], ['Comfy.Minimap.Visible', false]]) {
            try { await s.set(k, v); } catch (e) {}
        }
    }""")
    page.reload()  # settings are stored per user on the server; reloading keeps the template dialog closed
    page.wait_for_function(READY, timeout=120000)
    time.sleep(2)
    return browser, page, errors


def reported_errors(errors: ErrorLog) -> dict:
    """Our uncaught exceptions and console errors (the tests want none), and the front end's own."""
    return {"page_errors": errors.ours("exception")[:5], "console_errors": errors.ours("console")[:5],
            "frontend_errors": errors.others()}


def close_dialogs(page) -> None:
    for _ in range(2):
        page.keyboard.press("Escape")


def trainer_ids(wf: dict) -> dict[str, str]:
    """The Trainer node and the preview nodes wired to its reward_curve (slot 2) and preview (slot 3)."""
    trainer = next(n for n in wf["nodes"] if n["type"] == "FDFOTrainerV2")
    ids = {"trainer": str(trainer["id"])}
    for link_id, src, slot, dst, _, _ in wf["links"]:
        if src == trainer["id"] and slot in (2, 3):
            ids["curve" if slot == 2 else "compare"] = str(dst)
    return ids


def check_template(page, errors, base: Path, shots: Path, wf_path: Path) -> dict:
    name = wf_path.stem
    api = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    close_dialogs(page)
    errors.clear()
    wf = page.evaluate(LOAD_TEMPLATE, [name, PACK])
    time.sleep(0.8)
    res = page.evaluate(INSPECT, wf)
    diff = {}
    for key, node in api.items():
        got = res["output"].get(key)
        if got is None or got["class_type"] != node["class_type"] or got["inputs"] != node["inputs"]:
            diff[key] = {"expected": node, "frontend": got}
    extra = sorted(set(res["output"]) - set(api))
    # The outputs a run would show, at the sizes the workflow declares.
    layout = wf.get("extra", {}).get("fdfo_layout", {})
    records = make_images(base, {tuple(s) for spec in layout.values() for s in spec["images"]})
    outputs = {k: [records[tuple(s)] for s in spec["images"]] for k, spec in layout.items()}
    texts, summaries = {}, {}
    if any(n["type"] == "FDFOTrainerV2" for n in wf["nodes"]):
        trainer = trainer_ids(wf)["trainer"]
        texts[trainer] = ("epoch 99/100 · reward 22.1234 ± 1.2345 · about 8 s left\n"
                          "sampling pairs 12/32")
        summaries[trainer] = ("epoch 100/100 · reward 22.1234 ± 1.2345 · done\n"
                              "LoRA a_long_lora_name.safetensors (100/100 epochs) in /ComfyUI/models/loras; run folder "
                              "/ComfyUI/output/fdfo/a_long_lora_name. Last epoch: ...\nOutput: the last LoRA "
                              "a_long_lora_name.safetensors.")
    loaded = False
    for _ in range(3):  # the first workflow of a fresh page may miss the first messages
        page.evaluate(SEND_OUTPUTS, [outputs, texts, summaries])
        try:
            page.wait_for_function(IMAGES_LOADED, arg=list(outputs), timeout=15000)
            loaded = True
            break
        except Exception:
            time.sleep(1.0)
    time.sleep(1.0)
    notices = dismiss_notices(page)
    geom = page.evaluate(GEOMETRY)
    shot = shots / f"comfyui_{name}.png"
    page.screenshot(path=str(shot))
    return {"kind": "template", "workflow": name, "missing": res["missing"], "dialogs": res["dialogs"], "links": res["links"],
            "expected_links": len(wf["links"]), "api_diff": diff, "extra_nodes": extra, **reported_errors(errors),
            "nodes": len(res["nodes"]), "screenshot": str(shot), "images_loaded": loaded, "notices_closed": notices,
            "template_zoom": wf.get("extra", {}).get("ds", {}).get("scale"), **check_layout(geom, layout, exact_sizes=False)}


def click_run(page) -> str:
    """Press the front end's Run button (the Queue button of older menus); say which."""
    for selector in ("button:has-text('Run'):visible", "#queue-button:visible", "button:has-text('Queue'):visible"):
        loc = page.locator(selector)
        if loc.count():
            loc.first.click()
            return selector
    page.keyboard.press("Control+Enter")
    return "Control+Enter"


def run_toy(page, errors, server_url: str, shots: Path, timeout: float = 3000.0) -> dict:
    import urllib.request

    def queue_busy() -> bool:
        with urllib.request.urlopen(server_url + "/queue", timeout=30) as r:
            q = json.load(r)
        return bool(q["queue_running"] or q["queue_pending"])

    name = "fdfo_toy"
    close_dialogs(page)
    errors.clear()
    wf = page.evaluate(LOAD_TEMPLATE, [name, PACK])
    time.sleep(1.0)
    layout = wf["extra"]["fdfo_layout"]
    ids = trainer_ids(wf)
    shortened = page.evaluate(SET_WIDGETS, [ids["trainer"], SHORT_RUN]) if SHORT_RUN else {}
    clicked = click_run(page)
    t0 = time.monotonic()
    seen = {"epoch_lines": [], "trainer_images": 0, "curve_updates": 0, "compare_updates": 0,
            "live_image_first_s": None, "curve_before_end_s": None, "compare_before_end_s": None}
    last = {"trainer": None, "curve": None, "compare": None}
    started = False
    mid_shot = shots / "comfyui_fdfo_toy_running.png"
    while time.monotonic() - t0 < timeout:
        w = page.evaluate(WATCH, ids)
        now = round(time.monotonic() - t0, 1)
        text = w["text"] or ""
        line = text.split("\n")[0]
        running = "· done" not in text
        if "· reward" in line and (not seen["epoch_lines"] or seen["epoch_lines"][-1] != line):
            seen["epoch_lines"].append(line)
            if len(seen["epoch_lines"]) == 3:
                page.screenshot(path=str(mid_shot))
        for key, stamp in (("trainer", "live_image_first_s"), ("curve", "curve_before_end_s"), ("compare", "compare_before_end_s")):
            if w[key] and w[key][-1] != last[key]:
                last[key] = w[key][-1]
                if running:
                    seen[{"trainer": "trainer_images", "curve": "curve_updates", "compare": "compare_updates"}[key]] += 1
                    if seen[stamp] is None:
                        seen[stamp] = now
        busy = queue_busy()
        started = started or busy
        if started and not busy:
            break
        time.sleep(1.0)
    ran = started and not queue_busy()
    idle_at = time.monotonic()
    # The last image: every declared image node shows its final images.
    try:
        page.wait_for_function(IMAGES_LOADED, arg=list(layout), timeout=60000)
        done_s = time.monotonic() - t0
    except Exception:
        done_s = None
    # Well after the job ended: front end 1.58 then removes the progress texts, and the completion
    # summary that 1.35 and later show under the Run button ("1 job completed", over the canvas's
    # top-right corner) hides itself 6 s after the queue empties (its own timer; a person sees the
    # workflow without it). Measured after that, so what is left over a node is reported.
    time.sleep(max(5.0, idle_at + COMPLETION_SUMMARY_S - time.monotonic()))
    notices = dismiss_notices(page)
    geom = page.evaluate(GEOMETRY)
    shot = shots / f"comfyui_{name}.png"
    page.screenshot(path=str(shot))
    trainer = next((n for n in geom["nodes"] if str(n["id"]) == ids["trainer"]), {})
    return {"kind": "run", "workflow": name, "clicked": clicked, "shortened": shortened, "finished": ran, "run_to_last_image_s": done_s,
            "final_text": trainer.get("summary"), "progress_text_after_run": trainer.get("text"), "notices_closed": notices, **reported_errors(errors), "screenshot": str(shot),
            "mid_screenshot": str(mid_shot) if mid_shot.exists() else None, "seen": {**seen, "epoch_lines": seen["epoch_lines"][-4:],
                                                                                      "distinct_epoch_lines": len(seen["epoch_lines"])},
            **check_layout(geom, layout, exact_sizes=True)}


def check_legacy(page, errors, path: Path) -> dict:
    close_dialogs(page)
    errors.clear()
    wf = json.loads(path.read_text())
    api = json.loads(path.with_name(path.stem + ".api.json").read_text())
    page.evaluate(LOAD_JSON, [wf, path.stem])
    time.sleep(0.8)
    res = page.evaluate(INSPECT, wf)
    diff, added = {}, {}
    for key, node in api.items():
        got = res["output"].get(key) or {}
        inputs = got.get("inputs") or {}
        if got.get("class_type") != node["class_type"] or {k: inputs.get(k) for k in node["inputs"]} != node["inputs"]:
            diff[key] = {"expected": node, "frontend": got}
        extra = {k: v for k, v in inputs.items() if k not in node["inputs"]}
        if extra:  # inputs the node gained after the file was saved: the front end gives them their defaults
            added[key] = extra
    return {"kind": "legacy", "workflow": path.stem, "missing": res["missing"], "dialogs": res["dialogs"],
            "links": res["links"], "expected_links": len(wf["links"]), "api_diff": diff, "added_inputs": added,
            "extra_nodes": sorted(set(res["output"]) - set(api)), **reported_errors(errors)}


def main(argv: list[str]) -> int:
    url, base, shots = argv[0], Path(argv[1]), Path(argv[2])
    run = "--no-run" not in argv
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser, page, errors = open_page(pw, url)
        for wf_path in sorted((REPO / "example_workflows").glob("*.json")):
            print("RESULT " + json.dumps(check_template(page, errors, base, shots, wf_path)), flush=True)
        for path in sorted((REPO / "tests" / "data" / "legacy_workflows").glob("*.json")):
            if not path.name.endswith(".api.json"):
                print("RESULT " + json.dumps(check_legacy(page, errors, path)), flush=True)
        browser.close()
        if run:  # a fresh page, as a person opening ComfyUI to train
            browser, page, errors = open_page(pw, url)
            print("RESULT " + json.dumps(run_toy(page, errors, url, shots)), flush=True)
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
