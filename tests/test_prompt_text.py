"""The same prompt means the same conditioning in both backends (issue 27 item 5): for every
family, the text the diffusers pipeline gives its tokenizers and the text the ComfyUI backend gives
ComfyUI's CLIP tokenizer (`Family.comfy_prompt`) are the family's documented ones.

Lumina 2's pipeline encodes "<system prompt> <Prompt Start> <prompt>"; ComfyUI's plain
CLIPTextEncode encodes the bare prompt and its CLIPTextEncodeLumina2 node adds the system prompt:
the ComfyUI backend encoded the bare prompt, so a LoRA trained there was trained off the text it
is used with. Families with a chat template (Qwen-Image, HunyuanImage, Z-Image, Flux.2) get the
bare prompt in ComfyUI, whose tokenizers wrap it in their template as the pipelines do: the
prompt must appear unchanged inside every text the pipeline tokenizes, and (with COMFYUI_ROOT and
COMFYUI_PYTHON) the tokens that reach the transformer are the same ids through the pipeline and
through ComfyUI's own tokenizer and text-encoder wrapper (tests/comfy_scripts/prompt_text_in_comfyui.py).
The table of what each family feeds: docs/families.md, "The text each backend encodes".
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


# --- side by side with ComfyUI's own text encoders (chat-template families) ------------------------

#: Prompts that exercise the templates: plain, quoted text (HunyuanImage's byT5 glyph encoder),
#: non-ASCII, and text that looks like a template marker.
SIDE_BY_SIDE_PROMPTS = ["a red fox in the snow", 'a shop sign reading "OPEN" and \u201cBIENVENUE\u201d',
                        "\u4e00\u53ea\u72d0\u72f8, a fox at dusk", "a tag that says <|im_end|> in plain text",
                        "the fox's den and the dog's bowl, a sign 'CLOSED'"]
#: HunyuanImage's byT5 glyph text differs for ASCII single quotes only (docs/families.md, "The text
#: each backend encodes"): HunyuanImagePipeline's extract_glyph_text also reads '...', which an
#: apostrophe opens too ("fox's den ... dog's" gives 's den and the dog'); ComfyUI reads "...",
#: \u2018...\u2019 and \u201c...\u201d only. Each backend keeps its own host's rule.
SINGLE_QUOTES = "'"


class IdsAsHiddenStates(torch.nn.Module):
    """A text encoder whose every hidden state is each token's id ([B, T, 1], float32: exact for
    Qwen's 151k ids), so a pipeline's prompt embeddings show which tokens reach the transformer."""

    dtype = torch.float32
    device = torch.device("cpu")

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=False, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(hidden_states=(input_ids.float()[..., None],) * 40)


def diffusers_kept_ids(family: str, prompt: str, tokenizer) -> tuple[list[int], str | None]:
    """(ids of the tokens whose hidden states the diffusers pipeline gives the transformer, the text
    it feeds its byT5 glyph encoder), with ComfyUI's Qwen vocabulary in place of the tiny one."""
    fake = IdsAsHiddenStates()
    device = torch.device("cpu")
    if family == "qwen_image":
        from diffusers import QwenImagePipeline

        pipe = QwenImagePipeline(scheduler=None, vae=None, text_encoder=fake, tokenizer=tokenizer, transformer=None)
        emb, mask = pipe.encode_prompt(prompt=[prompt], device=device, max_sequence_length=1024)
        return (emb[0, mask[0].bool(), 0] if mask is not None else emb[0, :, 0]).long().tolist(), None
    if family == "hunyuan_image":
        from diffusers import HunyuanImagePipeline
        from diffusers.pipelines.hunyuan_image.pipeline_hunyuanimage import extract_glyph_text

        pipe = HunyuanImagePipeline(scheduler=None, vae=None, text_encoder=fake, tokenizer=tokenizer,
                                    text_encoder_2=None, tokenizer_2=None, transformer=None)
        # what fdfo_core/families/hunyuan_image.py calls: the pipeline's Qwen part with its template and drop
        emb, mask = pipe._get_qwen_prompt_embeds(tokenizer=tokenizer, text_encoder=fake, prompt=[prompt], device=device,
                                                 tokenizer_max_length=1000, template=pipe.prompt_template_encode,
                                                 drop_idx=pipe.prompt_template_encode_start_idx)
        return emb[0, mask[0].bool(), 0].long().tolist(), extract_glyph_text(prompt)
    if family == "z_image":
        from diffusers import ZImagePipeline

        pipe = ZImagePipeline(scheduler=None, vae=None, text_encoder=fake, tokenizer=tokenizer, transformer=None)
        (emb,), _ = pipe.encode_prompt(prompt=[prompt], device=device, do_classifier_free_guidance=False)
        return emb[:, 0].long().tolist(), None
    raise KeyError(family)


