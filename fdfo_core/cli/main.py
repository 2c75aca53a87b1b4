"""`fdfo` command line: train, sample, demo, convert-lora, fit-preference, rewards.

Multi-GPU: ``torchrun --nproc_per_node 8 -m fdfo_core.cli train ...`` or
``accelerate launch -m fdfo_core.cli train ...`` (both set the process-group environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path
from typing import Any, Sequence

from ..files import storage
from ..config import PRESETS, ConfigError, FDFOConfig, config_values
from ..backends.memory import MemoryBudgetError


class CLIError(RuntimeError):
    """A user error: printed without a traceback."""


def _family_list() -> str:
    from ..families import all_families

    return ", ".join(f"{f.title} ({', '.join(f.diffusers_pipelines)})" for f in all_families() if f.diffusers_pipelines)


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
    from ..toy import default_toy_model_path

    try:
        return str(default_toy_model_path())
    except FileNotFoundError:
        return None


def _is_toy(model: str) -> bool:
    toy = _default_model()
    return toy is not None and Path(model).resolve() == Path(toy).resolve()


def _load_prompts(path: str | None, model: str) -> list[str]:
    from ..files.prompts import read_prompts

    if path:
        return read_prompts(path)
    if _is_toy(model):
        from ..toy import toy_prompt_sets

        return toy_prompt_sets()[0]
    raise CLIError("--prompts is required: a text file with one prompt per line")


def _default_eval_prompts(model: str) -> list[str] | None:
    """Held-out prompts when none are given: the toy's held-out captions for the toy model, else
    None (the trainer then spreads its evaluation over the training prompts)."""
    if _is_toy(model):
        from ..toy import toy_prompt_sets

        return toy_prompt_sets()[1]
    return None


def new_run_config(preset: str | None, toml_path, overrides, distilled=None) -> FDFOConfig:
    """A new run's config: defaults <- preset <- a distilled checkpoint's sampling settings (steps, no
    CFG; `Family.distilled`) <- TOML file <- flags."""
    values = config_values(preset)
    if distilled is not None:
        values.update(distilled.settings)
    values.update(config_values(None, toml_path, overrides))
    return FDFOConfig.from_dict(values).validate()


def distilled_checkpoint(model: str | Path, family):
    """The family's distilled checkpoint (`Family.distilled`) that `model` (a diffusers folder or hub
    id) is, by its name, model_index.json and transformer config (read from a local folder), or None."""
    from ..backends.diffusers_backend import pipeline_index
    from ..files.text_files import read_json_file

    path = Path(model)
    config_file = path / "transformer" / "config.json"
    transformer = read_json_file(config_file, "transformer config") if config_file.exists() else None
    name = str(model)
    if path.exists():  # the folder's own name (a hub cache snapshot: its repository's), not its parents'
        path = path.resolve()
        name = path.parent.parent.name if path.parent.name == "snapshots" else path.name
    return family.distilled_checkpoint(name, pipeline_index(model), transformer)


def _build_backend(model: str, cfg: FDFOConfig, device: str, args: argparse.Namespace, reward=None):
    """The diffusers backend for `model`; with --vram, the memory settings chosen for that budget
    (printed). Returns (backend, config): the config carries the chosen settings."""
    from ..backends.diffusers_backend import build_backend

    kwargs = {}
    if getattr(args, "max_sequence_length", None) is not None:
        kwargs["max_sequence_length"] = args.max_sequence_length
    if getattr(args, "flux_guidance", None) is not None:
        kwargs["guidance"] = args.flux_guidance
    vram = getattr(args, "vram", None)
    backend = build_backend(model, cfg, device=device, vram=vram, reward=reward,
                            world_size=getattr(args, "_world_size", 1), **kwargs)
    return backend, backend.config


class _Progress:
    """A tqdm bar over epochs whose description follows the current phase. The bar appears with
    the first phase of training (so an error before training prints no empty bar)."""

    def __init__(self, total_epochs: int, start: int, enabled: bool):
        self.total, self.start, self.enabled = total_epochs, start, enabled
        self._bar = None
        self._last = 0.0

    @property
    def bar(self):
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.start, unit="epoch", disable=not self.enabled,
                             dynamic_ncols=True)
        return self._bar

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
        from tqdm.auto import tqdm

        (self._bar or tqdm).write(msg)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --- train -------------------------------------------------------------------------------------


def _run_folder(args: argparse.Namespace, dist) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    if args.resume:
        p = Path(args.resume)
        return p if p.is_dir() else p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return Path(dist.broadcast_object(str(Path("runs") / time.strftime("fdfo-%Y%m%d-%H%M%S"))))


def _model_source(model: str) -> str:
    """A local folder as an absolute path (so a resume from another directory finds it); a hub id as is."""
    p = Path(model)
    return str(p.resolve()) if p.exists() else model


def _last_session(run_dir: Path) -> dict[str, Any]:
    from ..run.definition import RunRecords

    sessions = (RunRecords(run_dir).read() or {}).get("sessions") or [{}]
    return sessions[-1] if isinstance(sessions[-1], dict) else {}


def _resolve_reward(args: argparse.Namespace, recorded) -> tuple[str, dict, str | None, dict]:
    """(spec, options, normalisation mode, normalisation options): what the user gave, and for
    what they omitted on a resume, what the run recorded."""
    from ..rewards import parse_reward_spec
    from ..run.definition import format_spec

    given = parse_reward_options(args.reward_opt)
    spec = format_spec(parse_reward_spec(args.reward)) if args.reward else None
    options: dict[str, dict[str, Any]] = {}
    if recorded is not None and recorded.reward is not None and spec in (None, recorded.reward):
        spec = recorded.reward  # the same reward: options the user omits keep the run's values
        options = {k: dict(v) for k, v in (recorded.reward_options or {}).items()}
    for name, opts in given.items():
        options.setdefault(name, {}).update(opts)
    norm = dict((recorded.reward_normalization if recorded is not None else None) or {"mode": "none"})
    if args.reward_normalize is not None:
        norm = {"mode": args.reward_normalize}
    mode = norm.pop("mode", "none")
    norm = {k: v for k, v in norm.items() if v is not None}
    return spec or "toy_alignment", options, (None if mode == "none" else mode), norm


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ..methods import build_trainer
    from ..run.distributed import init_distributed
    from ..backends.generation import generate_images
    from ..files.drawing import image_grid, reward_curve_image, save_png, to_pil
    from ..rewards import build_reward
    from ..run.definition import FrontEnd, RunDefinition, recorded_definition, restore
    from ..run.trainer import Callbacks, amp_dtype

    dist = init_distributed(args.device if args.device != "auto" else None)
    device = _device(args.device, dist.local_rank)
    run_dir = _run_folder(args, dist)
    resume = args.resume
    # --- on resume, what the user omits comes from the run itself (run.definition) -------------
    recorded = None
    if resume:
        if not Path(resume).exists():
            raise CLIError(f"--resume {resume}: no such checkpoint file or run folder")
        recorded = recorded_definition(resume)
        if recorded is None:
            raise CLIError(f"--resume {resume}: no FDFO checkpoint or run record (run.json) there")
        session = _last_session(run_dir)
        if not args.threads and session.get("threads"):  # CPU runs repeat bit for bit at a fixed count
            torch.set_num_threads(int(session["threads"]))
            args.threads = int(session["threads"])
        if args.preview_every is None and session.get("preview_every") is not None:
            args.preview_every = int(session["preview_every"])
    if args.preview_every is None:
        args.preview_every = 1
    # What the user gave, as RunDefinition fields (None: omitted); on resume the rest is restored.
    from ..files.prompts import read_prompts

    given: dict[str, Any] = {
        "model_source": _model_source(args.model) if args.model else None,
        "config": config_values(args.preset, args.config, _overrides(args)) or None,
        "model_settings": {k: v for k, v in (("max_sequence_length", args.max_sequence_length),
                                             ("flux_guidance", args.flux_guidance)) if v is not None} or None,
        "prompts": read_prompts(args.prompts) if args.prompts else None,
    }
    run = restore(recorded, given) if recorded is not None else RunDefinition(**given)
    model = run.model_source or _default_model()
    if model is None:
        raise CLIError("--model is required: a diffusers pipeline folder or hub id of a supported family (see --help)")
    from ..backends.diffusers_backend import check_supported
    from ..families import get_family

    family = get_family(check_supported(model))  # cheap: before any reward or weight is loaded
    distilled = distilled_checkpoint(model, family)
    if recorded is not None and recorded.config is not None:
        cfg = FDFOConfig.from_dict(run.config).validate()
    else:  # a new run: defaults <- preset (the toy's for the toy model, else the family's) <- TOML <- flags
        preset = args.preset or ("toy" if _is_toy(model) else (family.preset_name or family.name))
        cfg = new_run_config(preset, args.config, _overrides(args), distilled)
    if distilled is not None and dist.is_main:
        print(f"warning: {distilled.warning(family.title, dataclasses.asdict(cfg))}", file=sys.stderr)
    settings = dict(run.model_settings or {})
    if _is_toy(model) and settings.get("max_sequence_length") is None:
        from ..toy import TOY_MAX_SEQUENCE_LENGTH

        settings["max_sequence_length"] = TOY_MAX_SEQUENCE_LENGTH
    args.max_sequence_length = settings.get("max_sequence_length")
    args.flux_guidance = settings.get("flux_guidance")
    prompts = list(run.prompts) if run.prompts is not None else _load_prompts(None, model)
    spec, reward_options, normalize, normalize_options = _resolve_reward(args, recorded)
    reward = build_reward(spec, reward_options, device=device, normalize=normalize,
                          normalize_options=normalize_options)
    if args.preview_prompts:
        preview_prompts = read_prompts(args.preview_prompts, what="preview prompts file")
    elif args.preview_count is not None or run.preview_prompts is None:
        preview_prompts = prompts[: args.preview_count if args.preview_count is not None else 8]
    else:
        preview_prompts = list(run.preview_prompts)
    if args.judge_opt and not cfg.judge:
        raise CLIError("--judge-opt is given but no --judge: name the judge reward, e.g. --judge hpsv2")
    # The judge's options and the held-out prompts: what the user gives, else (resume) the run's own.
    same_judge = recorded is not None and (recorded.config or {}).get("judge", "") == cfg.judge
    judge_options = {k: dict(v) for k, v in ((recorded.judge_options if same_judge else None) or {}).items()}
    for name, opts in parse_reward_options(args.judge_opt).items():
        judge_options.setdefault(name, {}).update(opts)
    judge = build_reward(cfg.judge, judge_options, device=device) if cfg.judge else None
    eval_prompts = None
    if cfg.eval_every:
        if args.eval_prompts:
            eval_prompts = read_prompts(args.eval_prompts)
        elif recorded is not None and recorded.eval_prompts:
            eval_prompts = list(recorded.eval_prompts)
        else:
            eval_prompts = _default_eval_prompts(model)
    args._world_size = dist.world_size
    try:
        backend, cfg = _build_backend(model, cfg, device, args, reward=reward)
    except MemoryBudgetError as e:
        raise CLIError(str(e)) from None

    progress = _Progress(cfg.epochs, 0, enabled=dist.is_main and not args.no_progress)
    preview_seeds = list(range(len(preview_prompts)))
    amp = amp_dtype(cfg.precision, torch.device(device))
    preview_every = args.preview_every

    def preview(trainer, epoch: int) -> None:
        if not (dist.is_main and preview_every):
            return
        images = generate_images(backend, preview_prompts, preview_seeds, cfg.num_steps, cfg.height, cfg.width,
                                 cfg.cfg_scale, cfg.negative_prompt, amp=amp)
        if trainer is not None and images.ndim == 4 and images.shape[1] == 3:  # the first one: <lora>.preview.png
            trainer.preview_image = to_pil(images[0])
        grid = image_grid(images, ncol=min(8, len(preview_prompts)), scale=max(1, 256 // cfg.width))
        save_png(grid, run_dir / "samples" / f"epoch-{epoch:05d}.png", "preview grid", make_folder=True)

    def on_epoch_end(trainer, metrics):
        progress.epoch(metrics)
        if dist.is_main:
            save_png(reward_curve_image(trainer.history, guardrails=trainer.guardrails), run_dir / "reward_curve.png",
                     "reward curve")
            if preview_every and metrics["epoch"] % preview_every == 0:
                preview(trainer, metrics["epoch"])

    previews = (cfg.epochs // preview_every + 1) if preview_every else 0
    grid_side = max(256, cfg.width) * min(8, len(preview_prompts))
    front_end = FrontEnd(
        name="cli",
        resume_hint=f"fdfo train --resume {run_dir}",
        new_run_hint="start a new run (leave out --resume, or give another --run-dir)",
        restore_hint="leave those options out (what you omit is restored from the run)",
        allow_change_hint="repeat the command with --allow-change",
        session={"argv": sys.argv[1:], "device": device, "world_size": dist.world_size,
                 "threads": args.threads or None, "preview_every": preview_every},
        extra_bytes=previews * grid_side * max(256, cfg.height) * 3 // 2 + cfg.epochs * 100_000,
    )
    trainer = build_trainer(
        backend, reward, prompts, cfg, run_dir=run_dir, dist=dist, reward_spec=reward.describe(),
        callbacks=Callbacks(on_progress=progress.phase, on_epoch_end=on_epoch_end, log=progress.write),
        definition={"preview_prompts": preview_prompts, "model_settings": settings, "model_source": _model_source(model)},
        front_end=front_end,
        eval_prompts=eval_prompts, judge=judge,
    )
    if resume:
        trainer.resume(resume, allow_change=args.allow_change)
        progress.start = trainer.epoch
    trainer.start_run()  # checks the run folder and records the run before anything is written
    if dist.is_main:
        if trainer.epoch == 0:
            preview(None, 0)  # the base model: not a LoRA's preview
        progress.write(f"run folder: {run_dir}  ({len(prompts)} prompts, reward {reward.describe()}, device {device})")
    try:
        trainer.train()
    except KeyboardInterrupt:
        progress.close()
        if dist.is_main:
            where = trainer.rescued_lora or run_dir
            print(f"\nstopped: checkpoints are in {run_dir}, the LoRA trained so far in {where}; continue with: "
                  f"fdfo train --resume {run_dir}", file=sys.stderr)
        return 130
    finally:
        progress.close()
    if dist.is_main:
        print(f"LoRA: {run_dir / 'lora.safetensors'} (last, epoch {trainer.epoch})")
        guard = trainer.guardrails
        if guard is not None:
            save_png(reward_curve_image(trainer.history, guardrails=guard), run_dir / "reward_curve.png", "reward curve")
        if guard is not None and guard.best_lora_epoch is not None:
            from ..run.guardrails import best_lora_name

            print(f"best held-out LoRA: {run_dir / best_lora_name(trainer.lora_name)} (epoch {guard.best_lora_epoch}, "
                  f"{guard.criterion_label} {guard.best_lora_value:.4f})")
    return 0


# --- sample ------------------------------------------------------------------------------------

#: Built-in defaults of `fdfo sample` when neither a flag, the LoRA nor the model says otherwise.
SAMPLE_DEFAULTS = {"num_steps": 28, "cfg_scale": 1.0, "negative_prompt": "", "flux_guidance": 3.5}


def sampling_settings(args: argparse.Namespace, lora_meta: dict[str, Any], model_meta: dict[str, Any],
                      model_defaults: dict[str, Any], family) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, where each came from) for `fdfo sample`: an explicit flag wins, then the LoRA's
    metadata (the config it was trained with), then the model folder's fdfo.json, then the
    model's own default size / the built-in defaults. --height without --width means a square.
    family: the model's family (or its name); the guidance value only for families with a guidance
    embedding."""
    from ..families import get_family

    uses_guidance = get_family(family).guidance is not None
    config = lora_meta.get("config") if isinstance(lora_meta.get("config"), dict) else {}
    extra = config.get("extra") if isinstance(config.get("extra"), dict) else {}
    lora_values = {
        "height": config.get("height"), "width": config.get("width"), "num_steps": config.get("num_steps"),
        "cfg_scale": config.get("cfg_scale", lora_meta.get("cfg_scale")),
        "negative_prompt": config.get("negative_prompt"),
        "flux_guidance": lora_meta.get("flux_guidance", extra.get("flux_guidance")),
        "max_sequence_length": lora_meta.get("max_sequence_length"),
    }
    flags = {"height": args.height, "width": args.width, "num_steps": args.num_steps, "cfg_scale": args.cfg,
             "negative_prompt": args.negative_prompt, "flux_guidance": args.flux_guidance,
             "max_sequence_length": args.max_sequence_length}
    flag_names = {"cfg_scale": "--cfg"}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, flag in flags.items():
        if key == "flux_guidance" and not uses_guidance:
            continue
        candidates = [
            (flag, flag_names.get(key, "--" + key.replace("_", "-"))),
            (lora_values.get(key), "LoRA metadata"),
            (model_meta.get(key), "model's fdfo.json"),
            (model_defaults.get(key), "model default"),
            (SAMPLE_DEFAULTS.get(key), "default"),
        ]
        for value, source in candidates:
            if value is not None:
                values[key], sources[key] = value, source
                break
        else:
            values[key], sources[key] = None, "model default"
    if args.width is None and args.height is not None:  # --height alone asks for a square image
        values["width"], sources["width"] = args.height, "--height (square)"
    return values, sources


