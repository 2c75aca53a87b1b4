"""Pretrain the toy SD3-architecture text-to-image model from scratch on rendered shape scenes.

    python -m fdfo_core.cli.toy_pretrain --out <pipeline dir> [--preset full|smoke] [--steps N] ...

Stages (each cached in the work folder, `<out>.work` by default, so a rerun resumes there):
1. VAE: AutoencoderTiny (TAESD layout) trained on fresh renders, with a penalty that puts its raw
   latents at ComfyUI's SD3 convention (per-channel mean 0.0609, std 1/1.5305), so
   (raw - 0.0609) * 1.5305 is about unit variance; small latent noise keeps the decoder tolerant
   of imperfect diffusion samples. Then the decoder alone is trained further (the encoder, hence
   the latents, stay fixed).
2. Dataset: renders of train-split scenes, encoded once to latents (cached).
3. Text encoders + MMDiT trained jointly with the rectified-flow loss (logit-normal t), caption
   dropout for classifier-free guidance; EMA weights are evaluated on held-out prompts with the
   toy alignment reward and snapshotted.
4. The EMA pipeline is saved (fp16 weights after a fp16-vs-fp32 check) in the diffusers layout.

Everything is seeded; the learning rate is constant after warm-up, so a run of N steps equals the
first N steps of a longer one (stop early by choosing --steps).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..rewards.toy_alignment import alignment_scores
from ..toy.grammar import SceneSpec, sample_split_spec
from ..toy.model import (
    SD3_SCALING_FACTOR,
    SD3_SHIFT_FACTOR,
    TOY_MAX_SEQUENCE_LENGTH,
    ToyModelConfig,
    build_scheduler,
    build_text_encoder,
    build_transformer,
    build_vae,
    zero_init_modulation,
)
from ..toy.prompts import toy_prompt_sets
from ..toy.render import render
from ..toy.tokenizer import build_toy_tokenizer, write_tokenizer_files

#: Raw-latent statistics the VAE is trained towards (ComfyUI SD3 latent format).
TARGET_MEAN, TARGET_STD = SD3_SHIFT_FACTOR, 1.0 / SD3_SCALING_FACTOR


@dataclass
class PretrainConfig:
    seed: int = 0
    threads: int = 2
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    # Stage 1, VAE. ~1 s per step of 64 on 2 cores with bf16 autocast.
    vae_steps: int = 600
    vae_batch: int = 64
    vae_lr: float = 5e-4
    vae_stats_weight: float = 1.0  # penalty on per-channel latent mean / std
    vae_latent_noise: float = 0.1  # decoder input noise, in units of the target std
    # Stage 1b, decoder only (encoder frozen, so the latents and everything after stay the same):
    # 600 joint steps leave blurry shapes; the decoder alone is cheaper to sharpen.
    decoder_steps: int = 800
    decoder_lr: float = 5e-4
    # Stage 2, dataset: unique train-split scenes (each caption also used in its flipped phrasing).
    dataset_size: int = 80_000
    # Stage 3, text encoders + MMDiT. ~0.15 s per step of 64 on 2 idle cores.
    steps: int = 14_000
    batch: int = 64
    lr: float = 3e-4
    warmup: int = 300
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    log_every: int = 100
    eval_every: int = 2000
    eval_prompts: int = 128
    eval_steps: int = 20
    eval_guidance: float = 4.0


PRESETS: dict[str, dict] = {
    "full": {},
    # Seconds, for tests: every stage runs, nothing is learned. The VAE keeps its full (ComfyUI) layout,
    # so it gets one image per step (its bf16 autocast is ~10x slower than fp32 on CPUs without native
    # bf16, e.g. AVX2-only ones: a batch of 4 took ~8 s a step there).
    "smoke": {
        "model": {"depth": 1, "text_hidden": 32, "text_layers": 2, "text_intermediate": 64, "text_projection": 16},
        "vae_steps": 2,
        "vae_batch": 1,
        "decoder_steps": 2,
        "dataset_size": 8,
        "steps": 4,
        "batch": 4,
        "warmup": 2,
        "log_every": 2,
        "eval_every": 4,
        "eval_prompts": 4,
        "eval_steps": 2,
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- Stage 1: VAE -------------------------------------------------------------------------------


def render_batch(rng: np.random.Generator, n: int, size: int) -> tuple[torch.Tensor, list[SceneSpec]]:
    """n train-split scenes: images [n, 3, size, size] in [-1, 1] and their specs."""
    specs = [sample_split_spec(rng, "train") for _ in range(n)]
    imgs = np.stack([render(s, rng, size) for s in specs])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0), specs


def latent_stats_penalty(z: torch.Tensor) -> torch.Tensor:
    """Squared distance of per-channel mean and std of raw latents [B, C, h, w] from the SD3 targets."""
    zf = z.float()
    mean = zf.mean(dim=(0, 2, 3))
    std = zf.std(dim=(0, 2, 3))
    return ((mean - TARGET_MEAN) ** 2 + (std - TARGET_STD) ** 2).mean()


def train_vae(cfg: PretrainConfig, image_size: int):
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    vae = build_vae(cfg.model).train()
    vae = vae.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    t0 = time.time()
    hist = []
    for step in range(cfg.vae_steps):
        # Constant rate, linear decay to 10 % over the last 30 %.
        frac = step / max(1, cfg.vae_steps)
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * (1.0 if frac < 0.7 else 1.0 - 0.9 * (frac - 0.7) / 0.3)
        x, _ = render_batch(rng, cfg.vae_batch, image_size)
        x = x.contiguous(memory_format=torch.channels_last)
        # bf16 autocast: ~4x faster on CPU; the losses and statistics are computed in fp32.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = vae.encoder(x)
            z_in = z + cfg.vae_latent_noise * TARGET_STD * torch.randn_like(z)
            rec = vae.decoder(z_in)
        rec = rec.float()
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        stats = latent_stats_penalty(z)
        loss = rec_loss + cfg.vae_stats_weight * stats
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        hist.append((rec_loss.item(), stats.item()))
        if (step + 1) % max(1, cfg.log_every // 2) == 0 or step + 1 == cfg.vae_steps:
            r, s = np.mean(hist, axis=0)
            hist = []
            log(f"vae step {step + 1}/{cfg.vae_steps} rec {r:.5f} stats {s:.5f} ({time.time() - t0:.0f} s)")
    return vae.eval().to(memory_format=torch.contiguous_format)


def finetune_decoder(cfg: PretrainConfig, vae, image_size: int):
    """Stage 1b: train the decoder alone on fresh renders; the encoder (hence every latent) is unchanged."""
    torch.manual_seed(cfg.seed + 10)
    rng = np.random.default_rng([cfg.seed, 5])
    vae.encoder.requires_grad_(False).eval()
    decoder = vae.decoder.requires_grad_(True).train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.decoder_lr)
    t0 = time.time()
    hist = []
    for step in range(cfg.decoder_steps):
        frac = step / max(1, cfg.decoder_steps)
        for g in opt.param_groups:
            g["lr"] = cfg.decoder_lr * (1.0 if frac < 0.7 else 1.0 - 0.9 * (frac - 0.7) / 0.3)
        x, _ = render_batch(rng, cfg.vae_batch, image_size)
        z = encode_images(vae, x)
        z_in = z + cfg.vae_latent_noise * TARGET_STD * torch.randn_like(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rec = decoder(z_in.contiguous(memory_format=torch.channels_last))
        rec = rec.float()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        hist.append(loss.item())
        if (step + 1) % max(1, cfg.log_every // 2) == 0 or step + 1 == cfg.decoder_steps:
            log(f"decoder step {step + 1}/{cfg.decoder_steps} rec {np.mean(hist):.5f} ({time.time() - t0:.0f} s)")
            hist = []
    vae.decoder.to(memory_format=torch.contiguous_format)
    return vae.eval().requires_grad_(False)


def load_vae(cfg: PretrainConfig, path: Path):
    vae = build_vae(cfg.model)
    vae.load_state_dict(torch.load(path))
    return vae.eval().requires_grad_(False)


# --- Stage 2: latent dataset --------------------------------------------------------------------


@torch.no_grad()
def encode_images(vae, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Raw latents of images in [-1, 1] (bf16 autocast when `fast`: ~5x faster, ~0.5 % error)."""
    if fast:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return vae.encoder(x.contiguous(memory_format=torch.channels_last)).float()
    return vae.encoder(x).float()