COMFY_SIDE_BY_SIDE = ("qwen_image", "hunyuan_image", "z_image")


@pytest.fixture(scope="module")
def comfy_tokens():
    """What ComfyUI's own tokenizers and text-encoder wrappers keep of `Family.comfy_prompt(prompt)`
    for every (family, prompt): tests/comfy_scripts/prompt_text_in_comfyui.py, run once."""
    import json
    import subprocess

    if not (os.environ.get("COMFYUI_ROOT") and os.environ.get("COMFYUI_PYTHON")):
        pytest.skip("set COMFYUI_ROOT and COMFYUI_PYTHON to compare with ComfyUI's own text encoders")
    texts = {f"{f}|{i}": get_family(f).comfy_prompt(p) for f in COMFY_SIDE_BY_SIDE for i, p in enumerate(SIDE_BY_SIDE_PROMPTS)}
    script = Path(__file__).parent / "comfy_scripts" / "prompt_text_in_comfyui.py"
    run = subprocess.run([os.environ["COMFYUI_PYTHON"], str(script), os.environ["COMFYUI_ROOT"], json.dumps(texts)],
                         capture_output=True, text=True, timeout=600)
    lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.comfyui
@pytest.mark.parametrize("family", COMFY_SIDE_BY_SIDE)
def test_chat_template_families_feed_the_same_tokens_in_both_backends(family, comfy_tokens):
    """For Qwen-Image, HunyuanImage 2.1 and Z-Image: the tokens whose hidden states reach the
    transformer (template, system prompt, dropped prefix, suffix) are the same ids through the
    diffusers pipeline and through ComfyUI's tokenizer + text-encoder wrapper fed
    `Family.comfy_prompt(prompt)`, both with Qwen's real vocabulary (ComfyUI ships it); HunyuanImage's
    byT5 glyph text too."""
    import sys

    from transformers import Qwen2Tokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_pipelines import QWEN3_CHAT_TEMPLATE

    tokenizer = Qwen2Tokenizer.from_pretrained(str(Path(os.environ["COMFYUI_ROOT"]) / "comfy" / "text_encoders" / "qwen25_tokenizer"))
    # Z-Image's tokenizer is Qwen3's: its chat template (thinking on, as ZImagePipeline asks)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE if family == "z_image" else None
    if "missing" in comfy_tokens[f"{family}|0"]:
        pytest.skip(f"this ComfyUI has no {family} text encoder: {comfy_tokens[f'{family}|0']['missing']}")
    for i, prompt in enumerate(SIDE_BY_SIDE_PROMPTS):
        comfy = comfy_tokens[f"{family}|{i}"]
        kept, glyph = diffusers_kept_ids(family, prompt, tokenizer)
        assert tokenizer.decode(comfy["kept"]) == tokenizer.decode(kept), prompt
        assert comfy["kept"] == kept, prompt
        assert prompt in tokenizer.decode(kept), prompt  # the prompt itself, unchanged
        if family == "hunyuan_image" and SINGLE_QUOTES not in prompt:
            assert comfy["glyph"] == glyph, (prompt, comfy["glyph"], glyph)
        elif family == "hunyuan_image":  # the one known difference, pinned: a change on either side shows here
            assert comfy["glyph"] is None and glyph == 'Text "s den and the dog". Text "CLOSED". ', glyph


@pytest.mark.comfyui
@pytest.mark.skipif(not os.environ.get("COMFYUI_ROOT"), reason="set COMFYUI_ROOT to compare with ComfyUI's Flux.2 encoder")
def test_flux2_system_message_is_comfyuis():
    """Flux.2 (Mistral Small 3.1): Flux2Pipeline's SYSTEM_MESSAGE in the Mistral chat format is the
    text ComfyUI's Flux2Tokenizer wraps a prompt in (its tokenizer needs the checkpoint's tekken
    data, so the template is read from ComfyUI's source, not run)."""
    import ast

    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    source = (Path(os.environ["COMFYUI_ROOT"]) / "comfy" / "text_encoders" / "flux.py").read_text()
    if "class Flux2Tokenizer" not in source:
        pytest.skip("this ComfyUI has no Flux.2 text encoder (v0.3.x)")
    templates = [ast.literal_eval(node.value) for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                 and isinstance(node.value.value, str) and "[SYSTEM_PROMPT]" in node.value.value]
    assert templates == [f"[SYSTEM_PROMPT]{SYSTEM_MESSAGE}[/SYSTEM_PROMPT][INST]{{}}[/INST]"]
    assert get_family("flux2").comfy_prompt(PROMPT) == PROMPT
