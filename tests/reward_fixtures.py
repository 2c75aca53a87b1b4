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
    model.save_pretrained(str(folder))
    if not safe:  # the older PyTorch pickle layout (pytorch_model.bin), as PickScore_v1 also ships
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
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
    # merges in priority order: the space-prefixed words first, so that " Yes" is one token too
    merges = [("\u0120", "Y"), ("\u0120Y", "e"), ("\u0120Ye", "s"), ("\u0120", "N"), ("\u0120N", "o"),
              ("Y", "e"), ("Ye", "s"), ("N", "o")]
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


def write_qwen2_vl_folder(folder: Path, seed: int = 0, image_size: int = 56, version: str = "2") -> Path:
    """A tiny Qwen2-VL checkpoint laid out like Qwen/Qwen2-VL-*-Instruct on the Hub: config.json +
    model.safetensors, tokenizer files, preprocessor_config.json and chat_template.json.

    The processor is saved part by part (its video processor needs torchvision, which this
    environment lacks; the reward loader copes with that)."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if version == "2.5":  # Qwen2.5-VL: windowed vision attention, SwiGLU vision MLP
        config_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
        vision = dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
        processor_class = "Qwen2_5_VLProcessor"
    else:
        config_cls, model_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
        vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, mlp_ratio=2)
        processor_class = "Qwen2VLProcessor"

    folder.mkdir(parents=True, exist_ok=True)
    tok, ids = _qwen_tokenizer()
    vocab_size = len(tok)
    config = config_cls(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # larger logits than the 0.02-std init, so Yes/No differ visibly
        model.lm_head.weight.normal_(0, 0.3)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=4 * image_size * image_size, patch_size=14, merge_size=2,
        temporal_patch_size=2, image_mean=OPENAI_MEAN, image_std=OPENAI_STD,
    )
    image_processor.save_pretrained(str(folder))
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    pre["processor_class"] = processor_class
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_CHAT_TEMPLATE}))
    return folder


# --------------------------------------------------------------------------------------------
# HPSv2: an open_clip ViT CLIP state dict, saved as {"state_dict": ...} like HPS_v2*_compressed.pt


def openclip_state_dict(vocab_size: int, width: int = 128, layers: int = 2, patch: int = 14, grid: int = 2,
                        ctx: int = 77, embed: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the names and shapes of open_clip's ViT CLIP (both towers `width` wide)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    def ln(prefix, sd):
        sd[prefix + ".weight"] = 1 + rnd(width, std=0.1)
        sd[prefix + ".bias"] = rnd(width, std=0.1)

    def blocks(prefix, sd):
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            ln(b + "ln_1", sd)
            sd[b + "attn.in_proj_weight"] = rnd(3 * width, width)
            sd[b + "attn.in_proj_bias"] = rnd(3 * width, std=0.1)
            sd[b + "attn.out_proj.weight"] = rnd(width, width)
            sd[b + "attn.out_proj.bias"] = rnd(width, std=0.1)
            ln(b + "ln_2", sd)
            sd[b + "mlp.c_fc.weight"] = rnd(4 * width, width)
            sd[b + "mlp.c_fc.bias"] = rnd(4 * width, std=0.1)
            sd[b + "mlp.c_proj.weight"] = rnd(width, 4 * width, std=0.1)
            sd[b + "mlp.c_proj.bias"] = rnd(width, std=0.1)

    sd: dict[str, torch.Tensor] = {}
    sd["positional_embedding"] = rnd(ctx, width, std=0.1)
    sd["token_embedding.weight"] = rnd(vocab_size, width, std=0.5)
    blocks("", sd)
    ln("ln_final", sd)
    sd["text_projection"] = rnd(width, embed)
    sd["logit_scale"] = torch.tensor(4.6052)
    sd["visual.class_embedding"] = rnd(width)
    sd["visual.positional_embedding"] = rnd(grid * grid + 1, width, std=0.1)
    sd["visual.proj"] = rnd(width, embed)
    sd["visual.conv1.weight"] = rnd(width, 3, patch, patch, std=0.1)
    ln("visual.ln_pre", sd)
    ln("visual.ln_post", sd)
    blocks("visual.", sd)
    return sd


def write_hps_folder(folder: Path, version: str = "2.1", seed: int = 0) -> tuple[Path, dict]:
    """hpsv2/ with HPS_v2.1_compressed.pt (or HPS_v2_compressed.pt) plus the CLIP tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = write_clip_tokenizer(folder)
    sd = openclip_state_dict(tok["vocab_size"], seed=seed)
    name = "HPS_v2.1_compressed.pt" if version == "2.1" else "HPS_v2_compressed.pt"
    torch.save({"state_dict": sd}, folder / name)
    return folder, sd