def format_settings(values: dict[str, Any], sources: dict[str, str]) -> str:
    width = max(len(k) for k in values)
    return "\n".join(f"  {k:<{width}}  {values[k]!r:<10} ({sources[k]})" for k in values)


def cmd_sample(args: argparse.Namespace) -> int:
    from ..backends.diffusers_backend import (
        DiffusersBackend,
        load_lora_into_pipeline,
        load_pipeline,
        model_settings,
        pipeline_family,
    )
    from ..backends.generation import generate_images
    from ..flow.image_sizes import check_backend_size
    from ..files.drawing import image_grid, save_png, to_pil
    from ..backends.lora_files import read_lora_metadata
    from ..files.prompts import read_prompts

    from ..toy import TOY_MAX_SEQUENCE_LENGTH as TOY_SEQ

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
    out = Path(args.out)
    storage.check_writable(out, "output folder")  # before the model loads: fail fast
    lora_meta = read_lora_metadata(args.lora) if args.lora else {}
    pipe = load_pipeline(model)
    if args.lora:
        load_lora_into_pipeline(pipe, args.lora, scale=args.lora_scale)
    model_meta = model_settings(model) if Path(model).exists() else {}
    model_defaults: dict[str, Any] = {}
    default_size = getattr(pipe, "default_sample_size", None)
    if default_size:
        model_defaults["height"] = model_defaults["width"] = int(default_size) * int(pipe.vae_scale_factor)
    if _is_toy(model):
        model_defaults["max_sequence_length"] = TOY_SEQ
    family = pipeline_family(pipe)
    values, sources = sampling_settings(args, lora_meta, model_meta, model_defaults, family)
    height, width = int(values["height"]), int(values["width"])
    cfg = FDFOConfig(height=height, width=width, lora_rank=1)
    kwargs = {"guidance": float(values["flux_guidance"])} if "flux_guidance" in values else {}
    backend = DiffusersBackend(pipe, cfg, device=device, max_sequence_length=values["max_sequence_length"],
                               add_adapter=False, **kwargs)
    values["max_sequence_length"] = backend.max_sequence_length
    check_backend_size(backend, height, width)  # before any sampling: the sizes that work, not a traceback
    where = f"the LoRA {args.lora}" if args.lora else "no LoRA"
    print(f"sampling {len(prompts)} image(s) with {where}; settings (a flag wins, then the LoRA's metadata, "
          f"then the model):\n{format_settings(values, sources)}")
    images = generate_images(backend, prompts, seeds, int(values["num_steps"]), height, width,
                             float(values["cfg_scale"]), values["negative_prompt"])
    grid = image_grid(images, ncol=min(8, len(images)), scale=max(1, 256 // width))
    warning = storage.space_warning(out, len(prompts) * height * width * 3 + grid.width * grid.height * 3,
                                    f"{len(prompts)} images and a grid")
    if warning:
        print(warning, file=sys.stderr)
    for i, im in enumerate(images):
        save_png(to_pil(im), out / f"{i:04d}.png", "sample image")
    save_png(grid, out / "grid.png", "sample grid")
    storage.write_json(out / "settings.json", {
        "model": str(model), "lora": args.lora, "lora_scale": args.lora_scale, "prompts": prompts, "seeds": seeds,
        "settings": values, "sources": sources,
    }, "sample settings")
    print(f"{len(images)} images in {out} (grid.png, settings.json)")
    return 0


# --- demo ---------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_THREADS, run_demo

    if not args.threads:  # the README's figures are those of this thread count, on any machine
        import torch

        torch.set_num_threads(DEMO_THREADS)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    overrides = {"sample_batch_size": args.sample_batch_size} if args.sample_batch_size else {}
    run_demo(out, epochs=args.epochs, pairs_per_epoch=args.pairs_per_epoch, heldout_prompts=args.heldout_prompts,
             seeds_per_prompt=args.seeds_per_prompt, eval_every=args.eval_every, seed=args.seed, overrides=overrides,
             steps_per_sample=args.steps_per_sample, own_evaluation=args.own_evaluation)
    return 0


# --- convert-lora / rewards ----------------------------------------------------------------------


def cmd_convert_lora(args: argparse.Namespace) -> int:
    from safetensors.torch import save as safetensors_bytes

    from ..backends.diffusers_backend import load_pipeline, lora_to_diffusers_state_dict

    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"{out} is a folder; give the file name of the converted LoRA, e.g. {out / 'peft.safetensors'}")
    storage.check_writable(out.parent, "output folder")  # before the model loads: fail fast
    pipe = load_pipeline(args.model)
    sd = lora_to_diffusers_state_dict(pipe, args.lora)
    # The converted file still names the run, epoch and base model it was trained in (as `fdfo.*`).
    from ..backends.lora_files import METADATA_PREFIX, read_lora_metadata

    source = read_lora_metadata(args.lora)
    meta = {METADATA_PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in source.items() if k in ("run_id", "epoch", "epochs", "best_epoch", "base_model_family", "fingerprint")}
    meta[METADATA_PREFIX + "converted_from"] = Path(args.lora).name
    storage.write_bytes(out, safetensors_bytes({k: v.contiguous() for k, v in sd.items()}, metadata=meta), "converted LoRA")
    print(f"wrote {args.out}: load it with pipe.load_lora_weights({str(args.out)!r})")
    return 0


def cmd_rewards(args: argparse.Namespace) -> int:
    from ..rewards import available_rewards, ensure_registered, reward_options

    if getattr(args, "rewards_command", None) == "fetch":
        return cmd_rewards_fetch(args)
    ensure_registered()
    for name, desc in available_rewards().items():
        print(f"{name:24s} {desc}")
        if args.verbose:
            for opt, default in reward_options(name).items():
                print(f"    {name}.{opt} = {default!r}")
    return 0


def cmd_rewards_fetch(args: argparse.Namespace) -> int:
    """`fdfo rewards fetch NAME...`: download what each reward needs into the reward folder."""
    from ..rewards.fetch import fetch_weights

    options = parse_reward_options(args.reward_opt)
    for name in args.names:
        try:
            result = fetch_weights(name, options.get(name, {}), dest=args.dest, log=print)
        except KeyboardInterrupt:
            print(f"fdfo rewards fetch: interrupted; the files fetched so far are kept: run the same command again "
                  "to continue", file=sys.stderr)
            return 130
        if result.folders:
            print(f"{name}: fetched {result.bytes_downloaded / 1e6:.1f} MB")
        print(f"{name}: ready (train with --reward {name})")
    return 0


def cmd_fit_preference(args: argparse.Namespace) -> int:
    from ..rewards.preference import fit_preference

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
    t.add_argument("--model", help="diffusers pipeline folder or hub id of a supported family: "
                   + _family_list() + " (default: the bundled toy model)")
    t.add_argument("--prompts", help="text file, one prompt per line (or a JSON list)")
    t.add_argument("--reward", help='reward spec, e.g. "pickscore + 0.1*vlm" (see `fdfo rewards`; default toy_alignment)')
    t.add_argument("--reward-opt", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="reward option, e.g. pickscore.path=/weights/PickScore_v1 (repeatable)")
    t.add_argument("--reward-normalize", choices=["none", "per_prompt"], default=None,
                   help="normalise rewards per prompt (default none)")
    t.add_argument("--config", help="TOML file with hyperparameters (a [fdfo] table or top-level keys)")
    t.add_argument("--preset", choices=sorted(PRESETS),
                   help="named hyperparameter preset, one per model family (default: the model's family's)")
    t.add_argument("--run-dir", help="output folder (default runs/fdfo-<time>)")
    t.add_argument("--resume", help=(
        "checkpoint file or run folder to continue from; whatever you omit (model, prompts, reward and its options, "
        "normalisation, preview prompts, hyperparameters) is restored from the run, and anything you give that "
        "differs is refused, except epochs, checkpoint cadence and memory/batch settings"))
    t.add_argument("--allow-change", action="store_true", help=(
        "with --resume: accept changes to what defines the run (prompts, reward, seed, ...) and record them as a new "
        "branch in the run's run.json"))
    t.add_argument("--device", default="auto", help="cuda, cuda:1, cpu (default: cuda if available)")
    t.add_argument("--vram", type=float, metavar="GB", help=(
        "GPU memory budget in GiB: choose fp8 / bf16 base weights, gradient checkpointing, where the recorded "
        "states live and the micro-batch sizes from memory estimates (fdfo_core/backends/memory.py), print the choice "
        "and the expected peak; refused with the smallest estimate when nothing fits"))
    t.add_argument("--max-sequence-length", type=int, help="text tokens (T5) per prompt")
    # dest stays flux_guidance: run records store the value under that name
    t.add_argument("--guidance", "--flux-guidance", dest="flux_guidance", type=float,
                   help="guidance-embedding value of guidance-distilled models (Flux.1 dev default 3.5)")
    t.add_argument("--preview-every", type=int, default=None, help="sample grid every N epochs (0: never; default 1)")
    t.add_argument("--preview-count", type=int, default=None, help="how many fixed prompts/seeds in the grid (default 8)")
    t.add_argument("--preview-prompts", help="text file with the grid's prompts (default: the first training prompts)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    t.add_argument("--eval-prompts", help="held-out prompts for the guardrails' evaluation, one per line (default: "
                   "the toy's held-out captions for the toy model, else spread over the training prompts)")
    t.add_argument("--judge-opt", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="option of the --judge reward, e.g. hpsv2.path=/weights/hpsv2 (repeatable)")
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
    # Unset sampling flags take the LoRA's training settings (its metadata), then the model's.
    s.add_argument("--num-steps", type=int, help="solver steps (default: the LoRA's, else 28)")
    s.add_argument("--cfg", type=float, help="classifier-free guidance scale, 1 = off (default: the LoRA's, else 1)")
    s.add_argument("--negative-prompt", help="unconditional prompt for CFG (default: the LoRA's, else empty)")
    s.add_argument("--height", type=int, help="pixels (default: the LoRA's training size, else the model's)")
    s.add_argument("--width", type=int, help="pixels (default: the LoRA's training size, else --height or the model's)")
    s.add_argument("--flux-guidance", type=float, help="Flux guidance embedding (default: the LoRA's, else 3.5)")
    s.add_argument("--max-sequence-length", type=int, help="text tokens (default: the LoRA's, else the model's)")
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
    d.add_argument("--eval-every", type=int, default=None, help=(
        "held-out evaluation every N epochs (curve points; the start and the end always; 0: only those; "
        "default 20, 5 with --own-evaluation)"))
    d.add_argument("--steps-per-sample", type=int, default=None, help=(
        "train on a random subset of k of each sample's steps (0: all; default 10, 0 with --own-evaluation)"))
    d.add_argument("--own-evaluation", action="store_true", help=(
        "the demo before issue 28 (its regression anchor): its own held-out evaluation (one seed per image) "
        "beside the run's 4 x 4 one, and training on every step; with --threads 2: 0.671 -> 0.7471"))
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    for sp in (t, s, d):
        sp.add_argument("--threads", type=int, default=0, help=(
            "torch CPU threads (default: torch's choice; the demo's: 2); CPU runs repeat bit for bit at a fixed count"))

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

    r = sub.add_parser("rewards", help="list the available rewards; `fdfo rewards fetch NAME...` downloads their weights")
    r.add_argument("-v", "--verbose", action="store_true", help="also list each reward's options")
    r.set_defaults(func=cmd_rewards)
    rsub = r.add_subparsers(dest="rewards_command")
    rf = rsub.add_parser("fetch", help="download the files a reward needs from the Hugging Face Hub into the reward "
                         "folder (resumable; honours HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE)")
    rf.add_argument("names", nargs="+", help="rewards or encoders: pickscore, hpsv2, aesthetic, clipscore, vlm, "
                    "reference, preference, clip, siglip, dinov2, csd")
    rf.add_argument("--dest", help="the reward folder to fetch into (default: the first folder of $FDFO_REWARDS_DIR, "
                    "or ComfyUI/models/fdfo_rewards when installed in ComfyUI)")
    rf.add_argument("--reward-opt", action="append", default=[], metavar="NAME.KEY=VALUE",
                    help="reward options that choose files: hpsv2.version=2.0, clipscore.model=ID, vlm.model=ID, "
                    "reference.encoder=csd")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..backends.interface import BackendError
    from ..backends.lora_files import LoraFileError
    from ..files.prompts import PromptError
    from ..rewards import RewardError
    from ..files.storage import StorageError
    from ..files.text_files import TextFileError
    from ..run.trainer import TrainingError

    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (CLIError, ConfigError, BackendError, LoraFileError, PromptError, RewardError, TrainingError,
            StorageError, TextFileError, FileNotFoundError) as e:
        print(f"fdfo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
