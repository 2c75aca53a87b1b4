"""`fdfo` command line: train, sample, demo, convert-lora, fit-preference, rewards.

Multi-GPU: ``torchrun --nproc_per_node 8 -m fdfo_core.cli train ...`` or
``accelerate launch -m fdfo_core.cli train ...`` (both set the process-group environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any, Sequence

from .config import PRESETS, ConfigError, FDFOConfig, load_config


class CLIError(RuntimeError):
    """A user error: printed without a traceback."""


# --- helpers -----------------------------------------------------------------------------------


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per FDFOConfig field (--pairs-per-epoch ...), default None = keep config/preset."""
    hints = typing.get_type_hints(FDFOConfig)
    group = parser.add_argument_group("hyperparameters (defaults: the published FDFO recipe, see --preset)")
    for f in dataclasses.fields(FDFOConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        origin = typing.get_origin(tp)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"(default {default})"
        if origin is typing.Literal:
            group.add_argument(flag, choices=typing.get_args(tp), default=None, help=help_)
        elif tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif origin is tuple:
            group.add_argument(flag, nargs="+", default=None, help=help_)
        else:
            group.add_argument(flag, type=tp, default=None, help=help_)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(FDFOConfig):
        if f.name != "extra" and getattr(args, f.name, None) is not None:
            out[f.name] = getattr(args, f.name)
    return out


def parse_reward_options(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """["vlm.question=Is it red?", "pickscore.path=/w"] -> {"vlm": {"question": ...}, ...}."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        name, dot, opt = key.partition(".")
        if not sep or not dot or not name or not opt:
            raise CLIError(f"--reward-opt {item!r}: write it as reward.option=value, e.g. vlm.question='Is it red?'")
        out.setdefault(name.strip(), {})[opt.strip()] = value
    return out


def _device(arg: str | None, local_rank: int = 0) -> str:
    import torch

    if arg and arg != "auto":
        return arg
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def _default_model() -> str | None:
    from .toy import default_toy_model_path

    try:
        return str(default_toy_model_path())
    except FileNotFoundError:
        return None


def _is_toy(model: str) -> bool:
    toy = _default_model()
    return toy is not None and Path(model).resolve() == Path(toy).resolve()


def _load_prompts(path: str | None, model: str) -> list[str]:
    from .prompts import read_prompts

    if path:
        return read_prompts(path)
    if _is_toy(model):
        from .toy import toy_prompt_sets

        return toy_prompt_sets()[0]
    raise CLIError("--prompts is required: a text file with one prompt per line")


def _build_backend(model: str, cfg: FDFOConfig, device: str, args: argparse.Namespace):
    from .backends.diffusers_backend import build_backend

    kwargs = {}
    if getattr(args, "max_sequence_length", None) is not None:
        kwargs["max_sequence_length"] = args.max_sequence_length
    if getattr(args, "flux_guidance", None) is not None:
        kwargs["flux_guidance"] = args.flux_guidance
    return build_backend(model, cfg, device=device, **kwargs)


class _Progress:
    """A tqdm bar over epochs whose description follows the current phase."""

    def __init__(self, total_epochs: int, start: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_epochs, initial=start, unit="epoch", disable=not enabled, dynamic_ncols=True)
        self._last = 0.0

    def phase(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last > 0.25 or done == total:
            self._last = now
            self.bar.set_description(f"{name} {done}/{total}")

    def epoch(self, metrics: dict[str, Any]) -> None:
        self.bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}+-{metrics['reward_std']:.4f}",
                             clip=f"{metrics['clip_fraction']:.3f}")
        self.bar.update(1)

    def write(self, msg: str) -> None:
        self.bar.write(msg)

    def close(self) -> None:
        self.bar.close()


def reward_curve_image(history: Sequence[dict[str, Any]], title: str = "reward during training"):
    from .images import line_plot

    xs = [m["epoch"] for m in history]
    return line_plot(
        {"reward (train pairs)": (xs, [m["reward_mean"] for m in history])},
        bands={"reward (train pairs)": [m["reward_std"] / max(1, 2 * m["pairs"]) ** 0.5 for m in history]},
        title=title, xlabel="epoch", ylabel="reward",
    )


# --- train -------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .distributed import init_distributed
    from .generation import generate_images
    from .images import image_grid, save_png
    from .rewards import build_reward
    from .baselines import build_trainer
    from .trainer import Callbacks, amp_dtype

    model = args.model or _default_model()
    if model is None:
        raise CLIError("--model is required: a diffusers SD3/SD3.5/Flux folder or hub id")
    dist = init_distributed(args.device if args.device != "auto" else None)
    device = _device(args.device, dist.local_rank)
    run_dir = Path(args.run_dir) if args.run_dir else None
    resume = args.resume
    if resume and run_dir is None:
        p = Path(resume)
        run_dir = p if p.is_dir() else p.parent.parent if p.parent.name == "checkpoints" else p.parent
    if run_dir is None:
        run_dir = Path("runs") / time.strftime("fdfo-%Y%m%d-%H%M%S")
        run_dir = Path(dist.broadcast_object(str(run_dir)))

    toml = args.config
    if toml is None and resume and (run_dir / "config.json").exists():
        base = json.loads((run_dir / "config.json").read_text())
        cfg = FDFOConfig.from_dict({**base, **_overrides(args)}).validate()
    else:
        preset = args.preset or ("toy" if _is_toy(model) else None)
        cfg = load_config(preset, toml, _overrides(args))
    if _is_toy(model) and args.max_sequence_length is None:
        from .toy import TOY_MAX_SEQUENCE_LENGTH

        args.max_sequence_length = TOY_MAX_SEQUENCE_LENGTH
    from .backends.diffusers_backend import check_supported

    check_supported(model)
    prompts = _load_prompts(args.prompts, model)
    reward = build_reward(args.reward, parse_reward_options(args.reward_opt), device=device,
                          normalize=args.reward_normalize)
    backend = _build_backend(model, cfg, device, args)

    progress = _Progress(cfg.epochs, 0, enabled=dist.is_main and not args.no_progress)
    preview_prompts = (
        [p for p in Path(args.preview_prompts).read_text().splitlines() if p.strip()]
        if args.preview_prompts else prompts[: args.preview_count]
    )
    preview_seeds = list(range(len(preview_prompts)))
    amp = amp_dtype(cfg.precision, torch.device(device))

    def preview(epoch: int) -> None:
        if not (dist.is_main and args.preview_every):
            return
        images = generate_images(backend, preview_prompts, preview_seeds, cfg.num_steps, cfg.height, cfg.width,
                                 cfg.cfg_scale, cfg.negative_prompt, amp=amp)
        grid = image_grid(images, ncol=min(8, len(preview_prompts)), scale=max(1, 256 // cfg.width))
        save_png(grid, run_dir / "samples" / f"epoch-{epoch:05d}.png")

    def on_epoch_end(trainer, metrics):
        progress.epoch(metrics)
        if dist.is_main:
            save_png(reward_curve_image(trainer.history), run_dir / "reward_curve.png")
            if args.preview_every and metrics["epoch"] % args.preview_every == 0:
                preview(metrics["epoch"])

    trainer = build_trainer(
        backend, reward, prompts, cfg, run_dir=run_dir, dist=dist, reward_spec=reward.describe(),
        callbacks=Callbacks(on_progress=progress.phase, on_epoch_end=on_epoch_end, log=progress.write),
    )
    if resume:
        trainer.resume(resume)
        progress.bar.n = trainer.epoch
        progress.bar.refresh()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps({
            "model": str(model), "reward": args.reward, "reward_options": parse_reward_options(args.reward_opt),
            "reward_normalize": args.reward_normalize, "prompts": args.prompts, "num_prompts": len(prompts),
            "device": device, "world_size": dist.world_size, "argv": sys.argv[1:],
            "fingerprint": backend.fingerprint(),
        }, indent=2))
        if trainer.epoch == 0:
            preview(0)
        progress.write(f"run folder: {run_dir}  ({len(prompts)} prompts, reward {reward.describe()}, device {device})")
    try:
        trainer.train()
    except KeyboardInterrupt:
        progress.close()
        if dist.is_main:
            print(f"\nstopped: checkpoints and the LoRA trained so far are in {run_dir}", file=sys.stderr)
        return 130
    progress.close()
    if dist.is_main:
        print(f"LoRA: {run_dir / 'lora.safetensors'}")
    return 0


# --- sample ------------------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    from .backends.diffusers_backend import DiffusersBackend, load_lora_into_pipeline, load_pipeline, model_settings
    from .generation import generate_images
    from .images import image_grid, save_png, to_pil
    from .prompts import read_prompts

    from .toy import TOY_MAX_SEQUENCE_LENGTH as TOY_SEQ

    model = args.model or _default_model()
    if model is None:
        raise CLIError("--model is required")
    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += read_prompts(args.prompts)
    if not prompts:
        raise CLIError("give --prompt TEXT (repeatable) or --prompts FILE")
    prompts = [p for p in prompts for _ in range(args.per_prompt)]
    seeds = [args.seed + i for i in range(len(prompts))]
    device = _device(args.device)
    pipe = load_pipeline(model)
    if args.lora:
        load_lora_into_pipeline(pipe, args.lora, scale=args.lora_scale)
    settings = model_settings(model) if Path(model).exists() else {}
    height = args.height or settings.get("height", 64 if _is_toy(model) else 1024)
    width = args.width or settings.get("width", height)
    cfg = FDFOConfig(height=height, width=width, lora_rank=1)
    seq_len = args.max_sequence_length
    if seq_len is None:
        seq_len = settings.get("max_sequence_length", TOY_SEQ if _is_toy(model) else None)
    backend = DiffusersBackend(pipe, cfg, device=device, max_sequence_length=seq_len, add_adapter=False)
    images = generate_images(backend, prompts, seeds, args.num_steps, height, width, args.cfg, args.negative_prompt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        to_pil(im).save(out / f"{i:04d}.png")
    save_png(image_grid(images, ncol=min(8, len(images)), scale=max(1, 256 // width)), out / "grid.png")
    print(f"{len(images)} images in {out} (grid.png)")
    return 0


# --- demo ---------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    overrides = {"sample_batch_size": args.sample_batch_size} if args.sample_batch_size else {}
    run_demo(out, epochs=args.epochs, pairs_per_epoch=args.pairs_per_epoch, heldout_prompts=args.heldout_prompts,
             seeds_per_prompt=args.seeds_per_prompt, eval_every=args.eval_every, seed=args.seed, overrides=overrides)
    return 0


# --- convert-lora / rewards ----------------------------------------------------------------------


def cmd_convert_lora(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .backends.diffusers_backend import load_pipeline, lora_to_diffusers_state_dict

    pipe = load_pipeline(args.model)
    sd = lora_to_diffusers_state_dict(pipe, args.lora)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, args.out)
    print(f"wrote {args.out}: load it with pipe.load_lora_weights({str(args.out)!r})")
    return 0


def cmd_rewards(args: argparse.Namespace) -> int:
    from .rewards import available_rewards, ensure_registered, reward_options

    ensure_registered()
    for name, desc in available_rewards().items():
        print(f"{name:24s} {desc}")
        if args.verbose:
            for opt, default in reward_options(name).items():
                print(f"    {name}.{opt} = {default!r}")
    return 0


def cmd_fit_preference(args: argparse.Namespace) -> int:
    from .rewards.preference import fit_preference

    model = fit_preference(args.picks, encoder=args.encoder, encoder_path=args.encoder_path, model=args.encoder_model,
                           head=args.head, hidden=args.hidden, use_prompt=args.use_prompt, weight_decay=args.weight_decay,
                           holdout=args.holdout, seed=args.seed, device=_device(args.device), log=print)
    out = model.save(args.out)
    print(f"wrote {out}: train with --reward preference --reward-opt preference.path={out}")
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fdfo", description="RL post-training of flow-matching text-to-image models with FDFO.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a LoRA toward a reward")
    t.add_argument("--model", help="diffusers SD3/SD3.5/Flux folder or hub id (default: the bundled toy model)")
    t.add_argument("--prompts", help="text file, one prompt per line (or a JSON list)")
    t.add_argument("--reward", default="toy_alignment", help='reward spec, e.g. "pickscore + 0.1*vlm" (see `fdfo rewards`)')
    t.add_argument("--reward-opt", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="reward option, e.g. pickscore.path=/weights/PickScore_v1 (repeatable)")
    t.add_argument("--reward-normalize", choices=["per_prompt"], default=None, help="normalise rewards per prompt")
    t.add_argument("--config", help="TOML file with hyperparameters (a [fdfo] table or top-level keys)")
    t.add_argument("--preset", choices=sorted(PRESETS), help="named hyperparameter preset")
    t.add_argument("--run-dir", help="output folder (default runs/fdfo-<time>)")
    t.add_argument("--resume", help="checkpoint file or run folder to continue from")
    t.add_argument("--device", default="auto", help="cuda, cuda:1, cpu (default: cuda if available)")
    t.add_argument("--max-sequence-length", type=int, help="text tokens (T5) per prompt")
    t.add_argument("--flux-guidance", type=float, help="Flux guidance embedding value (default 3.5)")
    t.add_argument("--preview-every", type=int, default=1, help="sample grid every N epochs (0: never)")
    t.add_argument("--preview-count", type=int, default=8, help="how many fixed prompts/seeds in the grid")
    t.add_argument("--preview-prompts", help="text file with the grid's prompts (default: the first training prompts)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    _config_flags(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate images with or without a LoRA")
    s.add_argument("--model", help="diffusers folder or hub id (default: the bundled toy model)")
    s.add_argument("--lora", help="FDFO LoRA .safetensors")
    s.add_argument("--lora-scale", type=float, default=1.0)
    s.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    s.add_argument("--prompts", help="text file, one prompt per line")
    s.add_argument("--per-prompt", type=int, default=1, help="images per prompt (consecutive seeds)")
    s.add_argument("--seed", type=int, default=0, help="seed of the first image")
    s.add_argument("--num-steps", type=int, default=28)
    s.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    s.add_argument("--negative-prompt", default="")
    s.add_argument("--height", type=int)
    s.add_argument("--width", type=int)
    s.add_argument("--max-sequence-length", type=int)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", default="samples")
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("demo", help="the main job: FDFO on the bundled toy model, before/after grid in minutes")
    d.add_argument("--out", help="run folder (default runs/demo-<time>)")
    d.add_argument("--epochs", type=int, help="epochs (default: the toy preset's)")
    d.add_argument("--pairs-per-epoch", type=int)
    d.add_argument("--sample-batch-size", type=int)
    d.add_argument("--heldout-prompts", type=int, default=64, help="held-out captions for the before/after figures")
    d.add_argument("--seeds-per-prompt", type=int, default=2)
    d.add_argument("--eval-every", type=int, default=5, help="held-out evaluation every N epochs (curve points)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    for sp in (t, s, d):
        sp.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice); CPU runs repeat bit for bit at a fixed count")

    c = sub.add_parser("convert-lora", help="write an FDFO LoRA in diffusers/peft keys (pipe.load_lora_weights)")
    c.add_argument("lora")
    c.add_argument("out")
    c.add_argument("--model", required=True, help="the model the LoRA was trained on (for module shapes)")
    c.set_defaults(func=cmd_convert_lora)

    f = sub.add_parser("fit-preference", help="fit a preference reward (Bradley-Terry) on picks.jsonl files",
                       description="Fit a Bradley-Terry preference model on an artist's picks and save it as a "
                                   "reward (--reward preference --reward-opt preference.path=OUT).")
    f.add_argument("picks", nargs="+", help="picks.jsonl files or run folders holding one")
    f.add_argument("-o", "--out", required=True, help="output .safetensors file (written atomically)")
    f.add_argument("--encoder", default="clip", choices=["clip", "siglip", "dinov2", "csd"],
                   help="frozen image encoder the model is fitted on (default clip)")
    f.add_argument("--encoder-path", help="the encoder's weights folder or file (default: the reward folders, see docs/rewards.md)")
    f.add_argument("--encoder-model", help="Hugging Face id of the encoder, looked up in the offline cache")
    f.add_argument("--head", default="linear", choices=["linear", "mlp"], help="linear (default) or a one-hidden-layer MLP")
    f.add_argument("--hidden", type=int, default=64, help="hidden units of the mlp head")
    f.add_argument("--use-prompt", action="store_true", help="let the preference depend on the prompt (clip/siglip)")
    f.add_argument("--weight-decay", type=float, default=1e-2, help="L2 penalty on the head's weights")
    f.add_argument("--holdout", type=float, default=0.2, help="share of picks held out to measure accuracy")
    f.add_argument("--seed", type=int, default=0, help="chooses the held-out picks (and the MLP's initialisation)")
    f.add_argument("--device", default="auto", help="cuda, cpu (default: cuda if available)")
    f.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    f.set_defaults(func=cmd_fit_preference)

    r = sub.add_parser("rewards", help="list the available rewards")
    r.add_argument("-v", "--verbose", action="store_true", help="also list each reward's options")
    r.set_defaults(func=cmd_rewards)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .backend import BackendError
    from .lora_files import LoraFileError
    from .prompts import PromptError
    from .rewards import RewardError
    from .trainer import TrainingError

    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (CLIError, ConfigError, BackendError, LoraFileError, PromptError, RewardError, TrainingError,
            FileNotFoundError) as e:
        print(f"fdfo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