def openclip_reference_scores(sd: dict, pixels: torch.Tensor, tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """cos(text, image) computed the open_clip way, written out with torch.nn.MultiheadAttention.

    `pixels` are normalised NCHW images at the model's resolution, `tokens` the padded token ids.
    """
    import torch.nn.functional as F

    def run_blocks(prefix, x, mask):
        width = x.shape[-1]
        i = 0
        while f"{prefix}transformer.resblocks.{i}.ln_1.weight" in sd:
            b = f"{prefix}transformer.resblocks.{i}."
            i += 1
            attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
            attn.load_state_dict({"in_proj_weight": sd[b + "attn.in_proj_weight"], "in_proj_bias": sd[b + "attn.in_proj_bias"],
                                  "out_proj.weight": sd[b + "attn.out_proj.weight"], "out_proj.bias": sd[b + "attn.out_proj.bias"]})
            h = F.layer_norm(x, (width,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"])
            x = x + attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            h = F.layer_norm(x, (width,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"])
            h = F.gelu(F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"]))
            x = x + F.linear(h, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
        return x

    with torch.no_grad():
        # image tower
        x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
        w = x.shape[-1]
        x = F.layer_norm(x, (w,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
        x = run_blocks("visual.", x, None)
        x = F.layer_norm(x[:, 0], (w,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
        img = x @ sd["visual.proj"]
        # text tower: causal mask, pooled at the end-of-text token (the largest id)
        t = sd["token_embedding.weight"][tokens] + sd["positional_embedding"][: tokens.shape[1]]
        L = tokens.shape[1]
        mask = torch.full((L, L), float("-inf")).triu(1)
        t = run_blocks("", t, mask)
        wt = t.shape[-1]
        t = F.layer_norm(t, (wt,), sd["ln_final.weight"], sd["ln_final.bias"])
        txt = t[torch.arange(t.shape[0]), tokens.argmax(dim=-1)] @ sd["text_projection"]
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1)


# --------------------------------------------------------------------------------------------
# LAION aesthetic predictor v2: the MLP head in its published key layout next to a CLIP folder


def aesthetic_head_state_dict(in_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Linear(in,32) Dropout Linear(32,16) Dropout Linear(16,8) Dropout Linear(8,4) Linear(4,1):
    the published layer indices (layers.0/2/4/6/7) with smaller widths."""
    g = torch.Generator().manual_seed(seed)
    dims = [(0, in_dim, 32), (2, 32, 16), (4, 16, 8), (6, 8, 4), (7, 4, 1)]
    sd = {}
    for i, a, b in dims:
        sd[f"layers.{i}.weight"] = torch.randn(b, a, generator=g) / a**0.5
        sd[f"layers.{i}.bias"] = torch.randn(b, generator=g) * 0.1
    return sd


def write_aesthetic_folders(root: Path, seed: int = 0) -> tuple[Path, Path, dict]:
    """root/aesthetic/sac+logos+ava1-l14-linearMSE.pth and root/clip-vit-large-patch14/ (tiny)."""
    from collections import OrderedDict

    clip_dir = write_clip_folder(root / "clip-vit-large-patch14", seed=seed + 1, pad_token="<|endoftext|>")
    head_dir = root / "aesthetic"
    head_dir.mkdir(parents=True, exist_ok=True)
    sd = aesthetic_head_state_dict(16, seed=seed)
    torch.save(OrderedDict(sd), head_dir / "sac+logos+ava1-l14-linearMSE.pth")
    return head_dir, clip_dir, sd


# --------------------------------------------------------------------------------------------
# Checks every reward must pass


def sample_images(n: int = 4, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth random NCHW images in [0, 1] (low-frequency noise, like downscaled photos)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, max(2, h // 8), max(2, w // 8), generator=g)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


PROMPTS = ["a cat", "a dog on a sofa", "a cat", "an astronaut riding a horse"]


def check_reward_contract(reward, images: torch.Tensor | None = None, prompts=PROMPTS, atol: float = 1e-5,
                          rtol: float = 1e-6):
    """Shape and dtype, determinism, batch invariance and NHWC == NCHW. Returns the scores."""
    images = sample_images() if images is None else images
    n = images.shape[0]
    scores = reward(images, prompts)
    assert scores.shape == (n,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert torch.isfinite(scores).all()
    again = reward(images, prompts)
    assert torch.equal(scores, again), "not deterministic"
    for i in range(n):
        alone = reward(images[i : i + 1], [prompts[i]])
        assert torch.allclose(alone, scores[i : i + 1], atol=atol, rtol=rtol), (i, alone, scores[i])
    nhwc = reward(images.permute(0, 2, 3, 1).contiguous(), prompts)
    assert torch.allclose(nhwc, scores, atol=atol, rtol=rtol)
    return scores


# --------------------------------------------------------------------------------------------
# Image encoders for the reference and preference rewards: SigLIP, DINOv2 and CSD folders


def _spread_init(model, seed: int, std: float = 0.2):
    """Random init with larger weights than the default, so tiny towers separate images clearly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def write_siglip_folder(folder: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A transformers SiglipModel folder with a CLIP-BPE tokenizer (16 tokens) and a fixed-size preprocessor."""
    from transformers import SiglipConfig, SiglipModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = write_clip_tokenizer(folder, pad_token="<|endoftext|>", model_max_length=16)
    config = SiglipConfig(
        text_config=dict(vocab_size=tok["vocab_size"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok["bos"],
                         eos_token_id=tok["eos"], pad_token_id=tok["pad"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
    )
    torch.manual_seed(seed)
    model = _spread_init(SiglipModel(config).eval(), seed)
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "resample": 2, "size": {"height": image_size, "width": image_size}, "image_processor_type": "SiglipImageProcessor"}))
    return folder


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def write_dinov2_folder(folder: Path, image_size: int = 32, seed: int = 0, with_preprocessor: bool = True) -> Path:
    """A transformers Dinov2Model folder (hidden 32, 2 layers, patch 8) with facebook/dinov2's preprocessor layout."""
    from transformers import Dinov2Config, Dinov2Model

    folder.mkdir(parents=True, exist_ok=True)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8,
                          image_size=image_size)
    torch.manual_seed(seed)
    model = _spread_init(Dinov2Model(config).eval(), seed)
    model.save_pretrained(str(folder))
    if with_preprocessor:
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "crop_size": {"height": image_size, "width": image_size}, "do_center_crop": True, "do_normalize": True,
            "do_rescale": True, "do_resize": True, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
            "resample": 3, "size": {"shortest_edge": image_size + image_size // 7}, "image_processor_type": "BitImageProcessor"}))
    return folder


def csd_state_dict(width: int = 64, layers: int = 2, patch: int = 8, grid: int = 4, embed: int = 16,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the names and shapes of CSD_CLIP's state dict: the OpenAI CLIP image tower
    under `backbone.` (its `proj` removed) plus `last_layer_style` / `last_layer_content`."""
    sd = openclip_state_dict(vocab_size=8, width=width, layers=layers, patch=patch, grid=grid, embed=embed, seed=seed)
    out = {"backbone." + k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.") and k != "visual.proj"}
    g = torch.Generator().manual_seed(seed + 1)
    out["last_layer_style"] = torch.randn(width, embed, generator=g) * 0.2
    out["last_layer_content"] = torch.randn(width, embed, generator=g) * 0.2
    return out


def write_csd_folder(folder: Path, layout: str = "hub", seed: int = 0) -> tuple[Path, dict]:
    """csd/ as published: "hub" = model.safetensors + config.json (tomg-group-umd/CSD-ViT-L, written by
    huggingface_hub's model mixin); "drive" = the authors' training checkpoint.pth with a DDP prefix,
    optimizer state and the argparse Namespace of the run."""
    import argparse

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = csd_state_dict(seed=seed)
    if layout == "hub":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"content_proj_head": "default", "name": "vit_large"}))
    else:
        torch.save({"model_state_dict": {"module." + k: v for k, v in sd.items()},
                    "opt_bb": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]}, "iter": 100,
                    "args": argparse.Namespace(arch="vit_large", lr=1e-5, eval_k=[1, 10], use_fp16=True)},
                   folder / "checkpoint.pth")
    return folder, sd


def csd_reference_embeddings(sd: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """CSD's style output computed the authors' way (OpenAI CLIP visual with QuickGELU, CLS token,
    ln_post, @ last_layer_style, L2-normalised), written out with torch.nn.MultiheadAttention.
    `pixels`: normalised NCHW at the model's resolution."""
    import torch.nn.functional as F

    v = {k[len("backbone."):]: t for k, t in sd.items() if k.startswith("backbone.")}
    with torch.no_grad():
        x = F.conv2d(pixels, v["conv1.weight"], stride=v["conv1.weight"].shape[-1]).flatten(2).transpose(1, 2)
        w = x.shape[-1]
        x = torch.cat([v["class_embedding"].expand(x.shape[0], 1, -1), x], dim=1) + v["positional_embedding"]
        x = F.layer_norm(x, (w,), v["ln_pre.weight"], v["ln_pre.bias"])
        i = 0
        while f"transformer.resblocks.{i}.ln_1.weight" in v:
            b = f"transformer.resblocks.{i}."
            i += 1
            attn = torch.nn.MultiheadAttention(w, heads, batch_first=True)
            attn.load_state_dict({"in_proj_weight": v[b + "attn.in_proj_weight"], "in_proj_bias": v[b + "attn.in_proj_bias"],
                                  "out_proj.weight": v[b + "attn.out_proj.weight"], "out_proj.bias": v[b + "attn.out_proj.bias"]})
            h = F.layer_norm(x, (w,), v[b + "ln_1.weight"], v[b + "ln_1.bias"])
            x = x + attn(h, h, h, need_weights=False)[0]
            h = F.layer_norm(x, (w,), v[b + "ln_2.weight"], v[b + "ln_2.bias"])
            h = F.linear(h, v[b + "mlp.c_fc.weight"], v[b + "mlp.c_fc.bias"])
            h = h * torch.sigmoid(1.702 * h)  # OpenAI CLIP's QuickGELU
            x = x + F.linear(h, v[b + "mlp.c_proj.weight"], v[b + "mlp.c_proj.bias"])
        x = F.layer_norm(x[:, 0], (w,), v["ln_post.weight"], v["ln_post.bias"])
        style = x @ sd["last_layer_style"]
    return style / style.norm(dim=-1, keepdim=True)


def palette_images(n: int, base, size: int = 32, spread: float = 0.35, seed: int = 0) -> torch.Tensor:
    """Smooth random NCHW images whose colours lie in a box above the RGB `base` colour (a palette)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 4, 4, generator=g) * spread
    x = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return (x + torch.tensor(base, dtype=torch.float32).view(1, 3, 1, 1)).clamp(0, 1)
