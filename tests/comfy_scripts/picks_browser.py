"""A scripted artist in the real ComfyUI front end (Debian's chromium): queue a training with the
FDFO Human Picks reward and pick in the FDFO picking panel by a hidden rule.

    <comfyui python> tests/comfy_scripts/picks_browser.py SERVER_URL PLAN.json OUT_DIR

PLAN: {"prompt": API graph, "ui": optional UI workflow shown on the canvas, "rule": "redder" | "bluer",
       "cancel": null | {"epoch": E, "after": K}, "finish_after": null | K, "timeout": seconds}. The artist looks only at what the panel shows: it reads the two images'
pixels in the page (a canvas), presses 1 (left) or 2 (right) for the image that follows the rule,
and waits for the panel to move on. With "cancel", it presses ComfyUI's Cancel (POST /interrupt,
what the Cancel button sends) after K picks of epoch E (0-based), while the trainer waits. With
"finish_after", it clicks "Go on without the rest" after K picks of every epoch.
Screenshots of the panel go to OUT_DIR. Prints one `RESULT <json>` line; `page_errors` are errors
raised in this package's front-end code, `frontend_errors` the stock front end's own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from page_errors import ErrorLog
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

READY = "() => window.app && window.app.graph && window.LiteGraph && window.app.extensionManager && window.fdfoPickPanel"

# What the artist sees: the panel's state and the two images' mean colours (read from the pixels).
LOOK = """() => {
    const panel = document.getElementById('fdfo-picks-panel');
    if (!panel || panel.hidden || panel.getAttribute('data-loaded') !== '1') return {visible: false};
    // pickable once the pair has been on screen a moment (the panel's data-ready)
    if (panel.hasAttribute('data-ready') && panel.getAttribute('data-ready') !== '1') return {visible: false};
    const mean = (img) => {
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        let r = 0, g = 0, b = 0;
        for (let i = 0; i < d.length; i += 4) { r += d[i]; g += d[i + 1]; b += d[i + 2]; }
        const n = d.length / 4 * 255;
        return [r / n, g / n, b / n];
    };
    const state = window.fdfoPickPanel.round;
    const index = Number(panel.getAttribute('data-index'));
    return {visible: true, round: panel.getAttribute('data-round'), index, picked: Number(panel.getAttribute('data-picked')),
            epoch: state ? state.epoch : null, pair_id: state ? state.pairs[index].pair_id : null,
            choice: state ? state.pairs[index].choice : null, total: state ? state.total : null,
            count: document.getElementById('fdfo-picks-count').textContent,
            prompt: document.getElementById('fdfo-picks-prompt').textContent,
            left: mean(document.getElementById('fdfo-picks-left')), right: mean(document.getElementById('fdfo-picks-right'))};
}"""

QUEUE = """async (prompt) => {
    const r = await fetch('/prompt', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                      body: JSON.stringify({prompt, client_id: window.app.api.clientId})});
    return {status: r.status, body: await r.json()};
}"""

HISTORY = """async (id) => { const r = await fetch('/history/' + id); return await r.json(); }"""


def score(rgb, rule: str) -> float:
    r, g, b = rgb
    if rule == "redder":
        return r - (g + b) / 2
    if rule == "bluer":
        return b - (r + g) / 2
    raise ValueError(f"unknown rule {rule!r}")


def main(url: str, plan_path: Path, out: Path) -> int:
    plan = json.loads(plan_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    rule, cancel, timeout = plan.get("rule", "redder"), plan.get("cancel"), float(plan.get("timeout", 1500))
    clicks, rounds, shots = [], {}, []
    result = {"clicks": clicks, "rounds": rounds, "screenshots": shots, "page_errors": [], "cancelled_at": None}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
        errors = ErrorLog(page)
        page.goto(url)
        page.wait_for_function(READY, timeout=120000)
        time.sleep(1)
        for _ in range(2):
            page.keyboard.press("Escape")
        if plan.get("ui"):  # the workflow on the canvas behind the panel, as the artist would have it
            page.evaluate("""async (wf) => {
                const s = window.app.extensionManager.setting;
                for (const [k, v] of [['Comfy.Minimap.Visible', false], ['Comfy.Graph.CanvasInfo', false]]) {
                    try { await s.set(k, v); } catch (e) {}
                }
                await window.app.loadGraphData(wf, true, true, 'fdfo_toy_picks');
            }""", plan["ui"])
            time.sleep(0.8)
            page.evaluate("() => { window.app.canvas.show_info = false; "
                          "window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
            time.sleep(0.8)
        q = page.evaluate(QUEUE, plan["prompt"])
        if q["status"] != 200:
            result["queue_error"] = q["body"]
            print("RESULT " + json.dumps(result), flush=True)
            return 1
        prompt_id = q["body"]["prompt_id"]
        t_start = time.monotonic()
        deadline = t_start + timeout
        last_history = 0.0
        entry = None
        while time.monotonic() < deadline:
            seen = page.evaluate(LOOK)
            if seen["visible"] and seen["choice"] is None:
                rid = seen["round"]
                info = rounds.setdefault(rid, {"epoch": seen["epoch"], "total": seen["total"], "shown": time.monotonic() - t_start,
                                               "picks": 0})
                if not shots:  # the panel as the artist first sees it
                    page.locator("#fdfo-picks-panel").screenshot(path=str(out / "picking_panel.png"))
                    page.screenshot(path=str(out / "picking_panel_canvas.png"))
                    shots.extend([str(out / "picking_panel.png"), str(out / "picking_panel_canvas.png")])
                if cancel and seen["epoch"] == cancel["epoch"] and info["picks"] >= cancel["after"] and not result["cancelled_at"]:
                    page.evaluate("async () => { await fetch('/interrupt', {method: 'POST'}); }")  # the Cancel button
                    result["cancelled_at"] = {"epoch": seen["epoch"], "picks": info["picks"], "t": time.monotonic() - t_start}
                    try:
                        page.wait_for_function("() => document.getElementById('fdfo-picks-panel').hidden", timeout=30000)
                        result["panel_closed_after_cancel"] = True
                    except Exception:
                        result["panel_closed_after_cancel"] = False
                    continue
                finish_after = plan.get("finish_after")
                if finish_after is not None and info["picks"] >= finish_after and not info.get("finished"):
                    page.click("#fdfo-picks-finish")  # "Go on without the rest"
                    info["finished"] = time.monotonic() - t_start
                    try:
                        page.wait_for_function("(rid) => { const p = document.getElementById('fdfo-picks-panel');"
                                               " return p.hidden || p.getAttribute('data-round') !== rid; }",
                                               arg=rid, timeout=30000)
                    except Exception as e:
                        result.setdefault("stalls", []).append(str(e)[:200])
                    continue
                if result["cancelled_at"]:
                    time.sleep(0.2)
                else:
                    left, right = score(seen["left"], rule), score(seen["right"], rule)
                    choice = "left" if left > right else "right"
                    page.keyboard.press("1" if choice == "left" else "2")
                    clicks.append({"epoch": seen["epoch"], "pair_id": seen["pair_id"], "choice": choice, "left": left,
                                   "right": right, "prompt": seen["prompt"], "count_before": seen["count"],
                                   "t": time.monotonic() - t_start})
                    info["picks"] += 1
                    info["last_pick"] = time.monotonic() - t_start
                    try:  # the panel moves on once the pick is saved
                        page.wait_for_function(
                            "([rid, picked]) => { const p = document.getElementById('fdfo-picks-panel');"
                            " return p.hidden || p.getAttribute('data-round') !== rid ||"
                            " Number(p.getAttribute('data-picked')) > picked; }", arg=[rid, seen["picked"]], timeout=30000)
                    except Exception as e:
                        result.setdefault("stalls", []).append(str(e)[:200])
                    continue
            if time.monotonic() - last_history > 1.0:
                last_history = time.monotonic()
                history = page.evaluate(HISTORY, prompt_id)
                if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                    st = history[prompt_id]["status"]
                    if st.get("status_str") in ("success", "error") or st.get("completed"):
                        entry = history[prompt_id]
                        break
            time.sleep(0.05)
        result["prompt_id"] = prompt_id
        result["status"] = entry["status"] if entry else None
        result["seconds"] = time.monotonic() - t_start
        result["panel_hidden_at_end"] = page.evaluate("() => document.getElementById('fdfo-picks-panel').hidden")
        # Errors raised or logged by this package's code (the panel, its routes) vs the stock front
        # end's own (v0.3.64's settings store raises once per load: Comfy.Canvas.NavigationMode's
        # onChange sets a setting that is not registered yet).
        result["frontend_errors"] = errors.others()
        result["page_errors"] = errors.ours("exception")
        result["console_errors"] = errors.ours("console")
        browser.close()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
