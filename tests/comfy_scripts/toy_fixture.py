"""The toy model for the ComfyUI tests: the shipped weights, $FDFO_TOY_MODEL, or (while the
weights are not in the checkout) a randomly initialised model of the same architecture, built with
the toy's own builders. The ComfyUI tests check plumbing, not image quality, so random weights do."""

from __future__ import annotations

import os
from pathlib import Path


#: Written into a randomly initialised toy folder.
RANDOM_MARKER = "RANDOM_WEIGHTS"


def is_random_toy(env: dict[str, str]) -> bool:
    folder = env.get("FDFO_TOY_MODEL")
    return bool(folder) and (Path(folder) / RANDOM_MARKER).exists()


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
    from fdfo_core.cli.toy_pretrain import ToyModules, make_pipeline, save_pipeline
    from fdfo_core.toy.tokenizer import build_toy_tokenizer

    torch.manual_seed(seed)
    cfg = ToyModelConfig()
    tok = build_toy_tokenizer(cfg.text_max_length)
    ids = dict(vocab_size=len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    modules = ToyModules(build_transformer(cfg), build_text_encoder(cfg, **ids), build_text_encoder(cfg, **ids))
    vae = build_vae(cfg).eval()
    calibrate_decoder(vae, seed)
    pipe = make_pipeline(modules.eval(), vae, tok, cfg)
    save_pipeline(pipe, Path(out), fp16=True)
    (Path(out) / RANDOM_MARKER).write_text("randomly initialised toy model for tests (no pretraining)\n")
    return Path(out)


def calibrate_decoder(vae, seed: int = 0) -> None:
    """Make a random AutoencoderTiny decode unit-variance latents to mid-grey images with a spread
    of about 0.15, so images depend visibly (in 8 bits) on the latent and are rarely clipped."""
    import torch

    last = vae.decoder.layers[-1]
    with torch.no_grad():
        last.bias.zero_()
        z = torch.randn(16, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(seed))
        raw = (vae.decoder(z) + 1) / 2  # the decoder's own [0, 1] output
        last.weight.mul_(0.15 / raw.std())
        last.bias.fill_(0.5)
