"""`fdfo` command line: the parser and the small commands (demo, convert-lora, fit-preference,
rewards); `fdfo train` is `cli.train`, `fdfo sample` is `cli.sample`, what they share `cli.options`.

Multi-GPU: ``torchrun --nproc_per_node 8 -m fdfo_core.cli train ...`` or
``accelerate launch -m fdfo_core.cli train ...`` (both set the process-group environment).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from ..files import storage
from ..config import PRESETS
from ..errors import ConfigError
from .options import CLIError, config_flags, device_for, family_list, parse_reward_options
from .sample import cmd_sample
from .train import cmd_train



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
             steps_per_sample=args.steps_per_sample)
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
                           holdout=args.holdout, seed=args.seed, device=device_for(args.device), log=print)
    out = model.save(args.out)
    print(f"wrote {out}: train with --reward preference --reward-opt preference.path={out}")
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fdfo", description="RL post-training of flow-matching text-to-image models with FDFO.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a LoRA toward a reward")
    t.add_argument("--model", help="diffusers pipeline folder or hub id of a supported family: "
                   + family_list() + " (default: the bundled toy model)")
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
    config_flags(t)
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

    from .demo import DEMO_EPOCHS, DEMO_EVAL_EVERY, DEMO_PAIRS_PER_EPOCH, DEMO_STEPS_PER_SAMPLE

    d = sub.add_parser("demo", help="the main job: FDFO on the bundled toy model, before/after grid in minutes")
    d.add_argument("--out", help="run folder (default runs/demo-<time>)")
    d.add_argument("--epochs", type=int, help=f"epochs (default {DEMO_EPOCHS})")
    d.add_argument("--pairs-per-epoch", type=int, help=f"pairs per epoch (default {DEMO_PAIRS_PER_EPOCH})")
    d.add_argument("--sample-batch-size", type=int)
    d.add_argument("--heldout-prompts", type=int, default=64, help="held-out captions for the before/after figures")
    d.add_argument("--seeds-per-prompt", type=int, default=2)
    d.add_argument("--eval-every", type=int, default=None, help=(
        "held-out evaluation every N epochs (curve points; the start and the end always; 0: only those; "
        f"default {DEMO_EVAL_EVERY})"))
    d.add_argument("--steps-per-sample", type=int, default=None, help=(
        f"train on a random subset of k of each sample's steps (0: all; default {DEMO_STEPS_PER_SAMPLE})"))
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
    from ..run.hooks import TrainingError

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
