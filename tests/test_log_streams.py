"""The libraries' log handlers write to the current stderr (tests/conftest.py: _CurrentStderr).

A warning logged by diffusers or transformers inside one test's `capsys` must not leave their
handler pointing at that test's closed buffer: every later warning then printed
"--- Logging error ---" and a traceback into another test's stderr, which tests that check a
command's stderr for "Traceback" read as a failure (seen under pytest-xdist)."""

import logging

import pytest


@pytest.mark.parametrize("library", ["diffusers", "transformers"])
def test_a_warning_logged_under_capsys_is_captured(library, capsys):
    logging.getLogger(f"{library}.fdfo_test").warning("first warning")
    assert "first warning" in capsys.readouterr().err


@pytest.mark.parametrize("library", ["diffusers", "transformers"])
def test_a_later_warning_goes_to_the_later_tests_stderr(library, capsys):
    # the previous test's capsys buffer is closed now
    logging.getLogger(f"{library}.fdfo_test").warning("second warning")
    err = capsys.readouterr().err
    assert "second warning" in err and "Logging error" not in err and "Traceback" not in err
