"""What the `fdfo` commands share: the user-error type, the device, the bundled toy model as the
default model, reward options given as NAME.KEY=VALUE, and the hyperparameter flags."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Sequence

from ..config import FDFOConfig


class CLIError(RuntimeError):
    """A user error: printed without a traceback."""


def family_list() -> str:
    """The supported families with their diffusers pipelines, for --help."""
    from ..families import all_families

    return ", ".join(f"{f.title} ({', '.join(f.diffusers_pipelines)})" for f in all_families() if f.diffusers_pipelines)


def config_flags(parser: argparse.ArgumentParser) -> None:
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


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameter flags the user gave ({field: value}; `config_flags`)."""
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


def device_for(arg: str | None, local_rank: int = 0) -> str:
    """--device as given, or for "auto" / None this rank's GPU when there is one, else the CPU."""
    import torch

    if arg and arg != "auto":
        return arg
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def default_model() -> str | None:
    """The bundled toy model's folder, or None when it is not installed."""
    from ..toy import default_toy_model_path

    try:
        return str(default_toy_model_path())
    except FileNotFoundError:
        return None


def is_toy_model(model: str) -> bool:
    """Whether `model` is the bundled toy model's folder."""
    toy = default_model()
    return toy is not None and Path(model).resolve() == Path(toy).resolve()
