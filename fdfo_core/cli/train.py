"""`fdfo train`: one training session, as a recipe of four steps.

    resolve_run   the run: new (flags <- preset) or resumed (what the user omits comes from the
                  run itself: `run.resume`, the restore every front end shares)
    build_run     its parts: the reward, the judge, the backend (memory settings for --vram)
    run_training  the trainer with this command's progress bar and preview grids; resumes,
                  checks the run folder, trains; Ctrl-C keeps everything
    publish       say where the LoRA (and the best held-out LoRA) is; the final reward curve

Multi-GPU: ``torchrun --nproc_per_node 8 -m fdfo_core.cli train ...`` (every rank runs the recipe;
only the main rank writes previews and prints).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.memory import MemoryBudgetError
from ..config import FDFOConfig, config_values
from ..run.resume import ResumedRun
from .options import (
    CLIError, config_overrides, default_model, device_for, is_toy_model, parse_reward_options,
)


def load_prompts(path: str | None, model: str) -> list[str]:
    """The training prompts: the file given, else the toy's for the toy model; CLIError otherwise."""
    from ..files.prompts import read_prompts

    if path:
        return read_prompts(path)
    if is_toy_model(model):
        from ..toy import toy_prompt_sets

        return toy_prompt_sets()[0]
    raise CLIError("--prompts is required: a text file with one prompt per line")


def default_eval_prompts(model: str) -> list[str] | None:
    """Held-out prompts when none are given: the toy's held-out captions for the toy model, else
    None (the trainer then spreads its evaluation over the training prompts)."""
    if is_toy_model(model):
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


class Progress:
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


def run_folder(args: argparse.Namespace, dist) -> Path:
    """--run-dir; on resume the run's own folder; else runs/fdfo-<time> (the same on every rank)."""
    if args.run_dir:
        return Path(args.run_dir)
    if args.resume:
        from ..run.resume import run_folder_of

        return run_folder_of(args.resume)
    return Path(dist.broadcast_object(str(Path("runs") / time.strftime("fdfo-%Y%m%d-%H%M%S"))))


def model_source(model: str) -> str:
    """A local folder as an absolute path (so a resume from another directory finds it); a hub id as is."""
    p = Path(model)
    return str(p.resolve()) if p.exists() else model


# --- 1. resolve ----------------------------------------------------------------------------------


@dataclass
class TrainPlan:
    """What `fdfo train` runs, resolved from the flags and, on resume, from the run itself."""

    dist: Any  # run.distributed.DistContext
    device: str
    run_dir: Path
    resumed: ResumedRun | None
    model: str
    cfg: FDFOConfig
    #: model settings of this front end: max_sequence_length, flux_guidance (None: the model's)
    settings: dict
    prompts: list
    preview_prompts: list
    preview_every: int
    eval_prompts: list | None
    reward_spec: str
    reward_options: dict
    normalize: str | None
    normalize_options: dict
    judge_options: dict