def build_dataset(cfg: PretrainConfig, vae, image_size: int) -> tuple[torch.Tensor, list[SceneSpec]]:
    rng = np.random.default_rng([cfg.seed, 2])
    lat, specs = [], []
    t0 = time.time()
    chunk = 256
    for i in range(0, cfg.dataset_size, chunk):
        x, s = render_batch(rng, min(chunk, cfg.dataset_size - i), image_size)
        z = encode_images(vae, x)
        if i == 0:
            err = (z - encode_images(vae, x, fast=False)).abs().mean() / z.abs().mean()
            log(f"bf16 latent encoding: mean relative error {err:.4f}")
        lat.append(z.half())
        specs += s
        if (i // chunk) % 40 == 0:
            log(f"dataset {i + len(s)}/{cfg.dataset_size} ({time.time() - t0:.0f} s)")
    latents = torch.cat(lat)
    zf = latents.float()
    model_space = (zf - SD3_SHIFT_FACTOR) * SD3_SCALING_FACTOR
    log(
        f"raw latents mean {zf.mean():.4f} std {zf.std():.4f}; model space mean {model_space.mean():.4f} "
        f"std {model_space.std():.4f} (per-channel std {model_space.std(dim=(0, 2, 3)).min():.3f}.."
        f"{model_space.std(dim=(0, 2, 3)).max():.3f})"
    )
    return latents, specs


# --- Stage 3: text encoders + MMDiT -------------------------------------------------------------


class ToyModules(torch.nn.Module):
    """The trained parts, kept together for EMA and snapshots."""

    def __init__(self, transformer, text_encoder, text_encoder_2):
        super().__init__()
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2


def text_conditioning(modules: ToyModules, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same tensors as `encode_toy_prompts` / the pipeline, with gradients (ids [B, L])."""
    hidden, pooled = [], []
    for enc in (modules.text_encoder, modules.text_encoder_2):
        out = enc(ids, output_hidden_states=True)
        pooled.append(out[0])
        hidden.append(out.hidden_states[-2])
    ctx = torch.cat(hidden, dim=-1)
    if TOY_MAX_SEQUENCE_LENGTH:
        ctx = torch.cat([ctx, ctx.new_zeros(ctx.shape[0], TOY_MAX_SEQUENCE_LENGTH, ctx.shape[-1])], dim=1)
    return ctx, torch.cat(pooled, dim=-1)


def make_pipeline(modules: ToyModules, vae, tokenizer, cfg: ToyModelConfig):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=modules.transformer,
        scheduler=build_scheduler(cfg),
        vae=vae,
        text_encoder=modules.text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=modules.text_encoder_2,
        tokenizer_2=copy.deepcopy(tokenizer),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 64) -> torch.Tensor:
    """Images [N, 3, 64, 64] in [0, 1], one per (prompt, seed), through the diffusers pipeline."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        res = pipe(
            prompts[i : i + batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            max_sequence_length=TOY_MAX_SEQUENCE_LENGTH,
            output_type="pt",
        )
        out.append(res.images.float().clamp(0, 1))
    return torch.cat(out)


def evaluate(pipe, prompts: list[str], steps: int, guidance: float, seed: int = 0) -> tuple[float, float]:
    """Mean toy alignment and its standard error over `prompts` (one image each, fixed seeds)."""
    images = generate(pipe, prompts, [seed * 100_000 + i for i in range(len(prompts))], steps, guidance)
    scores = alignment_scores(images, prompts).numpy()
    return float(scores.mean()), float(scores.std(ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else 0.0


def train_model(cfg: PretrainConfig, vae, tokenizer, latents: torch.Tensor, specs: list[SceneSpec], work: Path):
    torch.manual_seed(cfg.seed + 3)
    mcfg = cfg.model
    transformer = build_transformer(mcfg)
    zero_init_modulation(transformer)
    ids_kw = dict(vocab_size=len(tokenizer), bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    modules = ToyModules(transformer, build_text_encoder(mcfg, **ids_kw), build_text_encoder(mcfg, **ids_kw)).train()
    ema = copy.deepcopy(modules).eval().requires_grad_(False)
    opt = torch.optim.AdamW(modules.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)

    # Pre-tokenise both phrasings of every caption, and the empty caption (dropout).
    def tok(texts):
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids

    ids = torch.stack([tok([s.caption() for s in specs]), tok([s.flipped().caption() for s in specs])])  # [2, N, L]
    empty = tok([""])[0]
    eval_train, eval_held = toy_prompt_sets(cfg.eval_prompts, cfg.eval_prompts, seed=cfg.seed)

    gen = torch.Generator().manual_seed(cfg.seed + 4)
    n = latents.shape[0]
    history, losses = [], []
    t0 = time.time()
    train_time = 0.0
    for step in range(1, cfg.steps + 1):
        ts = time.time()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, step / cfg.warmup)
        idx = torch.randint(0, n, (cfg.batch,), generator=gen)
        flip = torch.randint(0, 2, (cfg.batch,), generator=gen)
        batch_ids = ids[flip, idx]
        drop = torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout
        batch_ids[drop] = empty
        x0 = (latents[idx].float() - SD3_SHIFT_FACTOR) * SD3_SCALING_FACTOR
        noise = torch.randn(x0.shape, generator=gen)
        # Rectified flow: x_t = (1 - t) x0 + t eps, v = eps - x0, t logit-normal (SD3).
        t = torch.sigmoid(torch.randn(cfg.batch, generator=gen))
        tb = t[:, None, None, None]
        xt = (1 - tb) * x0 + tb * noise
        ctx, pooled = text_conditioning(modules, batch_ids)
        v = modules.transformer(hidden_states=xt, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t * 1000).sample
        loss = F.mse_loss(v.float(), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), modules.parameters()):
                pe.lerp_(pm, 1 - decay)
        train_time += time.time() - ts
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(
                f"step {step}/{cfg.steps} loss {np.mean(losses):.4f} "
                f"({train_time / step:.3f} s/step training, {time.time() - t0:.0f} s wall)"
            )
            losses = []
        if step % cfg.eval_every == 0 or step == cfg.steps:
            te = time.time()
            pipe = make_pipeline(ema, vae, tokenizer, mcfg)
            held = evaluate(pipe, eval_held, cfg.eval_steps, cfg.eval_guidance)
            train = evaluate(pipe, eval_train, cfg.eval_steps, cfg.eval_guidance)
            row = {"step": step, "images_seen": step * cfg.batch, "heldout": held, "train": train, "train_seconds": train_time}
            history.append(row)
            log(
                f"eval step {step}: alignment held-out {held[0]:.3f} +- {held[1]:.3f}, train {train[0]:.3f} +- {train[1]:.3f} "
                f"(cfg {cfg.eval_guidance}, {cfg.eval_steps} steps; {time.time() - te:.0f} s)"
            )
            torch.save(ema.state_dict(), work / f"ema_{step:06d}.pt")
            (work / "eval_history.json").write_text(json.dumps(history, indent=1))
    return ema, history


# --- Stage 4: save ------------------------------------------------------------------------------


@torch.no_grad()
def fp16_check(pipe, prompts: list[str], steps: int, guidance: float) -> float:
    """Max abs pixel difference between images from fp32 weights and fp16-rounded weights (fp32 compute)."""
    seeds = list(range(len(prompts)))
    ref = generate(pipe, prompts, seeds, steps, guidance)
    state = {}
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        mod = getattr(pipe, name)
        state[name] = copy.deepcopy(mod.state_dict())
        mod.half().float()
    got = generate(pipe, prompts, seeds, steps, guidance)
    for name, sd in state.items():
        getattr(pipe, name).load_state_dict(sd)
    return float((ref - got).abs().max())


def save_pipeline(pipe, out: Path, fp16: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if fp16:
        for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            getattr(pipe, name).half()
    pipe.save_pretrained(str(out), safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer_files(out / name)  # the readable vocab.json + merges.txt next to tokenizer.json
    if fp16:
        for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            getattr(pipe, name).float()


# --- Driver -------------------------------------------------------------------------------------


def resolve_config(preset: str, overrides: dict) -> PretrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    model = ToyModelConfig(**values.pop("model", {}))
    return PretrainConfig(model=model, **values)


def run(cfg: PretrainConfig, out: Path, work: Path, fp16: bool = True) -> dict:
    torch.set_num_threads(cfg.threads)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    log(f"config: {json.dumps(dataclasses.asdict(cfg))}")
    image_size = cfg.model.sample_size * 8
    timings = {}
    t_all = time.time()

    tokenizer = build_toy_tokenizer(cfg.model.text_max_length)

    t = time.time()
    vae_path, decoder_path = work / "vae.pt", work / "vae_decoder.pt"
    if decoder_path.exists():
        vae = load_vae(cfg, decoder_path)
        log(f"stage 1: reusing {decoder_path}")
    else:
        if vae_path.exists():
            vae = load_vae(cfg, vae_path)
            log(f"stage 1: reusing {vae_path}")
        else:
            vae = train_vae(cfg, image_size)
            torch.save(vae.state_dict(), vae_path)
        timings["vae_seconds"] = time.time() - t
        t = time.time()
        vae = finetune_decoder(cfg, vae, image_size)
        torch.save(vae.state_dict(), decoder_path)
        timings["decoder_seconds"] = time.time() - t
    vae.requires_grad_(False)

    t = time.time()
    data_path = work / "latents.pt"
    if data_path.exists():
        data = torch.load(data_path, weights_only=False)
        latents, specs = data["latents"], data["specs"]
        log(f"stage 2: reusing {data_path} ({len(specs)} latents)")
    else:
        latents, specs = build_dataset(cfg, vae, image_size)
        torch.save({"latents": latents, "specs": specs}, data_path)
    timings["dataset_seconds"] = time.time() - t

    t = time.time()
    ema, history = train_model(cfg, vae, tokenizer, latents, specs, work)
    timings["transformer_seconds"] = time.time() - t

    t = time.time()
    pipe = make_pipeline(ema, vae, tokenizer, cfg.model)
    _, eval_held = toy_prompt_sets(0, min(16, cfg.eval_prompts), seed=cfg.seed)
    diff = fp16_check(pipe, eval_held, cfg.eval_steps, cfg.eval_guidance)
    log(f"fp16 weights vs fp32: max abs pixel difference {diff:.4f} (images in [0, 1])")
    save_pipeline(pipe, out, fp16=fp16)
    timings["save_seconds"] = time.time() - t
    timings["total_seconds"] = time.time() - t_all
    summary = {"timings": timings, "fp16_max_pixel_diff": diff, "eval_history": history}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"saved {out}; timings {json.dumps({k: round(v) for k, v in timings.items()})}")
    return summary


def export_snapshot(cfg: PretrainConfig, work: Path, step: int, out: Path, fp16: bool = True) -> None:
    """Save the EMA snapshot taken at `step` of a finished or running run as the pipeline folder `out`
    (what `--steps step` would have saved: the schedule does not depend on the total step count)."""
    tokenizer = build_toy_tokenizer(cfg.model.text_max_length)
    vae = load_vae(cfg, work / "vae_decoder.pt")
    ids_kw = dict(vocab_size=len(tokenizer), bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    modules = ToyModules(build_transformer(cfg.model), build_text_encoder(cfg.model, **ids_kw), build_text_encoder(cfg.model, **ids_kw))
    modules.load_state_dict(torch.load(work / f"ema_{step:06d}.pt"))
    pipe = make_pipeline(modules.eval(), vae.eval(), tokenizer, cfg.model)
    save_pipeline(pipe, out, fp16=fp16)
    log(f"saved the step-{step} snapshot of {work} as {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fdfo_core.cli.toy_pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder for the diffusers pipeline")
    p.add_argument("--work", type=Path, help="cache, snapshots and logs (default: <out>.work)")
    p.add_argument("--preset", default="full", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--steps", type=int, help="MMDiT training steps")
    p.add_argument("--vae-steps", type=int)
    p.add_argument("--dataset-size", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--fp32", action="store_true", help="save fp32 weights instead of fp16")
    p.add_argument("--export-snapshot", type=int, metavar="STEP", help="only save the EMA snapshot of STEP from the work folder")
    a = p.parse_args(argv)
    cfg = resolve_config(
        a.preset,
        {"seed": a.seed, "threads": a.threads, "steps": a.steps, "vae_steps": a.vae_steps, "dataset_size": a.dataset_size, "eval_every": a.eval_every},
    )
    work = a.work or a.out.with_name(a.out.name + ".work")
    if a.export_snapshot is not None:
        export_snapshot(cfg, work, a.export_snapshot, a.out, fp16=not a.fp32)
        return 0
    run(cfg, a.out, work, fp16=not a.fp32)
    return 0


if __name__ == "__main__":
    sys.exit(main())
