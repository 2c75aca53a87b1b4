"""Reward registry and the weighted-sum spec language (``"pickscore + 0.1*vlm"``)."""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Mapping, Sequence

import torch

from .base import PartialRewardError, Reward, RewardError, summarize_errors

RewardFactory = Callable[..., Reward]
_REGISTRY: dict[str, RewardFactory] = {}

#: Registers the built-in rewards; set by the package (`fdfo_core.rewards.ensure_registered`), which
#: imports the modules that register them (they import this one, so this one cannot import them).
_builtin_loader: Callable[[], None] | None = None


def set_builtin_loader(load: Callable[[], None]) -> None:
    """Called once by `fdfo_core.rewards` (always imported before this module is used)."""
    global _builtin_loader
    _builtin_loader = load


def _load_builtins() -> None:
    if _builtin_loader is not None:
        _builtin_loader()
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


# The sign of a number's exponent (1e-3, 2.5E+2), not preceded by part of a name ("pickscore+...").
_EXPONENT_SIGN = re.compile(r"(?<![A-Za-z0-9_.])((?:\d+\.?\d*|\.\d+)[eE])([+-])(?=\d)")


def _split_terms(spec: str) -> list[str]:
    """Split a spec at the + and - that start a new term: not exponent signs, not a sign after '*'."""
    protected = _EXPONENT_SIGN.sub(lambda m: m.group(1) + ("\x00" if m.group(2) == "+" else "\x01"), spec.strip())
    parts, current = [], ""
    for ch in protected:
        if ch in "+-" and current.strip() and not current.rstrip().endswith("*"):
            parts.append(current)
            current = ch
        else:
            current += ch
    parts.append(current)
    return [p.replace("\x00", "+").replace("\x01", "-") for p in parts]


def parse_reward_spec(spec: str) -> list[tuple[float, str]]:
    """Parse ``"pickscore + 0.1*vlm - 0.5*brightness"`` into ``[(1.0, "pickscore"), (0.1, "vlm"), (-0.5, "brightness")]``."""
    if not spec or not spec.strip():
        raise RewardError(f"empty reward spec; choose one of: {', '.join(available_rewards())}")
    terms = []
    for part in _split_terms(spec):
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
        """The weighted sum per image. An image that one term could not score (NaN, or a failed
        micro-batch of that term) is NaN in the sum: the other images keep their sums, and the
        call raises a PartialRewardError holding them when a term failed for only some images."""
        total = None
        errors = []
        self.last_components = {}
        for w, r in self.terms:
            try:
                s = r(images, prompts, layout=layout)
            except PartialRewardError as e:
                s, errors = e.scores, errors + [(k, f"{r.name}: {m}") for k, m in e.errors]
            self.last_components[r.name] = s
            # 0 * NaN is NaN: a missing score stays missing even under a zero weight.
            total = w * s if total is None else total + w * s
        if errors:
            bad = int((~torch.isfinite(total)).sum())
            raise PartialRewardError(f"{self.name}: {bad} of {total.shape[0]} images could not be scored "
                                     f"({summarize_errors(errors)})", total, errors)
        return total

    def score_differentiable(self, images, prompts):
        return sum(w * r.score_differentiable(images, prompts) for w, r in self.terms)

    def describe(self) -> str:
        return " + ".join(f"{w:g}*{r.describe()}" for w, r in self.terms)