def resolve_run(args: argparse.Namespace) -> TrainPlan:
    """The run to train: a new one from the flags (defaults <- preset <- TOML <- flags), or on
    --resume the run's own definition with what the user gave on top (`run.resume`). Reads files
    and the run's records only: no reward or model weights are loaded. CLIError for what the user
    must fix."""
    import torch

    from ..files.prompts import read_prompts
    from ..run.distributed import init_distributed
    from ..run.resume import new_or_resumed_definition, open_resumed_run, restore_judge_options, restore_reward

    dist = init_distributed(args.device if args.device != "auto" else None)
    device = device_for(args.device, dist.local_rank)
    run_dir = run_folder(args, dist)
    resumed = None
    if args.resume:
        if not Path(args.resume).exists():
            raise CLIError(f"--resume {args.resume}: no such checkpoint file or run folder")
        resumed = open_resumed_run(args.resume, run_dir)
        if resumed is None:
            raise CLIError(f"--resume {args.resume}: no FDFO checkpoint or run record (run.json) there")
        session = resumed.session
        if not args.threads and session.get("threads"):  # CPU runs repeat bit for bit at a fixed count
            torch.set_num_threads(int(session["threads"]))
            args.threads = int(session["threads"])
        if args.preview_every is None and session.get("preview_every") is not None:
            args.preview_every = int(session["preview_every"])
    preview_every = 1 if args.preview_every is None else args.preview_every
    # What the user gave, as RunDefinition fields (None: omitted); on resume the rest is restored.
    given: dict[str, Any] = {
        "model_source": model_source(args.model) if args.model else None,
        "config": config_values(args.preset, args.config, config_overrides(args)) or None,
        "model_settings": {k: v for k, v in (("max_sequence_length", args.max_sequence_length),
                                             ("flux_guidance", args.flux_guidance)) if v is not None} or None,
        "prompts": read_prompts(args.prompts) if args.prompts else None,
    }
    run = new_or_resumed_definition(resumed, given)
    model = run.model_source or default_model()
    if model is None:
        raise CLIError("--model is required: a diffusers pipeline folder or hub id of a supported family (see --help)")
    from ..backends.diffusers_backend import check_supported
    from ..families import get_family

    family = get_family(check_supported(model))  # cheap: before any reward or weight is loaded
    distilled = distilled_checkpoint(model, family)
    if resumed is not None and resumed.recorded.config is not None:
        cfg = FDFOConfig.from_dict(run.config).validate()
    else:  # a new run: defaults <- preset (the toy's for the toy model, else the family's) <- TOML <- flags
        preset = args.preset or ("toy" if is_toy_model(model) else (family.preset_name or family.name))
        cfg = new_run_config(preset, args.config, config_overrides(args), distilled)
    if distilled is not None and dist.is_main:
        print(f"warning: {distilled.warning(family.title, dataclasses.asdict(cfg))}", file=sys.stderr)
    settings = dict(run.model_settings or {})
    if is_toy_model(model) and settings.get("max_sequence_length") is None:
        from ..toy import TOY_MAX_SEQUENCE_LENGTH

        settings["max_sequence_length"] = TOY_MAX_SEQUENCE_LENGTH
    prompts = list(run.prompts) if run.prompts is not None else load_prompts(None, model)
    from ..rewards import parse_reward_spec
    from ..run.definition import format_spec

    given_reward_options = parse_reward_options(args.reward_opt)
    spec = format_spec(parse_reward_spec(args.reward)) if args.reward else None
    reward_spec, reward_options, normalize, normalize_options = restore_reward(
        resumed, spec, given_reward_options, args.reward_normalize)
    if args.preview_prompts:
        given_previews = read_prompts(args.preview_prompts, what="preview prompts file")
    elif args.preview_count is not None:
        given_previews = prompts[: args.preview_count]
    else:
        given_previews = None
    preview_prompts = resumed.prompts("preview_prompts", given_previews) if resumed is not None else given_previews
    if preview_prompts is None:
        preview_prompts = prompts[:8]
    if args.judge_opt and not cfg.judge:
        raise CLIError("--judge-opt is given but no --judge: name the judge reward, e.g. --judge hpsv2")
    # The judge's options and the held-out prompts: what the user gives, else (resume) the run's own.
    judge_options = restore_judge_options(resumed, cfg.judge, parse_reward_options(args.judge_opt))
    eval_prompts = None
    if cfg.eval_every:
        if args.eval_prompts:
            eval_prompts = read_prompts(args.eval_prompts)
        else:  # resumed: the run's own held-out prompts; else the default ones
            eval_prompts = (resumed.prompts("eval_prompts", None) if resumed is not None else None) \
                or default_eval_prompts(model)
    return TrainPlan(dist=dist, device=device, run_dir=run_dir, resumed=resumed, model=model, cfg=cfg,
                     settings=settings, prompts=prompts, preview_prompts=preview_prompts, preview_every=preview_every,
                     eval_prompts=eval_prompts, reward_spec=reward_spec, reward_options=reward_options,
                     normalize=normalize, normalize_options=normalize_options, judge_options=judge_options)


# --- 2. build ------------------------------------------------------------------------------------


@dataclass
class TrainParts:
    """What `build_run` loads: the reward, the judge (or None) and the backend, with the config
    that carries the memory settings chosen for --vram."""

    reward: Any
    judge: Any
    backend: Any
    cfg: FDFOConfig


def build_run(args: argparse.Namespace, plan: TrainPlan) -> TrainParts:
    """Load the reward, the judge and the diffusers backend of `plan` (with --vram, the memory
    settings chosen for that budget, printed; CLIError when nothing fits)."""
    from ..backends.diffusers_backend import build_backend
    from ..rewards import build_reward

    reward = build_reward(plan.reward_spec, plan.reward_options, device=plan.device, normalize=plan.normalize,
                          normalize_options=plan.normalize_options)
    cfg = plan.cfg
    judge = build_reward(cfg.judge, plan.judge_options, device=plan.device) if cfg.judge else None
    kwargs = {}
    if plan.settings.get("max_sequence_length") is not None:
        kwargs["max_sequence_length"] = plan.settings["max_sequence_length"]
    if plan.settings.get("flux_guidance") is not None:
        kwargs["guidance"] = plan.settings["flux_guidance"]
    try:
        backend = build_backend(plan.model, cfg, device=plan.device, vram=getattr(args, "vram", None), reward=reward,
                                world_size=plan.dist.world_size, **kwargs)
    except MemoryBudgetError as e:
        raise CLIError(str(e)) from None
    return TrainParts(reward=reward, judge=judge, backend=backend, cfg=backend.config)


