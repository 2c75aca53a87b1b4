"""An artist's picks between the two images of an FDFO pair: the ``picks.jsonl`` record format.

FDFO trains on pairs of near-identical images that share their initial noise; "I prefer the
left one" is exactly the reward difference a pair needs. Every pick is one line of JSON (JSON
Lines, UTF-8) appended to ``picks.jsonl`` in the run folder, so nothing clicked is lost:

    {"version": 1, "prompt": "a lighthouse at dusk", "seed": 1234, "epoch": 3, "pair_id": 17,
     "choice": "left", "left_image": "picks/e00003-p00017-left.png",
     "right_image": "picks/e00003-p00017-right.png", "timestamp": "2026-01-05T12:34:56.789Z",
     "source": "human"}

Fields:

- ``version`` (int, 1): the format version; readers refuse newer ones.
- ``prompt`` (str): the pair's prompt. ``seed`` (int or null): the pair's shared noise seed.
- ``epoch`` (int >= 0) and ``pair_id`` (int >= 0): which pair of which epoch.
- ``choice``: ``"left"``, ``"right"``, ``"equal"`` or ``"skip"``. The pair's reward difference
  R_left - R_right is +1, -1 or 0 (`reward_delta`); a skipped pair has none and is dropped. For a
  Bradley-Terry model the target P(left preferred) is 1, 0 or 0.5 (`target`).
- ``left_image`` / ``right_image`` (str): the two images, relative to the folder of the picks
  file (or absolute). Optional for ``"skip"``.
- ``timestamp`` (str, ISO 8601 UTC): when the pick was made.
- ``source`` (optional, default ``"human"``): ``"model"`` marks a pair scored by the learned
  preference model (mixed mode); fitting uses human picks only, so the model never trains on
  its own guesses.
- ``run_id`` (optional str): the run the pair was made in (run.json's ``run_id``). Epoch and pair
  numbers and seeds repeat in every run made with the same seed: a pick's identity is
  (``run_id``, ``epoch``, ``pair_id``) (`PickRecord.identity`). Files written before run ids
  have none; their picks are identified within their own file.

Any other keys are kept in `PickRecord.extra` and written back unchanged. A later line with the
same identity replaces an earlier one (a corrected pick). Reading several files keeps every pick
of every run; the same pick found in two files (a copied file) counts once, and `PicksFile`
says how many picks were corrected or were such duplicates.

Reading is forgiving where a crash can leave damage and strict where a person must act: a line
that is not valid JSON (a write cut off by a crash) or a record with a bad field is skipped and
reported in `PicksFile.problems` (file and line number; ``strict=True`` raises instead), while a
file that is not UTF-8 text raises `PicksError` naming the file, the byte offset and the line
(`fdfo_core.files.text_files`). Byte-order marks and Windows or old Mac line ends are accepted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

FORMAT_VERSION = 1
CHOICES = ("left", "right", "equal", "skip")
SOURCES = ("human", "model")
_REWARD_DELTA = {"left": 1.0, "right": -1.0, "equal": 0.0}
_KNOWN = {"version", "prompt", "seed", "epoch", "pair_id", "choice", "left_image", "right_image", "timestamp", "source",
          "run_id"}


class PicksError(ValueError):
    """A picks file cannot be read or a record cannot be written; the message names the file and line."""


def now_timestamp() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. '2026-01-05T12:34:56.789Z'."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


@dataclass
class PickRecord:
    """One pick (see the module docstring for the fields)."""

    prompt: str
    epoch: int
    pair_id: int
    choice: str
    left_image: str | None = None
    right_image: str | None = None
    seed: int | None = None
    timestamp: str = ""
    source: str = "human"
    extra: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    #: The folder image paths are relative to (the picks file's folder); not written.
    base_dir: Path | None = field(default=None, compare=False, repr=False)
    #: "file:line" the record was read from; not written.
    origin: str = field(default="", compare=False, repr=False)
    #: The picks file the record was read from (resolved); not written.
    file: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise PicksError(problem)

    def problem(self) -> str | None:
        """Why the record is invalid, or None."""
        if not isinstance(self.prompt, str):
            return f"prompt must be text, got {type(self.prompt).__name__}"
        for name in ("epoch", "pair_id"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                return f"{name} must be a whole number >= 0, got {v!r}"
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            return f"seed must be a whole number or null, got {self.seed!r}"
        if self.choice not in CHOICES:
            return f"choice must be one of {', '.join(CHOICES)}, got {self.choice!r}"
        if self.source not in SOURCES:
            return f"source must be one of {', '.join(SOURCES)}, got {self.source!r}"
        if self.run_id is not None and (not isinstance(self.run_id, str) or not self.run_id.strip()):
            return f"run_id must be non-empty text or absent, got {self.run_id!r}"
        if self.choice != "skip":
            for name in ("left_image", "right_image"):
                v = getattr(self, name)
                if not isinstance(v, str) or not v.strip():
                    return f"{name} must name the image file (a {self.choice!r} pick needs both images), got {v!r}"
        return None

    # --- meaning ----------------------------------------------------------------------------

    @property
    def run_scope(self) -> str:
        """Which run the pair belongs to: "run:<run_id>", or for a record without one (an older
        file) "file:<its picks file>" (or "memory" for a record that was never read from a file)."""
        if self.run_id:
            return f"run:{self.run_id}"
        return f"file:{self.file}" if self.file is not None else "memory"

    @property
    def identity(self) -> tuple[str, int, int]:
        """(run scope, epoch, pair_id): unique across runs, files and front ends."""
        return self.run_scope, self.epoch, self.pair_id

    @property
    def reward_delta(self) -> float | None:
        """R_left - R_right implied by the pick: +1 (left), -1 (right), 0 (equal), None (skip)."""
        return _REWARD_DELTA.get(self.choice)

    @property
    def target(self) -> float | None:
        """Bradley-Terry target P(left preferred): 1, 0, 0.5, or None for a skipped pair."""
        return choice_target(self.choice)

    def image_path(self, side: str) -> Path | None:
        """The resolved path of the "left" or "right" image (relative names resolve against base_dir)."""
        name = self.left_image if side == "left" else self.right_image if side == "right" else None
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        if not name:
            return None
        p = Path(name).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        return p

    # --- (de)serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": FORMAT_VERSION, "prompt": self.prompt, "seed": self.seed, "epoch": self.epoch,
                             "pair_id": self.pair_id, "choice": self.choice, "left_image": self.left_image,
                             "right_image": self.right_image, "timestamp": self.timestamp or now_timestamp(),
                             "source": self.source}
        if self.run_id:
            d["run_id"] = self.run_id
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(", ", ": "))

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: Path | None = None, origin: str = "",
                  file: Path | None = None) -> "PickRecord":
        """Build a record from a parsed line; raises PicksError (with `origin`) when it is invalid."""
        where = f"{origin}: " if origin else ""
        if not isinstance(d, dict):
            raise PicksError(f"{where}a pick must be a JSON object, got {type(d).__name__}")
        version = d.get("version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise PicksError(f"{where}version must be a whole number, got {version!r}")
        if version > FORMAT_VERSION:
            raise PicksError(f"{where}written in picks format version {version}; this FDFO reads up to version "
                             f"{FORMAT_VERSION}: update ComfyUI-FDFO")
        missing = [k for k in ("prompt", "epoch", "pair_id", "choice") if k not in d]
        if missing:
            raise PicksError(f"{where}missing field(s) {', '.join(missing)}")
        choice = d["choice"].strip().lower() if isinstance(d["choice"], str) else d["choice"]
        try:
            return cls(prompt=d["prompt"], epoch=d["epoch"], pair_id=d["pair_id"], choice=choice,
                       left_image=d.get("left_image"), right_image=d.get("right_image"), seed=d.get("seed"),
                       timestamp=str(d.get("timestamp") or ""), source=d.get("source") or "human",
                       extra={k: v for k, v in d.items() if k not in _KNOWN}, run_id=d.get("run_id"),
                       base_dir=base_dir, origin=origin, file=file)
        except PicksError as e:
            raise PicksError(f"{where}{e}") from None


@dataclass
class PicksFile:
    """The records read from one or more picks files, and the lines that were skipped."""

    records: list[PickRecord]
    problems: list[str]
    files: list[Path]
    #: lines replaced by a later pick of the same pair (a corrected pick; in one file or across files)
    corrected: int = 0
    #: the same pick (same pair, choice and time) found again in another file, counted once
    duplicates: int = 0

    def runs(self) -> int:
        """How many runs the picks come from (files without run ids count one run each)."""
        return len({r.run_scope for r in self.records})

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in CHOICES}
        for r in self.records:
            out[r.choice] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        runs = self.runs()
        where = f"{len(self.files)} file(s)" + (f" of {runs} run(s)" if len(self.files) > 1 or runs > 1 else "")
        text = (f"{len(self.records)} picks from {where}: {c['left']} left, {c['right']} right, {c['equal']} equal, "
                f"{c['skip']} skipped")
        if self.corrected:
            text += f"; {self.corrected} earlier pick(s) replaced by a later pick of the same pair"
        if self.duplicates:
            text += f"; {self.duplicates} duplicate(s) (the same pick in more than one file) counted once"
        if self.problems:
            text += f"; {len(self.problems)} line(s) skipped"
        return text


def _decode(path: Path) -> str:
    """The file's text (UTF-8, a byte-order mark dropped, any line ends), via `files.text_files`."""
    from ..files.text_files import TextFileError, read_text_file

    try:
        return read_text_file(path, what="picks file")
    except TextFileError as e:
        raise PicksError(str(e)) from None


