"""One gesture, one pick, for the pair the person saw: the FDFO picking panel in a real ComfyUI and
a real browser (needs COMFYUI_ROOT, /usr/bin/chromium and playwright in COMFYUI_PYTHON; no
training: a test-only extension, tests/comfy_scripts/picks_round_node, opens rounds of coloured
pairs on the pack's picking hub). The scenarios are tests/comfy_scripts/pick_gestures_browser.py's:
a held key's auto-repeat, a double click, Space released on a focused button, an answer while the
next pair's images load or after they failed, and two tabs on one round.

Firefox: Debian's firefox-esr (ESR 140) is driven through WebDriver BiDi by playwright 1.55 only
(playwright's own Firefox build cannot be downloaded here, and later playwright versions need a
newer Firefox). Set FDFO_FIREFOX_PYTHON to a python with playwright==1.55.0 to run every scenario
in Firefox too: `python3 -m venv /tmp/pwff && /tmp/pwff/bin/pip install playwright==1.55.0`,
`apt-get install firefox-esr`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from comfy_scripts.browser_env import COMFYUI_ROOT, PYTHON, browser_skips
from comfy_scripts.server import ComfyServer
from comfy_scripts.results import script_results

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "comfy_scripts"
FIREFOX_PYTHON = os.environ.get("FDFO_FIREFOX_PYTHON")
BROWSERS = ["chromium"] + (["firefox"] if FIREFOX_PYTHON and os.path.exists("/usr/bin/firefox-esr") else [])

pytestmark = [
    pytest.mark.browser,
    *browser_skips("test the picking panel's gestures in the front end"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("pick_gestures")
    server = ComfyServer(COMFYUI_ROOT, PYTHON, base, extra_nodes=[SCRIPTS / "picks_round_node"]).start()
    found = {}
    try:
        for browser in BROWSERS:
            python = PYTHON if browser == "chromium" else FIREFOX_PYTHON
            env = dict(os.environ, HOME=os.environ.get("HOME") or "/root")
            proc = subprocess.run([python, str(SCRIPTS / "pick_gestures_browser.py"), server.url, str(base / "shots"),
                                   "--browser", browser], capture_output=True, text=True, timeout=900, env=env)
            found.update(script_results(proc, lambda r: (browser, r["scenario"]),
                                        what=f"the gesture script in {browser}", extra=server.log_tail()))
    finally:
        server.stop()
    return found


def result(results, browser: str, scenario: str) -> dict:
    r = results.get((browser, scenario))
    assert r is not None, f"{scenario} did not run in {browser}"
    assert "exception" not in r, r["exception"]
    assert r["page_errors"] == [] and r["console_errors"] == [], (r["page_errors"], r["console_errors"])
    print(f"\n{browser} {scenario}: answers {r['answers']} ({r['seconds']} s)")
    return r


@pytest.mark.parametrize("browser", BROWSERS)
def test_a_held_key_gives_one_pick(results, browser):
    r = result(results, browser, "auto_repeat")
    assert r["answers"] == r["expected"]


@pytest.mark.parametrize("browser", BROWSERS)
def test_a_double_click_gives_one_pick(results, browser):
    if browser == "firefox":
        pytest.skip("through WebDriver BiDi, Firefox ESR 140 reports every click with click count 1: a double click's "
                    "second click cannot be told from a deliberate click (the panel's first quarter second catches it "
                    "only when the driver delivers it in time)")
    r = result(results, browser, "double_click")
    assert r["moved_on_before_second_click"]
    assert r["answers"] == r["expected"]


@pytest.mark.parametrize("browser", BROWSERS)
def test_space_on_a_focused_button_gives_one_pick(results, browser):
    r = result(results, browser, "space_release")
    assert r["moved_on_before_release"]
    assert r["answers"] == r["expected"]


@pytest.mark.parametrize("browser", BROWSERS)
def test_no_pick_while_the_next_pair_loads_and_the_old_pair_is_not_shown(results, browser):
    r = result(results, browser, "loading")
    assert r["moved_on"]
    assert r["while_loading"] == [[0, "left"]], "a key pressed while pair 2 loaded was taken as a pick on it"
    assert not r["old_pair_visible_while_loading"], "pair 1's images stayed on screen under pair 2's prompt"
    assert r["answers"] == r["expected"]


@pytest.mark.parametrize("browser", BROWSERS)
def test_images_that_failed_say_so_and_take_no_pick(results, browser):
    r = result(results, browser, "failed")
    assert r["failed_flag"] == "1" and not r["images_visible_on_failed"]
    assert any("right image could not be loaded" in c and "missing" in c for c in r["failed_captions"]), r["failed_captions"]
    assert "no pick can be made" in r["failed_status"]
    assert r["on_failed_pair"] == [[0, "left"]]
    assert r["answers"] == r["expected"]


@pytest.mark.parametrize("browser", BROWSERS)
def test_two_tabs_never_overwrite_each_other_unseen(results, browser):
    r = result(results, browser, "two_tabs")
    assert r["tab_b_page_errors"] == [] and r["tab_b_console_errors"] == []
    # (a) a second answer for pair 1 from a tab that had not seen the first: refused, with a message
    assert r["race_answers"] == r["expected_race"]
    assert "answered in another window or tab meanwhile" in r["race_status_b"] and "not saved" in r["race_status_b"]
    # ... and changed knowingly: tab B shows tab A's pick, its change is taken, tab A is told
    assert r["b_choice_before_change"] == "left" and "it holds 'left'" in r["b_shows_before_change"]
    assert r["change_answers"] == r["expected_change"]
    assert "your pick 'left' was changed to 'right' in another window" in r["a_told"]
    # (b) tab B heard of tab A's pick on the pair it showed: it moved on, its key picked the next pair
    assert r["b_moved_on"] and "picked in another window" in r["b_status_moved_on"]
    assert r["answers"] == r["expected"]
