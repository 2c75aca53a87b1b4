"""One gesture, one pick: the FDFO picking panel worked the ways that give extra or misplaced picks
in pairwise-rating pages, in the real ComfyUI front end.

    <python with playwright> tests/comfy_scripts/pick_gestures_browser.py SERVER_URL OUT_DIR [--browser chromium|firefox] [--only NAME]

The server must have the test round fixture (tests/comfy_scripts/picks_round_node) linked in: each
scenario opens a round of 4 coloured pairs through it (no training), works the panel, and reads
every answer the session took. Prints one `RESULT <json>` line per scenario:
{"scenario", "browser", "answers": [[index, choice], ...], "choices", ... what the scenario saw,
 "page_errors": errors of this package's code, "console_errors": console errors of this package
 (its script, its routes)}.

Scenarios (what a person does -> what must be recorded):
- auto_repeat: holds "2" for half a second (keydown events with `repeat`) -> one "right" on pair 1.
- double_click: double-clicks "left is better"; the panel has moved on to pair 2 before the second
  click -> one "left" on pair 1. (Through WebDriver BiDi, Firefox ESR 140 reports every click with
  detail 1, so there a double click cannot be made: the test skips it.)
- space_release: tabs to "right is better" and presses Space ("the same"), holding it 0.2 s -> one
  "equal" on pair 1 (not also "right" on pair 2 when the key comes up). Firefox has fired a focused
  button's click when Space comes up even after keydown's default was prevented; neither Chromium
  nor Firefox ESR 140 does here, so this scenario emulates it: a click on the focused element just
  after the key-up (`EMULATE_SPACE_CLICK`, installed before the page's scripts).
- loading: pair 2's images are slow to come; the person presses "2" while they load (pair 1 was
  on screen) -> no pick until pair 2 shows; then "2" -> "left" on 1, "right" on 2 only. Whether the
  old pair stayed on screen while the new one loaded is reported (`old_pair_visible_while_loading`).
- failed: pair 2's right image is missing on the server -> the panel says it could not be loaded,
  keys and buttons take no pick on it; pair 3 is picked after moving on.
- two_tabs: two tabs on one round. (a) Tab B has not heard of tab A's pick on pair 1 yet (its
  websocket held back) and answers pair 1 -> refused with a message, A's pick kept; B then changes
  it knowingly (it shows A's pick) and A is told. (b) B has heard of A's pick -> B moves on, and its
  next key picks pair 2.
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
READY = "() => window.app && window.app.graph && window.fdfoPickPanel"
# A browser that clicks the focused button when Space comes up, whatever the page did with the key
# (on only while window.__fdfoEmulateSpaceClick is set).
EMULATE_SPACE_CLICK = """window.addEventListener('keyup', (e) => {
    if (e.key !== ' ' || !window.__fdfoEmulateSpaceClick) return;
    const target = document.activeElement;
    if (target && target.tagName === 'BUTTON') setTimeout(() => target.click(), 0);
}, true);"""
SCENARIOS = ("auto_repeat", "double_click", "space_release", "loading", "failed", "two_tabs")


def launch(pw, which: str):
    if which == "chromium":
        return pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
    if which == "firefox":
        # Debian's Firefox ESR speaks WebDriver BiDi only; playwright's own firefox type needs its patched
        # build (downloaded, not available here). Playwright 1.55 has a BiDi Firefox type, reachable only
        # through its private channel object (later versions need a Firefox newer than ESR 140).
        from playwright._impl._connection import from_channel
        from playwright.sync_api import BrowserType

        impl = from_channel(pw._impl_obj._initializer["_bidiFirefox"])
        impl._playwright = pw._impl_obj
        return BrowserType(impl).launch(executable_path="/usr/bin/firefox-esr", headless=True)
    raise SystemExit(f"unknown browser {which!r}")


class Tab:
    def __init__(self, browser, url: str, hold_socket: bool = False):
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors = ErrorLog(self.page)
        self.held: list = []
        self.holding = False
        self.socket = None
        if hold_socket:
            self.page.route_web_socket(lambda u: "/ws" in u, self._socket)
        self.page.add_init_script(EMULATE_SPACE_CLICK)
        self.page.goto(url)
        self.page.wait_for_function(READY, timeout=180000)
        time.sleep(1.0)
        for _ in range(2):
            self.page.keyboard.press("Escape")

    def _socket(self, ws) -> None:
        server = ws.connect_to_server()

        def from_server(message):
            if self.holding:
                self.held.append(message)
            else:
                ws.send(message)

        server.on_message(from_server)
        ws.on_message(lambda message: server.send(message))
        self.socket = ws

    def release_socket(self) -> None:
        self.holding = False
        for message in self.held:
            self.socket.send(message)
        self.held.clear()

    def state(self) -> dict:
        return self.page.evaluate("""() => {
            const p = document.getElementById('fdfo-picks-panel');
            const vis = (id) => { const i = document.getElementById(id);
                return getComputedStyle(i).visibility !== 'hidden' && i.naturalWidth > 0; };
            return {hidden: p.hidden, round: p.getAttribute('data-round'), index: Number(p.getAttribute('data-index')),
                    loaded: p.getAttribute('data-loaded'), failed: p.getAttribute('data-failed'),
                    choice: p.getAttribute('data-choice'),
                    status: document.getElementById('fdfo-picks-status').textContent,
                    captions: Array.from(p.querySelectorAll('figcaption')).map(c => c.textContent),
                    images_visible: vis('fdfo-picks-left') || vis('fdfo-picks-right')};
        }""")

    def wait_shown(self, rid: str, index: int, timeout: float = 30000) -> None:
        """Until pair `index` of round `rid` is on screen and pickable (data-ready: a person has looked)."""
        self.page.wait_for_function(
            """([rid, index]) => { const p = document.getElementById('fdfo-picks-panel');
               return !p.hidden && p.getAttribute('data-round') === rid && Number(p.getAttribute('data-index')) === index
                      && p.getAttribute('data-loaded') === '1'
                      && (!p.hasAttribute('data-ready') || p.getAttribute('data-ready') === '1'); }""",
            arg=[rid, index], timeout=timeout)

    def wait_index(self, rid: str, index: int, timeout: float = 10000) -> bool:
        try:
            self.page.wait_for_function(
                """([rid, index]) => { const p = document.getElementById('fdfo-picks-panel');
                   return !p.hidden && p.getAttribute('data-round') === rid && Number(p.getAttribute('data-index')) === index; }""",
                arg=[rid, index], timeout=timeout)
            return True
        except Exception:
            return False

    def center(self, selector: str) -> tuple[float, float]:
        box = self.page.locator(selector).bounding_box()
        if box is None:
            raise RuntimeError(f"{selector} is not on screen: {self.state()}")
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def ours(self) -> dict:
        return {"page_errors": self.errors.ours("exception"), "console_errors": self.errors.ours("console")}


def call(page, method: str, path: str, body: dict | None = None):
    return page.evaluate("""async ([method, path, body]) => {
        const r = await fetch(path, method === 'GET' ? {} : {method, headers: {'Content-Type': 'application/json'},
                                                             body: JSON.stringify(body || {})});
        return await r.json();
    }""", [method, path, body])


def open_round(tab: Tab, pairs: int = 4, missing: list | None = None) -> str:
    return call(tab.page, "POST", "/fdfo_test/round", {"pairs": pairs, "missing": missing or []})["round"]


def answers(tab: Tab) -> dict:
    log = call(tab.page, "GET", "/fdfo_test/log")
    return {"answers": [[a["index"], a["choice"]] for a in log["answers"]], "choices": log["choices"]}


# --- the scenarios ----------------------------------------------------------------------------------


def auto_repeat(browser, url: str, tab: Tab) -> dict:
    rid = open_round(tab)
    tab.wait_shown(rid, 0)
    tab.page.keyboard.down("2")
    for _ in range(15):  # 0.5 s held: the keyboard's auto-repeat sends keydown with repeat = true
        tab.page.wait_for_timeout(33)
        tab.page.keyboard.down("2")
    tab.page.keyboard.up("2")
    tab.page.wait_for_timeout(1500)
    return {**answers(tab), "expected": [[0, "right"]]}


def double_click(browser, url: str, tab: Tab) -> dict:
    rid = open_round(tab)
    tab.wait_shown(rid, 0)
    x, y = tab.center("#fdfo-picks-panel button[data-choice=left]")
    tab.page.mouse.click(x, y)  # the double click's first click
    moved = tab.wait_index(rid, 1)
    t = tab.page.evaluate("() => performance.now()")
    tab.page.mouse.down(click_count=2)  # its second click (click count 2) lands on the next pair
    tab.page.mouse.up(click_count=2)
    after = tab.page.evaluate("(t) => performance.now() - t", t)
    tab.page.wait_for_timeout(1000)
    return {**answers(tab), "moved_on_before_second_click": moved, "second_click_ms_after_moving_on": round(after),
            "expected": [[0, "left"]]}


def space_release(browser, url: str, tab: Tab) -> dict:
    rid = open_round(tab)
    tab.wait_shown(rid, 0)
    tab.page.locator("#fdfo-picks-panel button[data-choice=right]").focus()  # reached with Tab
    tab.page.evaluate("() => { window.__fdfoEmulateSpaceClick = true; }")
    try:
        tab.page.keyboard.down(" ")
        moved = tab.wait_index(rid, 1, timeout=3000)  # held while the panel moves on
        tab.page.wait_for_timeout(200)
        tab.page.keyboard.up(" ")
        tab.page.wait_for_timeout(1000)
    finally:
        tab.page.evaluate("() => { window.__fdfoEmulateSpaceClick = false; }")
    return {**answers(tab), "moved_on_before_release": moved, "expected": [[0, "equal"]]}


def loading(browser, url: str, tab: Tab) -> dict:
    held = []

    def hold(route):
        if "index=1" in route.request.url:
            held.append(route)
        else:
            route.continue_()

    def is_image(u: str) -> bool:
        return "/fdfo/picks/image" in u

    tab.page.route(is_image, hold)
    try:
        rid = open_round(tab)
        tab.wait_shown(rid, 0)
        tab.page.keyboard.press("1")
        moved = tab.wait_index(rid, 1)
        tab.page.wait_for_timeout(300)
        during = tab.state()
        tab.page.keyboard.press("2")  # the old pair (or nothing) on screen: no pick for pair 2 yet
        tab.page.wait_for_timeout(800)
        while_loading = answers(tab)["answers"]
        for route in held:
            route.continue_()
        held.clear()
    finally:
        tab.page.unroute(is_image, hold)
    try:
        tab.wait_shown(rid, 1, timeout=10000)
    except Exception:  # reported through the answers
        pass
    tab.page.keyboard.press("2")
    tab.page.wait_for_timeout(1000)
    return {**answers(tab), "moved_on": moved, "while_loading": while_loading,
            "old_pair_visible_while_loading": during["images_visible"], "status_while_loading": during["status"],
            "expected": [[0, "left"], [1, "right"]]}


def failed(browser, url: str, tab: Tab) -> dict:
    rid = open_round(tab, missing=[[1, "right"]])
    tab.wait_shown(rid, 0)
    tab.page.keyboard.press("1")
    tab.wait_index(rid, 1)
    try:
        tab.page.wait_for_function("() => document.getElementById('fdfo-picks-panel').getAttribute('data-failed') === '1'",
                                   timeout=10000)
    except Exception:
        pass
    tab.page.wait_for_timeout(500)
    seen = tab.state()
    for key in ("1", "2", " "):
        tab.page.keyboard.press(key)
        tab.page.wait_for_timeout(300)
    for choice in ("left", "right", "equal"):
        x, y = tab.center(f"#fdfo-picks-panel button[data-choice={choice}]")
        tab.page.mouse.click(x, y)
        tab.page.wait_for_timeout(300)
    on_failed = answers(tab)["answers"]
    tab.page.keyboard.press("ArrowRight")
    tab.wait_shown(rid, 2)
    tab.page.keyboard.press("2")
    tab.page.wait_for_timeout(1000)
    return {**answers(tab), "on_failed_pair": on_failed, "failed_captions": seen["captions"], "failed_status": seen["status"],
            "failed_flag": seen["failed"], "images_visible_on_failed": seen["images_visible"],
            "expected": [[0, "left"], [2, "right"]]}


def two_tabs(browser, url: str, tab: Tab) -> dict:
    b = Tab(browser, url, hold_socket=True)
    try:
        out = {}
        # (a) B has not heard of A's pick when its person answers the same pair
        rid = open_round(tab)
        tab.wait_shown(rid, 0)
        b.wait_shown(rid, 0)
        b.holding = True
        tab.page.keyboard.press("1")
        tab.wait_index(rid, 1)
        tab.page.wait_for_timeout(300)
        b.page.keyboard.press("2")
        b.page.wait_for_timeout(1000)
        out["race_answers"] = answers(tab)["answers"]
        out["race_status_b"] = b.state()["status"]
        b.release_socket()
        b.page.wait_for_timeout(500)
        # B changes it knowingly: it shows A's pick on pair 1
        st = b.state()
        out["b_index_after_refusal"] = st["index"]
        out["b_status_before_change"] = st["status"]
        if st["index"] != 0:
            b.page.keyboard.press("Backspace")
        b.wait_shown(rid, 0)
        st = b.state()
        out["b_shows_before_change"], out["b_choice_before_change"] = st["status"], st["choice"]
        b.page.keyboard.press("2")
        b.page.wait_for_timeout(1000)
        out["change_answers"] = answers(tab)["answers"]
        out["a_told"] = tab.state()["status"]
        # (b) B heard of A's pick: it moves on, its next key is for the pair it then shows
        rid = open_round(tab)
        tab.wait_shown(rid, 0)
        b.wait_shown(rid, 0)
        tab.page.keyboard.press("1")
        tab.wait_index(rid, 1)
        out["b_moved_on"] = b.wait_index(rid, 1, timeout=5000)
        try:
            b.wait_shown(rid, 1, timeout=5000)
        except Exception:
            pass
        out["b_status_moved_on"] = b.state()["status"]
        b.page.keyboard.press("2")
        b.page.wait_for_timeout(1000)
        out.update(answers(tab))
        mine = b.ours()
        out["tab_b_page_errors"] = mine["page_errors"]
        out["tab_b_console_errors"] = [c for c in mine["console_errors"] if not EXPECTED_CONSOLE["two_tabs"](c)]
    finally:
        b.page.close()
    return {**out, "expected_race": [[0, "left"]], "expected_change": [[0, "left"], [0, "right"]],
            "expected": [[0, "left"], [1, "right"]]}


EXPECTED_CONSOLE = {
    "failed": lambda c: "/fdfo/picks/image" in c["url"] and "index=1" in c["url"] and "side=right" in c["url"],
    "two_tabs": lambda c: "/fdfo/picks/answer" in c["url"] and "409" in c["text"],
}


def main(argv: list[str]) -> int:
    url, out = argv[0], Path(argv[1])
    which = argv[argv.index("--browser") + 1] if "--browser" in argv else "chromium"
    only = argv[argv.index("--only") + 1].split(",") if "--only" in argv else list(SCENARIOS)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = launch(pw, which)
        tab = Tab(browser, url)
        for name in only:
            tab.errors.clear()
            t0 = time.monotonic()
            shot = out / f"{which}_{name}.png"
            try:
                result = globals()[name](browser, url, tab)
                tab.page.screenshot(path=str(shot))
            except Exception as e:  # reported, the other scenarios still run
                result = {"exception": f"{type(e).__name__}: {e}"[:2000]}
            finally:
                call(tab.page, "POST", "/fdfo_test/close")
            ours = tab.ours()
            # The refusals a scenario provokes on purpose (the missing image's 404, the second tab's 409).
            wanted = EXPECTED_CONSOLE.get(name)
            ours["expected_console_errors"] = [c for c in ours["console_errors"] if wanted and wanted(c)]
            ours["console_errors"] = [c for c in ours["console_errors"] if not (wanted and wanted(c))]
            print("RESULT " + json.dumps({"scenario": name, "browser": which, **result, **ours,
                                          "seconds": round(time.monotonic() - t0, 1), "screenshot": str(shot)}), flush=True)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