def read_picks(paths: str | os.PathLike | Iterable[str | os.PathLike], strict: bool = False) -> PicksFile:
    """Read one or more picks files (see the module docstring).

    Raises PicksError when a file is missing or not UTF-8, and (with `strict`) at the first bad
    line; otherwise bad lines are skipped and listed in `problems`.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise PicksError("no picks files given")
    records: list[PickRecord] = []
    problems: list[str] = []
    files: list[Path] = []
    by_identity: dict[tuple[str, int, int], int] = {}
    corrected = duplicates = 0
    from ..files.text_files import split_lines

    for item in items:
        path = Path(item).expanduser()
        if path.is_dir() and (path / "picks.jsonl").is_file():  # a run folder
            path = path / "picks.jsonl"
        if not path.is_file():
            raise PicksError(f"picks file {path} does not exist" if not path.exists() else f"{path} is not a file")
        files.append(path)
        in_this_file: set[tuple[str, int, int]] = set()
        for number, line in enumerate(split_lines(_decode(path)), start=1):
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PicksError(f"{origin}: not valid JSON ({e.msg} at column {e.colno}); a line cut off by a "
                                     "crash, or edited by hand?") from None
                rec = PickRecord.from_dict(obj, base_dir=path.parent.resolve(), origin=origin, file=path.resolve())
            except PicksError as e:
                if strict:
                    raise
                problems.append(str(e))
                continue
            key = rec.identity
            if key not in by_identity:
                by_identity[key] = len(records)
                records.append(rec)
            else:
                old = records[by_identity[key]]
                if key in in_this_file or rec.timestamp >= old.timestamp:
                    if key not in in_this_file and _same_pick(old, rec):
                        duplicates += 1  # a copy of the same line in another file
                    else:
                        corrected += 1  # a corrected pick replaces the earlier one, in place
                    records[by_identity[key]] = rec
                elif _same_pick(old, rec):
                    duplicates += 1
                else:
                    corrected += 1  # an older version of a pick already read from a later file
            in_this_file.add(key)
    return PicksFile(records, problems, files, corrected=corrected, duplicates=duplicates)


def _same_pick(a: PickRecord, b: PickRecord) -> bool:
    """The same pick written twice (a copied file): everything but where it was read from is equal."""
    return a.to_dict() == b.to_dict()


def append_pick(path: str | os.PathLike, record: PickRecord) -> Path:
    """Append one record to a picks file (creating the file; its folder, the run folder, must exist).

    The line is written with one call and fsynced (`storage.append_line`: a failed write is cut
    back, so the log never ends in a partial line; a full disk raises `storage.StorageError`
    saying so). If the file's last line was cut off by a crash of an older writer (no final
    newline), the new record starts on a fresh line, so one damaged line never swallows a pick.
    """
    from ..files.storage import append_line

    path = Path(path)
    line = record.to_json()
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line
    except FileNotFoundError:
        pass
    except OSError as e:
        raise PicksError(f"could not read the end of {path} before appending a pick: {e}") from e
    return append_line(path, line, what="picks log")


def choice_target(choice: str) -> float | None:
    """Bradley-Terry target P(left preferred) of a choice: 1 (left), 0 (right), 0.5 (equal), None (skip)."""
    if choice not in CHOICES:
        raise PicksError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    d = _REWARD_DELTA.get(choice)
    return None if d is None else (d + 1.0) / 2.0


def human_pairs(records: Sequence[PickRecord]) -> list[PickRecord]:
    """The records a preference model learns from: human picks that are not skipped."""
    return [r for r in records if r.source == "human" and r.choice != "skip"]
