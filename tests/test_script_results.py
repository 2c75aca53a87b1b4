"""The one parser of the ComfyUI scripts' `RESULT <json>` lines (tests/comfy_scripts/results.py)."""

import subprocess

import pytest

from comfy_scripts.results import parse_results, script_results


def finished(stdout: str, rc: int = 0) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(["script"], rc, stdout=stdout, stderr="a traceback")


def test_results_are_read_keyed_and_other_lines_ignored():
    out = 'loading\nRESULT {"check": "a", "ok": true}\n  RESULT {"check": "indented"}\nRESULT {"check": "b", "ok": false}\n'
    assert [r["check"] for r in parse_results(out)] == ["a", "b"]
    assert set(script_results(finished(out), "check")) == {"a", "b"}
    assert set(script_results(finished(out), lambda r: ("x", r["check"]))) == {("x", "a"), ("x", "b")}
    assert script_results(finished(out))[1]["ok"] is False


def test_no_result_fails_with_the_exit_status_and_output():
    with pytest.raises(pytest.fail.Exception) as e:
        script_results(finished("only noise\n", rc=3), "check", what="the node script", extra="server log")
    assert "the node script printed no result (exit 3)" in str(e.value) and "a traceback" in str(e.value)
    assert "server log" in str(e.value)


def test_a_broken_result_line_is_named():
    with pytest.raises(ValueError, match="not JSON"):
        parse_results('RESULT {"check": \n')
