"""Where each diffusers projection lives inside ComfyUI's modules: the key mapping of a family.

Our LoRA files use ComfyUI-native keys (`diffusion_model.<comfy module>.lora_up.weight`, see
`fdfo_core.backends.lora_files`). ComfyUI often fuses projections that diffusers keeps apart (SD3's `qkv`,
Flux's single-block `linear1` = [q, k, v, mlp_in]); a family declares each ComfyUI linear it can
adapt as a `LoraModule`: the ComfyUI name and the diffusers names of its row blocks, in order, with
`{i}` standing for a block index. Families whose ComfyUI names equal diffusers' (Qwen-Image) use
`same_names`.

Both backends train the same function class, "rank r on every targeted diffusers projection": the
diffusers backend through peft, the ComfyUI backend as row slices of the fused linear. `LoraMap`
answers the two questions they ask:
- diffusers -> ComfyUI (`to_comfy`): which ComfyUI module and rows a diffusers module is;
- ComfyUI -> diffusers (`comfy_plan`): which diffusers projections of a loaded ComfyUI model the
  LoRA targets select, as row slices of its linears.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

#: (in_features, out_features) of a fused ComfyUI linear -> output rows of each part, in order.
RowSplit = Callable[[int, int], Sequence[int]]


class LoraMapError(ValueError):
    """A module name has no counterpart in the other naming; the message lists what is known."""


@dataclass(frozen=True)
class FusedPart:
    """A diffusers module that is rows [offset, offset + rows) of a ComfyUI module's output."""

    comfy_module: str
    offset: int
    rows: int
    fused_rows: int  # output size of the whole ComfyUI module


@dataclass(frozen=True)
class PlannedPart:
    """One adapted diffusers projection inside a loaded ComfyUI model (`LoraMap.comfy_plan`)."""

    name: str  # diffusers module name
    comfy_module: str
    offset: int
    rows: int


