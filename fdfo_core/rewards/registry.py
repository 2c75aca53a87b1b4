"""Reward registry and the weighted-sum spec language (``"pickscore + 0.1*vlm"``)."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import torch

from .base import Reward, RewardError

RewardFactory = Callable[..., Reward]
_REGISTRY: dict[str, RewardFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_reward(name: str, description: str = "") -> Callable[[RewardFactory], RewardFactory]:
    """Decorator: make `factory(**options) -> Reward` available under `name` in reward specs."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"reward names are lower-case identifiers, got {name!r}")

    def decorate(factory: RewardFactory) -> RewardFactory:
        _REGISTRY[name] = factory
        _DESCRIPTIONS[name] = description or (factory.__doc__ or "").strip().split("\n")[0]
        return factory

    return decorate


def available_rewards() -> dict[str, str]:
    """Registered reward names and their one-line descriptions."""
    return dict(sorted(_DESCRIPTIONS.items()))


_TERM = re.compile(
    r"""^\s*(?:(?P<w1>[-+]?\s*(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*\s*)?
        (?P<sign>[-+]?)\s*(?P<name>[a-z][a-z0-9_]*)
        (?:\s*\*\s*(?P<w2>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?\s*$""",
    re.X,
)


def parse_reward_spec(spec: str) -> list[tuple[float, str]]:
    """Parse ``"pickscore + 0.1*vlm - 0.5*brightness"`` into ``[(1.0, "pickscore"), (0.1, "vlm"), (-0.5, "brightness")]``."""
    if not spec or not spec.strip():
        raise RewardError(f"empty reward spec; choose one of: {', '.join(available_rewards())}")
    # Split on + and - that start a new term (not the sign of an exponent such as 1e-3).
    parts = re.split(r"(?<![eE*])\s*(?=[+-])", spec.strip())
    terms = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        m = _TERM.match(part)
        if m is None:
            raise RewardError(
                f"cannot parse reward term {part!r} in spec {spec!r}; write terms like "
                "'pickscore', '0.1*vlm' or 'vlm*0.1' joined by + or -"
            )
        weight = 1.0
        if m.group("w1"):
            weight *= float(m.group("w1").replace(" ", ""))
        if m.group("w2"):
            weight *= float(m.group("w2"))
        if part.startswith("-") and not m.group("w1"):
            weight = -weight
        elif m.group("sign") == "-":
            weight = -weight
        terms.append((weight, m.group("name")))
    if not terms:
        raise RewardError(f"reward spec {spec!r} has no terms")
    return terms


class WeightedSum(Reward):
    """sum_i w_i * reward_i, with each component's last scores kept for logging."""

    def __init__(self, terms: Sequence[tuple[float, Reward]]):
        super().__init__(micro_batch=max(r.micro_batch for _, r in terms))
        self.terms = list(terms)
        self.name = " + ".join(f"{w:g}*{r.name}" for w, r in self.terms)
        self.differentiable = all(r.differentiable for _, r in self.terms)
        self.last_components: dict[str, torch.Tensor] = {}

    def to(self, device):
        for _, r in self.terms:
            r.to(device)
        return super().to(device)

    def __call__(self, images, prompts, layout="auto"):
        total = None
        self.last_components = {}
        for w, r in self.terms:
            s = r(images, prompts, layout=layout)
            self.last_components[r.name] = s
            total = w * s if total is None else total + w * s
        return total

    def describe(self) -> str:
        return " + ".join(f"{w:g}*{r.describe()}" for w, r in self.terms)


def build_reward(
    spec: str,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | torch.device | None = None,
    micro_batch: int | None = None,
) -> Reward:
    """Build a reward from a spec such as ``"pickscore + 0.1*vlm"``.

    `options` maps a reward name to keyword arguments of its factory (a weights folder, a
    question for the VLM, ...). A spec of one term with weight 1 returns that reward itself.
    """
    # Importing the package registers every built-in reward.
    from . import ensure_registered

    ensure_registered()
    options = dict(options or {})
    terms = parse_reward_spec(spec)
    unknown = [n for _, n in terms if n not in _REGISTRY]
    if unknown:
        raise RewardError(
            f"unknown reward {unknown[0]!r} in spec {spec!r}; available: {', '.join(available_rewards())}"
        )
    stray = set(options) - {n for _, n in terms}
    if stray:
        raise RewardError(f"options given for {sorted(stray)} which the spec {spec!r} does not use")
    built = []
    for weight, name in terms:
        kwargs = dict(options.get(name, {}))
        if micro_batch is not None:
            kwargs.setdefault("micro_batch", micro_batch)
        try:
            reward = _REGISTRY[name](**kwargs)
        except TypeError as e:
            raise RewardError(f"bad options for reward {name!r}: {e}") from e
        if device is not None:
            reward.to(device)
        built.append((weight, reward))
    if len(built) == 1 and built[0][0] == 1.0:
        return built[0][1]
    return WeightedSum(built)
