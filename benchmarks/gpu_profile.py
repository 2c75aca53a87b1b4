"""GPU profile of the true-size models: seconds and peak memory per phase of an FDFO epoch.

For each model (SD3.5 Medium, Flux.1 dev, Qwen-Image, and the other published models of the
family table) the transformer and VAE are built from their published configs
(`fdfo_core/families/*.py`, `published_models`) with random weights created directly on the
device in bf16 (nothing is downloaded), the text encoders are stood in for by conditioning of
the right shapes (random embeddings, full text length), and the reward by mean brightness. A
shortened epoch (default 8 pairs) at the published steps and resolution then runs through the
real diffusers backend and FDFO trainer, with the memory settings you give (or those `--vram`
chooses). It prints, per phase (sampling, decoding, reward stand-in, training): seconds per
image (per image-step for sampling) or per training item, the peak device memory, the memory
estimate of `fdfo_core/backends/memory.py` for the same settings, and the time of one published epoch
(432 pairs x 40 steps) extrapolated from the per-item figures, next to the reference
implementation's (100 epochs in about 12 h on 4 H200: about 29 GPU-minutes per epoch).

    python benchmarks/gpu_profile.py                              # CUDA: the three headline models
    python benchmarks/gpu_profile.py --models flux-dev --base-weights fp8 --gradient-checkpointing
    python benchmarks/gpu_profile.py --vram 24 --models sd35-medium
    python benchmarks/gpu_profile.py --small                      # the same code, small configs, CPU

Output: a table, and JSON (`--json FILE`, default gpu_profile.json in the current folder).
Without CUDA it runs the small configs (the same architectures with 2 heads of 16 and 1-2
blocks) at 64 px on the CPU: the code path is the GPU's, the figures are not.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fdfo_core.backends.diffusers_backend import DiffusersBackend  # noqa: E402
from fdfo_core.config import load_config  # noqa: E402
from fdfo_core.families import all_families  # noqa: E402
from fdfo_core.families.published import PublishedModel  # noqa: E402
from fdfo_core.backends.memory import GIB, MemoryMode, estimate, measure_published  # noqa: E402
from fdfo_core.rewards.simple import Brightness  # noqa: E402
from fdfo_core.run.hooks import Callbacks  # noqa: E402
from fdfo_core.methods import FDFOTrainer  # noqa: E402

#: The reference implementation: 100 epochs in about 12 h on 4 H200 (ALGORITHM.md / the issue).
REFERENCE_GPU_MINUTES_PER_EPOCH = 12 * 60 * 4 / 100
PUBLISHED_PAIRS, PUBLISHED_STEPS = 432, 40
HEADLINE = ("sd35-medium", "flux-dev", "qwen-image")


def published_models() -> dict[str, tuple[Any, PublishedModel]]:
    return {m.key: (f, m) for f in all_families() for m in f.published_models}


def build_pipeline(model: PublishedModel, device: torch.device, dtype: torch.dtype, small: bool):
    """The model's pipeline with random weights made on `device` in `dtype` (no text encoders)."""
    import diffusers

    before = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)  # parameters are born in bf16 on the GPU: no fp32 copy ever exists
        with torch.device(device):
            transformer = getattr(diffusers, model.transformer).from_config(model.config(small))
            vae = getattr(diffusers, model.vae).from_config(model.vae_config_for(small))
    finally:
        torch.set_default_dtype(before)
    transformer, vae = transformer.to(device, dtype).eval(), vae.to(device, dtype).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**model.scheduler_config)
    pipe_cls = getattr(diffusers, model.pipeline)
    names = [p for p in inspect.signature(pipe_cls.__init__).parameters if p != "self"]
    parts = {n: None for n in names}
    parts.update(transformer=transformer, vae=vae, scheduler=scheduler)
    return pipe_cls(**parts)


class StandInTextBackend(DiffusersBackend):
    """The diffusers backend with the text encoders replaced by random conditioning of the right
    shapes (`Family.conditioning_shapes`), seeded per prompt."""

    def encode_prompts(self, prompts):
        from fdfo_core.backends.memory import stand_in_conditioning

        rows = []
        for p in prompts:
            g = torch.Generator().manual_seed(sum(map(ord, p)))
            rows.append(stand_in_conditioning(self.model_family, self.transformer.config, 1,
                                              self.options.max_sequence_length, self.device, self.model_dtype, g))
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