def equal_split(parts: int) -> RowSplit:
    def split(in_features: int, out_features: int) -> Sequence[int]:
        if out_features % parts:
            raise LoraMapError(f"a fused linear with {out_features} outputs cannot split into {parts} equal parts")
        return [out_features // parts] * parts

    return split


def _template_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(\d+)"))


@dataclass(frozen=True)
class LoraModule:
    """One ComfyUI linear and the diffusers projections that are its output rows, in order.

    comfy: ComfyUI module name inside `diffusion_model`, `{i}` = block index
        ("joint_blocks.{i}.x_block.attn.qkv").
    diffusers: diffusers module names inside the transformer, one per row block, same `{i}`
        ("transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.attn.to_k", ...).
    split: (in_features, out_features) -> rows of each part, for the ComfyUI side, where the
        diffusers sizes are not at hand; default: equal parts.
    """

    comfy: str
    diffusers: tuple[str, ...]
    split: RowSplit | None = None

    def __post_init__(self):
        if not self.diffusers:
            raise ValueError(f"LoraModule {self.comfy!r} needs at least one diffusers name")
        object.__setattr__(self, "_comfy_re", _template_regex(self.comfy))
        object.__setattr__(self, "_diffusers_re", tuple(_template_regex(d) for d in self.diffusers))

    def rows(self, in_features: int, out_features: int) -> list[int]:
        if len(self.diffusers) == 1:
            return [out_features]
        rows = list((self.split or equal_split(len(self.diffusers)))(in_features, out_features))
        if len(rows) != len(self.diffusers) or sum(rows) != out_features:
            raise LoraMapError(f"row split {rows} of {self.comfy!r} does not cover its {out_features} outputs")
        return rows


def fused(comfy: str, prefix: str, names: Iterable[str], split: RowSplit | None = None) -> LoraModule:
    """A fused ComfyUI linear whose parts are `prefix + name` in diffusers."""
    return LoraModule(comfy, tuple(prefix + n for n in names), split)


def same_names(prefix: str, names: Iterable[str]) -> list[LoraModule]:
    """Linears that ComfyUI and diffusers name alike (`prefix + name` in both)."""
    return [LoraModule(prefix + n, (prefix + n,)) for n in names]


def peft_target_index(name: str, targets: Sequence[str]) -> int | None:
    """Index of the first target that selects module `name` under peft's rule (the full name or
    a `.`-separated suffix), or None."""
    for j, t in enumerate(targets):
        if name == t or name.endswith("." + t):
            return j
    return None


@dataclass(frozen=True)
class LoraMap:
    """The LoRA key mapping of one family: a list of `LoraModule`s."""

    modules: tuple[LoraModule, ...] = field(default_factory=tuple)

    def __post_init__(self):
        object.__setattr__(self, "modules", tuple(self.modules))

    def diffusers_suffixes(self) -> list[str]:
        """The diffusers module names with `{i}` left in, for messages."""
        return [d for m in self.modules for d in m.diffusers]

    # --- diffusers -> ComfyUI ------------------------------------------------------------------

    def match_diffusers(self, name: str) -> tuple[LoraModule, int, str | None] | None:
        """(rule, part index, block index or None) for a diffusers module name, or None."""
        for rule in self.modules:
            for part, rx in enumerate(rule._diffusers_re):
                m = rx.fullmatch(name)
                if m:
                    return rule, part, (m.group(1) if m.groups() else None)
        return None

    def to_comfy(self, name: str, out_features: Callable[[str], int]) -> FusedPart:
        """The ComfyUI module (and row slice) that diffusers module `name` is part of.

        out_features(diffusers name) gives a diffusers module's output size; the rows of the parts
        of a fused module are their diffusers sizes, in order. Raises LoraMapError for a name the
        family does not map.
        """
        found = self.match_diffusers(name)
        if found is None:
            raise LoraMapError(
                f"no ComfyUI equivalent known for module {name!r}; LoRA targets must select among: "
                + ", ".join(self.diffusers_suffixes())
            )
        rule, part, block = found
        fill = (lambda s: s.replace("{i}", block)) if block is not None else (lambda s: s)
        sizes = [out_features(fill(d)) for d in rule.diffusers]
        return FusedPart(fill(rule.comfy), sum(sizes[:part]), sizes[part], sum(sizes))

    # --- ComfyUI -> diffusers ------------------------------------------------------------------

    def comfy_plan(self, linears: Mapping[str, tuple[int, int]], targets: Sequence[str]) -> list[PlannedPart]:
        """The diffusers projections that `targets` select in a ComfyUI model, as row slices.

        linears: {ComfyUI module name: (in_features, out_features)} of the model's linear layers.
        Order (kept stable so checkpoints keep their parameter order): by block group, block
        index, attention within the block, then the target's position in `targets`; parts of one
        ComfyUI module stay together in row order.
        """
        found: list[tuple[tuple, PlannedPart]] = []
        groups: list[str] = []
        subs: list[str] = []
        for rule in self.modules:
            for name, (fan_in, fan_out) in linears.items():
                m = rule._comfy_re.fullmatch(name)
                if m is None:
                    continue
                block = m.group(1) if m.groups() else None
                rows = rule.rows(fan_in, fan_out)
                offset = 0
                for template, n_rows in zip(rule.diffusers, rows):
                    dname = template.replace("{i}", block) if block is not None else template
                    j = peft_target_index(dname, targets)
                    if j is not None:
                        group = template.split("{i}")[0] if block is not None else ""
                        rest = dname[len(group) + len(block) + 1:] if block is not None else dname
                        sub = rest[: len(rest) - len(targets[j])] if rest.endswith(targets[j]) else ""
                        if group not in groups:
                            groups.append(group)
                        if sub not in subs:
                            subs.append(sub)
                        key = (groups.index(group), int(block) if block is not None else -1, subs.index(sub), j)
                        found.append((key, PlannedPart(dname, name, offset, n_rows)))
                    offset += n_rows
        found.sort(key=lambda kp: kp[0])
        # Keep the parts of one ComfyUI module together (at its first part's place), in row order.
        by_module: dict[str, list[PlannedPart]] = {}
        for _, part in found:
            by_module.setdefault(part.comfy_module, []).append(part)
        return [p for parts in by_module.values() for p in sorted(parts, key=lambda p: p.offset)]