# --- 3. run --------------------------------------------------------------------------------------


def run_training(args: argparse.Namespace, plan: TrainPlan, parts: TrainParts):
    """Train: the trainer for the config's method with this command's progress bar, reward curve
    and preview grids (runs/<run>/samples/), resumed through `run.resume.continue_run`; the run
    folder checked and recorded before anything is written. Returns the trainer, or None when the
    user pressed Ctrl-C (checkpoints and the LoRA trained so far are kept; said on stderr)."""
    import torch

    from ..backends.generation import amp_dtype, generate_images
    from ..files.drawing import image_grid, reward_curve_image, save_png, to_pil
    from ..methods import build_trainer
    from ..run.definition import FrontEnd
    from ..run.hooks import Callbacks
    from ..run.resume import continue_run

    dist, run_dir, cfg, backend = plan.dist, plan.run_dir, parts.cfg, parts.backend
    preview_prompts, preview_every = plan.preview_prompts, plan.preview_every
    progress = Progress(cfg.epochs, 0, enabled=dist.is_main and not args.no_progress)
    preview_seeds = list(range(len(preview_prompts)))
    amp = amp_dtype(cfg.precision, torch.device(plan.device))

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
        session={"argv": sys.argv[1:], "device": plan.device, "world_size": dist.world_size,
                 "threads": args.threads or None, "preview_every": preview_every},
        extra_bytes=previews * grid_side * max(256, cfg.height) * 3 // 2 + cfg.epochs * 100_000,
    )
    reward = parts.reward
    trainer = build_trainer(
        backend, reward, plan.prompts, cfg, run_dir=run_dir, dist=dist, reward_spec=reward.describe(),
        callbacks=Callbacks(on_progress=progress.phase, on_epoch_end=on_epoch_end, log=progress.write),
        definition={"preview_prompts": preview_prompts, "model_settings": plan.settings,
                    "model_source": model_source(plan.model)},
        front_end=front_end,
        eval_prompts=plan.eval_prompts, judge=parts.judge,
    )
    if plan.resumed is not None:
        continue_run(trainer, plan.resumed, allow_change=args.allow_change)
        progress.start = trainer.epoch
    trainer.start_run()  # checks the run folder and records the run before anything is written
    if dist.is_main:
        if trainer.epoch == 0:
            preview(None, 0)  # the base model: not a LoRA's preview
        progress.write(f"run folder: {run_dir}  ({len(plan.prompts)} prompts, reward {reward.describe()}, "
                       f"device {plan.device})")
    try:
        trainer.train()
    except KeyboardInterrupt:
        progress.close()
        if dist.is_main:
            where = trainer.rescued_lora or run_dir
            print(f"\nstopped: checkpoints are in {run_dir}, the LoRA trained so far in {where}; continue with: "
                  f"fdfo train --resume {run_dir}", file=sys.stderr)
        return None
    finally:
        progress.close()
    return trainer


# --- 4. publish ----------------------------------------------------------------------------------


def publish(plan: TrainPlan, trainer) -> None:
    """Say where the trained LoRA is (and the best held-out one, with its criterion), and draw the
    final reward curve with the guardrails' marks. Main rank only."""
    if not plan.dist.is_main:
        return
    from ..files.drawing import reward_curve_image, save_png

    run_dir = plan.run_dir
    print(f"LoRA: {run_dir / 'lora.safetensors'} (last, epoch {trainer.epoch})")
    guard = trainer.guardrails
    if guard is not None:
        save_png(reward_curve_image(trainer.history, guardrails=guard), run_dir / "reward_curve.png", "reward curve")
    if guard is not None and guard.best_lora_epoch is not None:
        from ..run.guardrails import best_lora_name

        print(f"best held-out LoRA: {run_dir / best_lora_name(trainer.lora_name)} (epoch {guard.best_lora_epoch}, "
              f"{guard.criterion_label} {guard.best_lora_value:.4f})")


def cmd_train(args: argparse.Namespace) -> int:
    """`fdfo train`: resolve the run -> build its parts -> train -> publish. 0 when done, 130 when
    stopped with Ctrl-C (everything kept; `fdfo train --resume RUN` continues)."""
    plan = resolve_run(args)
    parts = build_run(args, plan)
    trainer = run_training(args, plan, parts)
    if trainer is None:
        return 130
    publish(plan, trainer)
    return 0
