"""Reading prompt lists (one prompt per line, or a JSON list)."""

from __future__ import annotations

import json
from pathlib import Path


class PromptError(ValueError):
    """A prompt list is missing, empty or malformed; the message says what to do."""


def parse_prompt_text(text: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt file (one per line) or a .json file (a list of strings, or of objects
    with a "prompt" field)."""
    path = Path(path)
    if not path.exists():
        raise PromptError(f"prompts file {path} does not exist; give a text file with one prompt per line")
    if path.is_dir():
        raise PromptError(f"{path} is a folder; give a text file with one prompt per line")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PromptError(f"{path} is not valid JSON ({e}); give a list of prompt strings") from e
        if not isinstance(data, list):
            raise PromptError(f"{path} must hold a JSON list of prompts")
        prompts = [d["prompt"] if isinstance(d, dict) and "prompt" in d else d for d in data]
        if not all(isinstance(p, str) for p in prompts):
            raise PromptError(f"{path}: every entry must be a string or an object with a 'prompt' string")
        prompts = [p.strip() for p in prompts if p.strip()]
    else:
        prompts = parse_prompt_text(text)
    if not prompts:
        raise PromptError(f"prompts file {path} has no prompts; write one prompt per line")
    return prompts
