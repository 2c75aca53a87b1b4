"""Reading prompt lists (one prompt per line, or a JSON list).

Files go through `fdfo_core.files.text_files`: UTF-8 with or without a byte-order mark, any line ends;
undecodable bytes raise a `TextFileError` (a ValueError) naming the file, line and column.
"""

from __future__ import annotations

from pathlib import Path

from .text_files import clean_line, parse_lines, read_json_file, read_text_file


class PromptError(ValueError):
    """A prompt list is missing, empty or malformed; the message says what to do."""


def clean_prompt(prompt: str) -> str:
    """A prompt without surrounding whitespace and without stray byte-order marks (U+FEFF)."""
    return clean_line(prompt)


def parse_prompt_text(text: str) -> list[str]:
    """One prompt per line (any line ends); blank lines and lines starting with '#' are skipped,
    byte-order marks (U+FEFF, e.g. pasted from a file saved with one) are removed."""
    return parse_lines(text, comments=True)


def read_prompts(path: str | Path, what: str = "prompts file") -> list[str]:
    """Prompts from a .txt file (one per line) or a .json file (a list of strings, or of objects
    with a "prompt" field).

    Raises PromptError for a missing, empty or malformed list and `TextFileError` for a file that
    is not UTF-8 or not valid JSON (both ValueErrors whose message says what to do).
    """
    path = Path(path)
    if not path.exists():
        raise PromptError(f"{what} {path} does not exist; give a text file with one prompt per line")
    if path.is_dir():
        raise PromptError(f"{path} is a folder; give a text file with one prompt per line")
    if path.suffix.lower() == ".json":
        data = read_json_file(path, what)
        if not isinstance(data, list):
            raise PromptError(f"{path} must hold a JSON list of prompts")
        prompts = [d["prompt"] if isinstance(d, dict) and "prompt" in d else d for d in data]
        if not all(isinstance(p, str) for p in prompts):
            raise PromptError(f"{path}: every entry must be a string or an object with a 'prompt' string")
        prompts = [clean_prompt(p) for p in prompts]
        prompts = [p for p in prompts if p]
    else:
        prompts = parse_prompt_text(read_text_file(path, what))
    if not prompts:
        raise PromptError(f"{what} {path} has no prompts; write one prompt per line")
    return prompts
