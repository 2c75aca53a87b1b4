"""The same prompt means the same conditioning in both backends (issue 27 item 5): for every
family, the text the diffusers pipeline gives its tokenizers and the text the ComfyUI backend gives
ComfyUI's CLIP tokenizer (`Family.comfy_prompt`) are the family's documented ones.

Lumina 2's pipeline encodes "<system prompt> <Prompt Start> <prompt>"; ComfyUI's plain
CLIPTextEncode encodes the bare prompt and its CLIPTextEncodeLumina2 node adds the system prompt:
the ComfyUI backend encoded the bare prompt, so a LoRA trained there was trained off the text it
is used with. Families with a chat template (Qwen-Image, HunyuanImage, Z-Image, Flux.2) get the
bare prompt in ComfyUI, whose tokenizers wrap it in their template as the pipelines do: the
prompt must appear unchanged inside every text the pipeline tokenizes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from family_cases import CASES
from fdfo_core.families import get_family
from fdfo_core.families.lumina2 import SYSTEM_PROMPT, with_system_prompt

PROMPT = "a red fox in the snow"


def tokenized_texts(pipe, family, monkeypatch) -> list[str]:
    """Every text the pipeline's tokenizers are called with while the family encodes PROMPT."""
    seen: list[str] = []
    for name, tok in pipe.components.items():
        if tok is None or not hasattr(type(tok), "__call__") or not name.startswith(("tokenizer", "processor")):
            continue
        real = type(tok).__call__

        def spy(self, *args, _real=real, **kwargs):
            text = args[0] if args else kwargs.get("text", kwargs.get("text_target"))
            seen.extend([text] if isinstance(text, str) else list(text or []))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(type(tok), "__call__", spy)
    from fdfo_core.families import FamilyOptions

    case = next(c for c in CASES if c.family == family.name)
    with torch.no_grad():
        family.diffusers_encode_prompts(pipe, [PROMPT], torch.device("cpu"),
                                        family.options(FamilyOptions(case.max_sequence_length)))
    monkeypatch.undo()
    return [t for t in seen if isinstance(t, str) and t]


FAMILIES = sorted({c.family for c in CASES})


@pytest.mark.parametrize("family_name", FAMILIES)
def test_both_backends_encode_the_familys_text(family_name, tmp_path, monkeypatch, one_thread):
    family = get_family(family_name)
    case = next(c for c in CASES if c.family == family_name)
    pipe = case.pipeline(tmp_path, 0)
    texts = tokenized_texts(pipe, family, monkeypatch)
    comfy = family.comfy_prompt(PROMPT)
    assert texts, "the pipeline tokenized nothing"
    if family_name == "lumina2":
        # the pipeline: its system prompt (the tiny builder shortens it for its byte tokenizer) ...
        assert set(texts) == {with_system_prompt(PROMPT, pipe.system_prompt)}
        # ... ComfyUI: the pipeline's default one, CLIPTextEncodeLumina2's "superior"
        assert comfy == with_system_prompt(PROMPT, SYSTEM_PROMPT) != PROMPT
    else:
        # the bare prompt, inside the pipeline's template (some pipelines tokenize the template's
        # parts apart; a tiny case's text length may cut the prompt's end)
        assert comfy == PROMPT
        assert PROMPT[:16] in "".join(texts), texts
        assert "<Prompt Start>" not in "".join(texts)


def test_lumina2_system_prompt_is_the_pipelines_default():
    from diffusers import Lumina2Pipeline

    pipe = Lumina2Pipeline(transformer=None, scheduler=None, vae=None, text_encoder=None, tokenizer=None)
    assert pipe.system_prompt == SYSTEM_PROMPT


@pytest.mark.skipif(not os.environ.get("COMFYUI_ROOT"), reason="set COMFYUI_ROOT to compare with ComfyUI's Lumina 2 node")
@pytest.mark.comfyui
def test_lumina2_system_prompt_is_comfyuis_superior_choice():
    """ComfyUI's CLIPTextEncodeLumina2 (comfy_extras/nodes_lumina2.py) builds the same text."""
    source = (Path(os.environ["COMFYUI_ROOT"]) / "comfy_extras" / "nodes_lumina2.py").read_text()
    joined = "".join(part for part in source.split('"') if "assistant designed" in part or "degree of image" in part)
    assert SYSTEM_PROMPT.replace(" ", "") in joined.replace("\\", "").replace(" ", "").replace("\n", "")
    assert "{system_prompt} <Prompt Start> {user_prompt}" in source
