"""Prompt lists: typed text or a file from ComfyUI's input folder, and the toy world's prompt sets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..fdfo_core.files.prompts import PromptError, parse_prompt_text, read_prompts
from .common import CATEGORY, PROMPTS, PromptList

NO_FILE = "(none)"
PROMPT_FILE_SUFFIXES = (".txt", ".json")
EXAMPLE_PROMPTS = "a photo of a red fox in the snow\na watercolour painting of a lighthouse at dusk"


def _input_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_input_directory()).resolve()


def prompt_files() -> list[str]:
    """Prompt files (.txt, .json) under ComfyUI's input folder, as relative paths with '/'."""
    try:
        root = _input_dir()
    except Exception:
        return []
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.lower().endswith(PROMPT_FILE_SUFFIXES):
                found.append((Path(dirpath) / f).relative_to(root).as_posix())
    return found


def resolve_prompt_file(name: str, root: Path | None = None) -> Path:
    """The file `name` inside the input folder; anything outside it (.., absolute paths, symlinks
    leading out) is refused."""
    root = (root or _input_dir()).resolve()
    if not name or os.path.isabs(name) or "\\" in name:
        raise PromptError(f"prompt file {name!r}: give a path relative to ComfyUI's input folder")
    path = (root / name).resolve()
    if os.path.commonpath([str(root), str(path)]) != str(root):
        raise PromptError(f"prompt file {name!r} is outside ComfyUI's input folder ({root}); put the file there")
    if path.suffix.lower() not in PROMPT_FILE_SUFFIXES:
        raise PromptError(f"prompt file {name!r}: only .txt (one prompt per line) and .json files are read")
    if not path.is_file():
        raise PromptError(f"prompt file {name!r} does not exist in ComfyUI's input folder ({root})")
    return path


def collect_prompts(text: str, file: str, root: Path | None = None) -> PromptList:
    """Typed prompts, then the file's. Both follow fdfo_core.files.text_files: a byte-order mark (also one
    pasted into the text box) is dropped, any line ends work, and a file that is not UTF-8 raises
    a TextFileError naming the file, line and column."""
    prompts = parse_prompt_text(text or "")
    if file and file != NO_FILE:
        prompts += read_prompts(resolve_prompt_file(file, root))
    if not prompts:
        raise PromptError("the prompt list is empty: write one prompt per line, or choose a prompt file from the input folder")
    return PromptList(prompts)


class FDFOPromptList:
    CATEGORY = CATEGORY
    RETURN_TYPES = (PROMPTS, "INT")
    RETURN_NAMES = ("prompts", "count")
    OUTPUT_TOOLTIPS = ("The prompts (typed lines first, then the file's).", "How many prompts there are.")
    FUNCTION = "build"
    DESCRIPTION = "A list of prompts for training, sampling or scoring: one per line (blank lines and lines starting with # are skipped), and/or a .txt/.json file from ComfyUI's input folder."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"default": EXAMPLE_PROMPTS, "multiline": True, "tooltip": "One prompt per line; # starts a comment line."}),
            "file": ([NO_FILE] + prompt_files(), {"default": NO_FILE, "tooltip": (
                "Optional prompt file in ComfyUI's input folder: .txt with one prompt per line, or .json with a list "
                "of strings (or of objects with a 'prompt' field). Its prompts follow the typed ones.")}),
        }}

    @classmethod
    def IS_CHANGED(cls, text, file):
        if not file or file == NO_FILE:
            return text
        try:
            data = resolve_prompt_file(file).read_bytes()
        except Exception as e:  # reported properly when the node runs
            return f"error {e}"
        return text + hashlib.sha256(data).hexdigest()

    def build(self, text, file):
        prompts = collect_prompts(text, file)
        return (prompts, len(prompts))


class FDFOToyPrompts:
    CATEGORY = f"{CATEGORY}/toy"
    RETURN_TYPES = (PROMPTS, "INT")
    RETURN_NAMES = ("prompts", "count")
    OUTPUT_TOOLTIPS = ("Distinct toy captions.", "How many there are.")
    FUNCTION = "build"
    DESCRIPTION = "Captions of the toy world (coloured shapes), deterministic by seed: 'train' captions for training, 'heldout' scenes the toy model never saw, to check generalisation."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "count": ("INT", {"default": 256, "min": 1, "max": 100000, "tooltip": "Number of distinct captions."}),
            "split": (["train", "heldout"], {"default": "train", "tooltip": "train: scenes seen in pretraining; heldout: scenes it never saw."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False, "tooltip": "Which captions are drawn."}),
        }}

    def build(self, count, split, seed):
        from ..fdfo_core.toy import toy_prompt_sets

        train, heldout = toy_prompt_sets(count if split == "train" else 0, count if split == "heldout" else 0, seed=seed)
        prompts = PromptList(train if split == "train" else heldout)
        return (prompts, len(prompts))


NODES = {
    "FDFOPromptList": (FDFOPromptList, "FDFO Prompt List"),
    "FDFOToyPrompts": (FDFOToyPrompts, "FDFO Toy Prompts"),
}