def _accepts(factory: RewardFactory, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def _coerce_value(value: str, default: Any, annotation: Any, key: str, reward: str) -> Any:
    """Turn a string from a command line or a text widget into the option's type."""
    ann = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = value.strip()
    optional = default is None or "None" in ann or "Optional" in ann
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if isinstance(default, bool) or (default is None and re.search(r"\bbool\b", ann)):
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("expected true or false")
        if isinstance(default, int) or (default is None and re.search(r"\bint\b", ann) and "str" not in ann):
            return int(text)
        if isinstance(default, float) or (default is None and re.search(r"\bfloat\b", ann) and "str" not in ann):
            return float(text)
    except ValueError as e:
        raise RewardError(f"option {reward}.{key}: cannot read {value!r} ({e})") from e
    return value


def coerce_options(factory: RewardFactory, kwargs: Mapping[str, Any], reward: str = "") -> dict[str, Any]:
    """Check option names against the factory and convert string values to the options' types.

    Values that are not strings are passed through unchanged, so Python callers can pass ints,
    floats, bools, dicts and paths directly; the CLI and nodes can pass every value as text.
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return dict(kwargs)
    params = sig.parameters
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = {}
    for key, value in kwargs.items():
        if key not in params:
            if has_var_kw:
                out[key] = value
                continue
            valid = [k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
            raise RewardError(f"reward {reward!r} has no option {key!r}; its options are: {', '.join(valid)}")
        p = params[key]
        if isinstance(value, str) and key != "device":
            default = None if p.default is p.empty else p.default
            value = _coerce_value(value, default, p.annotation, key, reward)
        out[key] = value
    missing = [k for k, p in params.items() if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and k not in out]
    if missing:
        raise RewardError(f"reward {reward!r} needs the option(s) {', '.join(missing)}")
    return out


def reward_options(name: str) -> dict[str, Any]:
    """The options a registered reward's factory takes, with their defaults (inspect.Parameter.empty if required)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise RewardError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}")
    params = inspect.signature(_REGISTRY[name]).parameters
    return {k: p.default for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


#: Options that change where or in what chunks a reward runs, never its scores.
_PLACEMENT_OPTIONS = ("device", "micro_batch")


def _record_build(reward: Reward, name: str, factory: RewardFactory, kwargs: Mapping[str, Any]) -> None:
    """Note on the reward how it was built (registry name, every option with defaults filled in),
    so a training run can record, restore and compare it (fdfo_core.run.definition)."""
    try:
        params = inspect.signature(factory).parameters
        resolved = {k: p.default for k, p in params.items()
                    if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.default is not p.empty}
    except (TypeError, ValueError):
        resolved = {}
    resolved.update(kwargs)
    options = {k: v for k, v in resolved.items() if k not in _PLACEMENT_OPTIONS}
    # A reward whose options include data (image tensors, files whose content matters) records
    # them as it sees fit: a content fingerprint instead of a tensor's repr.
    record = getattr(reward, "record_options", None)
    if callable(record):
        options = record(options)
    try:
        reward.spec_name = name
        reward.spec_options = options
    except AttributeError:  # a factory returning an object that takes no attributes
        pass


def build_reward(
    spec: str,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | torch.device | None = None,
    micro_batch: int | None = None,
    normalize: str | None = None,
    normalize_options: Mapping[str, Any] | None = None,
) -> Reward:
    """Build a reward from a spec such as ``"pickscore + 0.1*vlm"``.

    `options` maps a reward name to keyword arguments of its factory (a weights folder, a
    question for the VLM, ...). A spec of one term with weight 1 returns that reward itself.
    `device` is passed to factories that take it (so models load with the right dtype straight
    onto that device) and every reward is moved there. `normalize="per_prompt"` wraps the
    (summed) reward in `PerPromptNormalized` with `normalize_options` (min_group, window, eps).
    """
    # Importing the package registers every built-in reward.
    _load_builtins()
    options = dict(options or {})
    terms = parse_reward_spec(spec)
    unknown = [n for _, n in terms if n not in _REGISTRY]
    if "human_picks" in unknown:
        raise RewardError(
            "human_picks (training by picking) needs someone at the screen: it runs in ComfyUI (node FDFO Human Picks "
            "and its picking panel). To train from picks made there, use --reward preference --reward-opt "
            "preference.picks=<run folder>/picks.jsonl (or a model from `fdfo fit-preference`)")
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
        factory = _REGISTRY[name]
        if micro_batch is not None and _accepts(factory, "micro_batch"):
            kwargs.setdefault("micro_batch", micro_batch)
        if device is not None and _accepts(factory, "device"):
            kwargs.setdefault("device", device)
        kwargs = coerce_options(factory, kwargs, name)
        reward = factory(**kwargs)
        _record_build(reward, name, factory, kwargs)
        if device is not None:
            reward.to(device)
        built.append((weight, reward))
    reward = built[0][1] if len(built) == 1 and built[0][0] == 1.0 else WeightedSum(built)
    from .normalize import wrap_normalization

    return wrap_normalization(reward, normalize, **dict(normalize_options or {}))
