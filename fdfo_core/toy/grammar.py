"""The toy caption grammar: every word, how captions are built from scenes and parsed back.

A scene is one or two groups of identical shapes on a flat background; with two groups a
relation says where the first group sits relative to the second:

    "three green triangles on a white background"
    "two red circles above a blue square on a yellow background"

This is the only module that knows the vocabulary; the renderer, the tokenizer, the prompt
sampler and the alignment reward all read it from here.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

#: Palette (sRGB 0-255). Chosen far apart so nearest-colour classification of a blurry image
#: still works; every colour can be a shape colour or the background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (240, 210, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
#: Extra spellings the parser accepts but captions never use.
COUNT_ALIASES: dict[str, int] = {"one": 1, "an": 1}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
MAX_COUNT = max(COUNT_WORDS)


def vocabulary() -> list[str]:
    """Every word a caption (or an accepted alias) can contain, sorted."""
    words = set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(COUNT_WORDS.values()) | set(COUNT_ALIASES)
    for rel in RELATIONS:
        words.update(rel.split())
    words.update(["on", "background"])
    return sorted(words)


@dataclass(frozen=True)
class Group:
    """`count` identical shapes of one colour."""

    count: int
    colour: str
    shape: str

    def phrase(self) -> str:
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        return f"{COUNT_WORDS[self.count]} {self.colour} {noun}"


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says: one group, or two groups and a relation, and the background colour."""

    groups: tuple[Group, ...]
    relation: str | None
    background: str

    def caption(self) -> str:
        if len(self.groups) == 1:
            return f"{self.groups[0].phrase()} on a {self.background} background"
        a, b = self.groups
        return f"{a.phrase()} {self.relation} {b.phrase()} on a {self.background} background"

    def flipped(self) -> "SceneSpec":
        """The same scene said the other way round ("A above B" <-> "B below A")."""
        if len(self.groups) == 1:
            return self
        a, b = self.groups
        return SceneSpec((b, a), INVERSE_RELATION[self.relation], self.background)

    def key(self) -> str:
        """A name shared by both phrasings of the scene (used for the train / held-out split)."""
        return min(self.caption(), self.flipped().caption())


def is_valid(spec: SceneSpec) -> bool:
    """Shapes never share the background colour; two groups differ in colour or shape."""
    if spec.background not in COLOURS:
        return False
    for g in spec.groups:
        if g.colour not in COLOURS or g.shape not in SHAPES or not 1 <= g.count <= MAX_COUNT:
            return False
        if g.colour == spec.background:
            return False
    if len(spec.groups) == 1:
        return spec.relation is None
    if len(spec.groups) == 2:
        a, b = spec.groups
        return spec.relation in RELATIONS and (a.colour, a.shape) != (b.colour, b.shape)
    return False


_COUNT_RE = "|".join(sorted(set(COUNT_WORDS.values()) | set(COUNT_ALIASES), key=len, reverse=True))
_COLOUR_RE = "|".join(COLOURS)
_SHAPE_RE = "|".join(sorted(set(SHAPES) | set(PLURALS.values()), key=len, reverse=True))
_GROUP_RE = rf"(?:({_COUNT_RE})\s+)?({_COLOUR_RE})\s+({_SHAPE_RE})"
_REL_RE = "|".join(r.replace(" ", r"\s+") for r in RELATIONS)
_CAPTION_RE = re.compile(
    rf"^\s*{_GROUP_RE}(?:\s+({_REL_RE})\s+{_GROUP_RE})?\s+on\s+(?:an?\s+)?({_COLOUR_RE})\s+background\s*\.?\s*$",
    re.IGNORECASE,
)


def _group(count_word: str | None, colour: str, noun: str) -> Group:
    count_word = (count_word or "a").lower()
    count = COUNT_ALIASES.get(count_word) or {w: n for n, w in COUNT_WORDS.items()}[count_word]
    noun = noun.lower()
    shape = noun[:-1] if noun.endswith("s") else noun
    return Group(count, colour.lower(), shape)


def parse_caption(text: str) -> SceneSpec | None:
    """Parse a caption back into a `SceneSpec`; None if it is not in the grammar."""
    m = _CAPTION_RE.match(text)
    if m is None:
        return None
    groups = [_group(m.group(1), m.group(2), m.group(3))]
    relation = None
    if m.group(4):
        relation = " ".join(m.group(4).lower().split())
        groups.append(_group(m.group(5), m.group(6), m.group(7)))
    return SceneSpec(tuple(groups), relation, m.group(8).lower())


# --- Sampling and the train / held-out split ---------------------------------------------------

#: One scene in HELDOUT_MODULUS (by a stable hash of `SceneSpec.key`) is held out of pretraining.
HELDOUT_MODULUS = 8


def split_of(spec: SceneSpec) -> str:
    """'heldout' or 'train'; both phrasings of a scene land in the same split."""
    return "heldout" if zlib.crc32(spec.key().encode()) % HELDOUT_MODULUS == 0 else "train"


def sample_spec(rng: np.random.Generator, p_single: float = 0.25) -> SceneSpec:
    """One random valid scene (any split)."""
    colours = list(COLOURS)
    while True:
        n_groups = 1 if rng.random() < p_single else 2
        groups = tuple(
            Group(int(rng.integers(1, MAX_COUNT + 1)), colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))])
            for _ in range(n_groups)
        )
        relation = RELATIONS[rng.integers(len(RELATIONS))] if n_groups == 2 else None
        spec = SceneSpec(groups, relation, colours[rng.integers(len(colours))])
        if is_valid(spec):
            return spec


def sample_split_spec(rng: np.random.Generator, split: str, p_single: float = 0.25) -> SceneSpec:
    """A random valid scene from `split` ('train' or 'heldout')."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    while True:
        spec = sample_spec(rng, p_single)
        if split_of(spec) == split:
            return spec


def all_specs() -> Iterator[SceneSpec]:
    """Every valid scene (each phrasing separately), in a fixed order."""
    groups = [Group(n, c, s) for n in COUNT_WORDS for c in COLOURS for s in SHAPES]
    for bg in COLOURS:
        for g in groups:
            spec = SceneSpec((g,), None, bg)
            if is_valid(spec):
                yield spec
        for a in groups:
            for rel in RELATIONS:
                for b in groups:
                    spec = SceneSpec((a, b), rel, bg)
                    if is_valid(spec):
                        yield spec