class TimedBrightness(Brightness):
    """Mean brightness, timed: the reward stand-in (a learned reward adds its own model's time)."""

    seconds = 0.0

    def __call__(self, images, prompts):
        sync()
        t0 = time.perf_counter()
        out = super().__call__(images, prompts)
        sync()
        self.seconds += time.perf_counter() - t0
        return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PhasePeaks:
    """Peak device memory per trainer phase (CUDA), via the trainer's progress callback."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.phase: str | None = None
        self.peaks: dict[str, int] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()

    def close(self) -> None:
        if self.phase is not None and self.cuda:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), torch.cuda.max_memory_allocated())


def profile_model(key: str, args, device: torch.device) -> dict[str, Any]:
    family, model = published_models()[key]
    small = args.small
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = args.resolution or (64 if small else model.resolution)
    steps = args.steps or (4 if small else PUBLISHED_STEPS)
    text = args.max_sequence_length if args.max_sequence_length is not None else (16 if small else family.max_sequence_length)
    overrides = dict(
        pairs_per_epoch=args.pairs, num_steps=steps, height=size, width=size, epochs=1, checkpoint_every=0,
        sample_batch_size=args.sample_batch_size, train_batch_size=args.train_batch_size,
        decode_batch_size=args.decode_batch_size, gradient_checkpointing=args.gradient_checkpointing,
        storage_device=args.storage_device, base_weights=args.base_weights, compile=args.compile,
        lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank, optimizer_steps_per_epoch=min(4, args.pairs),
    )
    cfg = load_config(family.preset_name or family.name, overrides=overrides)
    t0 = time.perf_counter()
    mem = measure_published(model, family, size, size, text, cfg.lora_rank, cfg.lora_targets, small=small)
    estimate_seconds = time.perf_counter() - t0
    plan_text = None
    if args.vram is not None:
        from fdfo_core.backends.memory import choose_mode

        plan = choose_mode(mem, args.vram, cfg.pairs_per_epoch, cfg.num_steps, cfg.cfg_scale, cfg.sample_batch_size,
                           cfg.train_batch_size, cfg.decode_batch_size)
        cfg = cfg.replace(**plan.mode.config_changes()).validate()
        plan_text = plan.message()
        print(plan_text, flush=True)
    mode = MemoryMode(**{k: getattr(cfg, k) for k in ("base_weights", "gradient_checkpointing", "storage_device",
                                                        "sample_batch_size", "train_batch_size", "decode_batch_size")})
    predicted = estimate(mem, mode, cfg.pairs_per_epoch, cfg.num_steps, cfg.cfg_scale)

    t0 = time.perf_counter()
    pipe = build_pipeline(model, device, dtype, small)
    backend = StandInTextBackend(pipe, cfg, device=device, max_sequence_length=text)
    sync()
    build_seconds = time.perf_counter() - t0
    peaks = PhasePeaks(device)
    reward = TimedBrightness()
    trainer = FDFOTrainer(backend, reward, [f"prompt {i}" for i in range(16)], cfg,
                          callbacks=Callbacks(on_progress=peaks, log=None))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.warmup:  # a first epoch pays for kernel selection and compilation; time the second
        trainer.config = cfg
        trainer.train_epoch()
        reward.seconds = 0.0
    metrics = trainer.train_epoch()
    sync()
    peaks.close()
    images = 2 * cfg.pairs_per_epoch
    items = metrics["items"]
    decode_s = max(0.0, metrics["time_reward"] - reward.seconds)
    per = {
        "sample_s_per_image_step": metrics["time_sample"] / (images * cfg.num_steps),
        "decode_s_per_image": decode_s / images,
        "reward_s_per_image": reward.seconds / images,
        "train_s_per_item": metrics["time_train"] / max(1, items),
    }
    pub_images, pub_items = 2 * PUBLISHED_PAIRS, 2 * PUBLISHED_PAIRS * PUBLISHED_STEPS
    epoch_s = (per["sample_s_per_image_step"] * pub_images * PUBLISHED_STEPS + per["decode_s_per_image"] * pub_images
               + per["reward_s_per_image"] * pub_images + per["train_s_per_item"] * pub_items)
    gpu_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    result = {
        "model": key, "title": model.title, "device": device_name(device), "small_config": small,
        "transformer_params_b": mem.transformer_params / 1e9, "resolution": size, "steps": cfg.num_steps,
        "pairs": cfg.pairs_per_epoch, "text_tokens": text, "mode": mode.describe(), "vram_plan": plan_text,
        "build_s": build_seconds, "estimate_s": estimate_seconds,
        "phases": {
            "sampling": {"seconds": metrics["time_sample"], "per": per["sample_s_per_image_step"],
                         "unit": "s / image-step", "peak_gib": _gib(peaks.peaks.get("sample"))},
            "decoding": {"seconds": decode_s, "per": per["decode_s_per_image"], "unit": "s / image",
                         "peak_gib": _gib(peaks.peaks.get("reward"))},
            "reward stand-in": {"seconds": reward.seconds, "per": per["reward_s_per_image"], "unit": "s / image",
                                "peak_gib": None},
            "training": {"seconds": metrics["time_train"], "per": per["train_s_per_item"], "unit": "s / item",
                         "peak_gib": _gib(peaks.peaks.get("train"))},
        },
        "peak_gib_measured": _gib(gpu_peak),
        "peak_gib_estimated": predicted.peak / GIB,
        "estimate_phases_gib": {k: v / GIB for k, v in predicted.phases.items()},
        "published_epoch_minutes": epoch_s / 60,
        "reference_gpu_minutes_per_epoch": REFERENCE_GPU_MINUTES_PER_EPOCH,
        "speedup_vs_reference_per_gpu": REFERENCE_GPU_MINUTES_PER_EPOCH / (epoch_s / 60) if epoch_s > 0 else None,
    }
    del trainer, backend, pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _gib(n: int | None) -> float | None:
    return None if n is None else n / GIB


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| model | phase | seconds | per unit | peak GiB (measured) |", "|---|---|---|---|---|"]
    for r in results:
        for phase, p in r["phases"].items():
            lines.append(f"| {r['model']} | {phase} | {p['seconds']:.2f} | {_fmt(p['per'])} {p['unit']} | "
                         f"{_fmt(p['peak_gib'], '.1f')} |")
    lines += ["", "| model | params (B) | px | mode | peak GiB measured | peak GiB estimated | published epoch "
              "(min, extrapolated) | reference (GPU-min / epoch) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']}{' (small config)' if r['small_config'] else ''} | {r['transformer_params_b']:.3g} "
                     f"| {r['resolution']} | {r['mode']} | {_fmt(r['peak_gib_measured'], '.1f')} | "
                     f"{r['peak_gib_estimated']:.1f} | {r['published_epoch_minutes']:.3g} | "
                     f"{r['reference_gpu_minutes_per_epoch']:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(HEADLINE), choices=sorted(published_models()))
    ap.add_argument("--small", action="store_true", help="small configs (default without CUDA)")
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="solver steps (default 40; 4 with --small)")
    ap.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's recipe; 64 small)")
    ap.add_argument("--max-sequence-length", type=int, default=None)
    ap.add_argument("--sample-batch-size", type=int, default=8)
    ap.add_argument("--train-batch-size", type=int, default=16)
    ap.add_argument("--decode-batch-size", type=int, default=16)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--storage-device", choices=["auto", "cpu"], default="auto")
    ap.add_argument("--base-weights", choices=["auto", "fp8"], default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    ap.add_argument("--vram", type=float, default=None, help="choose the memory settings for this budget (GiB)")
    ap.add_argument("--warmup", action="store_true", help="run one epoch first and time the second")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--json", default="gpu_profile.json", help="where to write the JSON results")
    return ap.parse_args(argv)


def main(argv=None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        args.small = True  # true sizes need a GPU; the CPU runs the same code on the small configs
    results = []
    for key in args.models:
        r = profile_model(key, args, device)
        results.append(r)
        print(f"{key}: published epoch ~{r['published_epoch_minutes']:.3g} min (reference "
              f"{REFERENCE_GPU_MINUTES_PER_EPOCH:.1f} GPU-min), peak {_fmt(r['peak_gib_measured'], '.1f')} GiB "
              f"measured / {r['peak_gib_estimated']:.1f} GiB estimated", flush=True)
    print(table(results))
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
           "device": device_name(device), "results": results}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"JSON: {args.json}")
    return results


if __name__ == "__main__":
    main()
