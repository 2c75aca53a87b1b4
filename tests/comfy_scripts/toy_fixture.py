"""The toy model for the ComfyUI tests: the shipped weights, $FDFO_TOY_MODEL, or (while the
weights are not in the checkout) a randomly initialised model of the same architecture, built with
the toy's own builders. The ComfyUI tests check plumbing, not image quality, so random weights do."""

from __future__ import annotations

import os
from pathlib import Path


def toy_model_env(cache_dir: Path) -> dict[str, str]:
    """Environment variables that point the FDFO toy loader at a usable toy model folder."""
    if os.environ.get("FDFO_TOY_MODEL"):
        return {"FDFO_TOY_MODEL": os.environ["FDFO_TOY_MODEL"]}
    from fdfo_core.toy import default_toy_model_path

    try:
        default_toy_model_path()
        return {}
    except FileNotFoundError:
        pass
    folder = Path(cache_dir) / "random_toy"
    if not (folder / "model_index.json").exists():
        build_random_toy(folder)
    return {"FDFO_TOY_MODEL": str(folder)}


def build_random_toy(out: Path, seed: int = 0) -> Path:
    import torch

    from fdfo_core.toy.model import ToyModelConfig, build_text_encoder, build_transformer, build_vae
    from fdfo_core.toy.pretrain import ToyModules, make_pipeline, save_pipeline
    from fdfo_core.toy.tokenizer import build_toy_tokenizer

    torch.manual_seed(seed)
    cfg = ToyModelConfig()
    tok = build_toy_tokenizer(cfg.text_max_length)
    ids = dict(vocab_size=len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    modules = ToyModules(build_transformer(cfg), build_text_encoder(cfg, **ids), build_text_encoder(cfg, **ids))
    pipe = make_pipeline(modules.eval(), build_vae(cfg).eval(), tok, cfg)
    save_pipeline(pipe, Path(out), fp16=True)
    return Path(out)
