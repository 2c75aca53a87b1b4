"""Tiny, randomly initialised reward checkpoints written in their authors' on-disk formats.

Every builder writes a folder that the real loaders in `fdfo_core.rewards` read exactly as they
read the published weights: a transformers CLIPModel folder for PickScore / CLIP score, an
open_clip state dict under "state_dict" for HPSv2, a LAION-style MLP head next to a CLIP-L
folder for the aesthetic predictor, and a Qwen2-VL folder (model, tokenizer, image processor,
chat template) for the VLM reward. Nothing is downloaded; models have a few thousand weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # tests import fdfo_core from the repository root
    sys.path.insert(0, str(_ROOT))

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

# A few merges so that common test words become single tokens (the rest falls back to bytes).
_CLIP_MERGES = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
_QWEN_WORDS = ["Yes", "No", "\u0120Yes", "\u0120No"]


def byte_unicode_table() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE (GPT-2 / CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # Order by the printable-first convention so that "!" gets id 0 as in the real vocabularies.
    return {b: table[b] for b in printable + [b for b in range(256) if b not in printable]}


def write_clip_tokenizer(folder: Path, pad_token: str = "!", model_max_length: int = 77) -> dict:
    """A CLIP BPE tokenizer (vocab.json, merges.txt, tokenizer config) with a ~520-token vocabulary."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(byte_unicode_table().values())
    tokens = chars + [c + "</w>" for c in chars]
    for a, b in _CLIP_MERGES:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _CLIP_MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    tok = CLIPTokenizer(
        vocab=vocab, merges=list(_CLIP_MERGES), pad_token=pad_token,
        model_max_length=model_max_length,
    )
    tok.save_pretrained(str(folder))
    return {"vocab_size": len(vocab), "bos": vocab["<|startoftext|>"], "eos": vocab["<|endoftext|>"],
            "pad": vocab[pad_token]}


def write_clip_preprocessor(folder: Path, size: int, mean=OPENAI_MEAN, std=OPENAI_STD, legacy_ints: bool = True):
    """preprocessor_config.json as published with CLIP checkpoints (shortest edge, centre crop, bicubic)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "crop_size": size if legacy_ints else {"height": size, "width": size},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": list(mean),
        "image_std": list(std),
        "resample": 3,
        "size": size if legacy_ints else {"shortest_edge": size},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))


def tiny_clip_model(tok: dict, image_size: int = 32, patch: int = 8, width: int = 32, proj: int = 16, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=tok["vocab_size"], hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok["bos"], eos_token_id=tok["eos"],
            pad_token_id=tok["pad"], hidden_act="gelu",
        ),
        vision_config=dict(
            hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch, hidden_act="gelu",
        ),
        projection_dim=proj,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    # Random init leaves the towers nearly orthogonal to each other; spread the scores a little.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2)
    return model


def write_clip_folder(folder: Path, image_size: int = 32, with_processor: bool = True, safe: bool = True,
                      seed: int = 0, pad_token: str = "!") -> Path:
    """A transformers CLIPModel folder; with_processor=False leaves out tokenizer and preprocessor
    files (PickScore_v1 ships the model only and borrows CLIP-H's processor)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp_tok = folder.parent / (folder.name + "_tok_tmp")
    tok = write_clip_tokenizer(tmp_tok, pad_token=pad_token)
    model = tiny_clip_model(tok, image_size=image_size, seed=seed)
    model.save_pretrained(str(folder), safe_serialization=safe)
    if with_processor:
        for f in tmp_tok.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        write_clip_preprocessor(folder, image_size)
    for f in tmp_tok.iterdir():
        f.unlink()
    tmp_tok.rmdir()
    return folder


def write_clip_processor_folder(folder: Path, image_size: int = 32, pad_token: str = "!") -> Path:
    """Tokenizer and preprocessor files only (the part of laion/CLIP-ViT-H-14 PickScore needs)."""
    write_clip_tokenizer(folder, pad_token=pad_token)
    write_clip_preprocessor(folder, image_size)
    return folder


# --------------------------------------------------------------------------------------------
# Qwen2-VL: a byte-level BPE tokenizer with the Qwen special tokens and a chat template.

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]

# A chat template in the Qwen2-VL message format: a default system turn, image placeholders, and
# "<|im_start|>assistant\n" as the generation prompt.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    chars = list(byte_unicode_table().values())
    merges = [("Y", "e"), ("Ye", "s"), ("N", "o"), ("\u0120", "Y"), ("\u0120Y", "e"), ("\u0120Ye", "s"), ("\u0120", "N"),
              ("\u0120N", "o")]
    tokens = list(chars)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    vocab = {t: i for i, t in enumerate(tokens)}
    n = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, additional_special_tokens=QWEN_SPECIALS[1:],
                         model_max_length=4096)
    tok.padding_side = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    assert min(ids.values()) >= n, ids
    return tok, ids


def write_qwen2_vl_folder(folder: Path, seed: int = 0, image_size: int = 56) -> Path:
    """A tiny Qwen2-VL checkpoint with tokenizer, image processor and chat template (save_pretrained)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok, ids = _qwen_tokenizer()
    vocab_size = len(tok)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.save_pretrained(str(folder))
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=4 * image_size * image_size, patch_size=14, merge_size=2,
        temporal_patch_size=2, image_mean=OPENAI_MEAN, image_std=OPENAI_STD,
    )
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE)
    processor.save_pretrained(str(folder))
    return folder
