"""What defines a training run: recorded when it starts, restored and compared when it resumes.

A resumed run must be the same run. `RunDefinition` holds everything that decides what a run
trains: the model (its fingerprint), the training prompts themselves, the reward with its options
and normalisation, the preview prompts, the model settings of the front end (text length, Flux
guidance), and the seed and every hyperparameter (the resolved FDFOConfig).

- the run loop (`run.trainer.RunLoop`) records it when a run starts (run folder: run.json, prompts.json, config.json) and
  in every checkpoint (so a checkpoint file alone says what it was trained on).
- On resume, a front end first fills in whatever the user omitted from the recorded definition
  (`restore`): `fdfo train --resume R` alone continues the same run. Then `RunLoop.resume`
  compares the definition it was built with against the checkpoint's (`differences`); any
  difference outside RESUMABLE_CHANGES (epochs, checkpoint cadence, memory and batch settings) is
  refused with one message listing each difference and how to proceed (`refusal_message`), unless
  the user opts in (`--allow-change`, the node's allow_run_changes), which records the change as a
  new branch in run.json.

Adding a field (e.g. a later feature's judge and guardrail settings, or picking settings) is one
line in `RunDefinition`:

    judge: dict | None = defines("judge and guardrail settings")

Its value is then recorded, restored when omitted, compared on resume and listed by name in a
refusal. The front end passes it when it builds the trainer: `FDFOTrainer(..., definition={"judge":
{...}})`. A definition recorded before the field existed has it missing; missing fields are never
compared (so older runs stay resumable), and None means "not used".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..files import storage
from ..files.text_files import read_json_file
from .checkpoints import READABLE_FORMATS, latest_checkpoint, peek_checkpoint

#: Config fields a resumed run may change without breaking the replay (the run stays one run).
#: The held-out evaluation's cadence and the early-stop rules change neither what is trained nor
#: what the best-LoRA criterion means (guardrails.py).
RESUMABLE_CHANGES = frozenset({"epochs", "checkpoint_every", "storage_device", "train_batch_size",
                               "decode_batch_size", "sample_batch_size", "gradient_checkpointing",
                               "base_weights", "compile",
                               "eval_every", "early_stop_patience", "early_stop_min_diversity",
                               "early_stop_max_image_shift",
                               "max_bad_pair_fraction"})  # raise it to continue a run that stopped on bad rewards

RUN_RECORD = "run.json"
PROMPTS_FILE = "prompts.json"
CONFIG_FILE = "config.json"
RUN_FORMAT = "fdfo-run-1"


def defines(label: str, compare: str = "exact") -> Any:
    """A RunDefinition field. label: what it is, in the user's words (used in refusals).
    compare: "exact" (the whole value), "per_key" (a dict compared key by key, the config's
    RESUMABLE_CHANGES allowed to differ) or "never" (recorded and restored only)."""
    return field(default=None, metadata={"label": label, "compare": compare})


@dataclass
class RunDefinition:
    """Everything that defines a run (see the module docstring). None: not used / not known."""

    model: dict | None = defines("model (fingerprint of its weights, architecture and LoRA layout)", "per_key")
    prompts: list | None = defines("training prompts")
    reward: str | None = defines("reward")
    reward_options: dict | None = defines("reward options", "per_key")
    reward_normalization: dict | None = defines("reward normalisation")
    preview_prompts: list | None = defines("preview prompts")
    model_settings: dict | None = defines("model settings", "per_key")
    config: dict | None = defines("hyperparameters", "per_key")
    #: where the model was loaded from (a folder or hub id); the fingerprint is what is compared
    model_source: str | None = defines("model source", "never")
    # --- fields added by later features go here, one line each (see the module docstring) -------
    eval_prompts: list | None = defines("held-out prompts (guardrails)")
    judge_options: dict | None = defines("judge options", "per_key")

    #: names of fields missing from the record this was read from (never compared)
    missing: frozenset = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name != "missing"]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in self.fields()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunDefinition":
        names = {f.name for f in cls.fields()}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, missing=frozenset(names - set(data)))

    def replace(self, **changes: Any) -> "RunDefinition":
        return dataclasses.replace(self, **changes)

    def prompts_hash(self) -> str | None:
        return prompts_hash(self.prompts) if self.prompts is not None else None


def _jsonable(value: Any) -> Any:
    """JSON round trip: what is recorded is exactly what is compared after a reload."""
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def prompts_hash(prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()


# --- restore and compare ---------------------------------------------------------------------------


def restore(recorded: RunDefinition, given: Mapping[str, Any]) -> RunDefinition:
    """The definition to resume with: `recorded`, with what the user gave on top.

    given: field -> value for what the user gave (omitted fields absent or None). "per_key"
    fields merge key by key, so giving one hyperparameter keeps the others.
    """
    out = {}
    for f in RunDefinition.fields():
        mine, theirs = getattr(recorded, f.name), given.get(f.name)
        if theirs is None:
            out[f.name] = mine
        elif f.metadata["compare"] == "per_key" and isinstance(mine, dict) and isinstance(theirs, dict):
            out[f.name] = {**mine, **theirs}
        else:
            out[f.name] = theirs
    return RunDefinition(**out)


@dataclass(frozen=True)
class Difference:
    """One way the current definition differs from the recorded one."""

    field: str  # RunDefinition field
    key: str | None  # key inside a per-key field, else None
    run: Any  # the recorded value
    now: Any  # the current value

    @property
    def name(self) -> str:
        """The name the user knows: the hyperparameter itself (seed, lr), or the field's label."""
        if self.field == "config" and self.key:
            return self.key
        label = _label(self.field)
        return f"{label}: {self.key}" if self.key else label

    def describe(self) -> str:
        if self.field in ("prompts", "preview_prompts") and isinstance(self.run, list) and isinstance(self.now, list):
            return f"{self.name}: {_describe_prompt_change(self.run, self.now)}"
        if self.field == "model":
            return (f"model: another model or LoRA layout ({self.key or 'fingerprint'} {_short(self.run)} in the run, "
                    f"{_short(self.now)} now)")
        return f"{self.name}: {_short(self.run)} in the run, {_short(self.now)} now"

    def to_dict(self) -> dict[str, Any]:
        run, now = self.run, self.now
        if self.field == "prompts":  # prompts.json holds the lists; the record names them
            run = {"count": len(run), "sha256": prompts_hash(run)} if isinstance(run, list) else run
            now = {"count": len(now), "sha256": prompts_hash(now)} if isinstance(now, list) else now
        return {"field": self.field, "key": self.key, "run": run, "now": now}


def _label(name: str) -> str:
    return next(f.metadata["label"] for f in RunDefinition.fields() if f.name == name).split(" (")[0]


def _short(value: Any, limit: int = 90) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_prompt_change(run: list, now: list) -> str:
    first = next((i for i, (a, b) in enumerate(zip(run, now)) if a != b), min(len(run), len(now)))
    detail = ""
    if first < min(len(run), len(now)):
        detail = f"; first difference at prompt {first + 1}: {_short(run[first], 50)} in the run, {_short(now[first], 50)} now"
    return f"{len(run)} prompts in the run, {len(now)} now{detail}"


def differences(recorded: RunDefinition, current: RunDefinition,
                allowed: frozenset = RESUMABLE_CHANGES) -> list[Difference]:
    """Every difference between two definitions, except the config keys in `allowed` and
    fields either side does not know (missing from an older record)."""
    out: list[Difference] = []
    for f in RunDefinition.fields():
        mode = f.metadata["compare"]
        if mode == "never" or f.name in recorded.missing or f.name in current.missing:
            continue
        a, b = _jsonable(getattr(recorded, f.name)), _jsonable(getattr(current, f.name))
        if a == b:
            continue
        if mode == "per_key" and isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if f.name == "config" and key in allowed:
                    continue
                va, vb = a.get(key), b.get(key)
                if va == vb or (f.name == "model" and key == "weights" and not _same_digest_scheme(va, vb)):
                    continue
                if isinstance(va, dict) and isinstance(vb, dict):  # e.g. config.extra, one reward's options
                    for sub in sorted(set(va) | set(vb)):
                        if va.get(sub) != vb.get(sub):
                            out.append(Difference(f.name, f"{key}.{sub}", va.get(sub), vb.get(sub)))
                else:
                    out.append(Difference(f.name, key, va, vb))
        else:
            out.append(Difference(f.name, None, a, b))
    if any(d.field == "reward" for d in out):  # options of a term only one reward has follow from that
        out = [d for d in out if not (d.field == "reward_options" and (d.run is None or d.now is None))]
    return out


def _same_digest_scheme(a: Any, b: Any) -> bool:
    """Whether two model weight digests can be compared: both "scheme:hash" of one scheme
    (`backend.weights_digest`). Records written before the scheme hashed the weights as stored
    (changing with fp8 storage): their architecture, config and LoRA layout are still compared."""
    def legacy(v: Any) -> bool:
        return isinstance(v, str) and len(v) == 16 and all(c in "0123456789abcdef" for c in v)

    return legacy(a) == legacy(b)


@dataclass
class FrontEnd:
    """How the user does things in a front end: the words used in messages, what is recorded
    about each session, and the other folders a run writes to (checked before it starts)."""

    name: str = "python"
    #: how to continue this run, e.g. "fdfo train --resume runs/x"
    resume_hint: str = "resume it with FDFOTrainer.resume(run folder)"
    #: how to start a separate run instead
    new_run_hint: str = "start a new run in another folder"
    #: how to go back to the run's own settings
    restore_hint: str = "give the run's own values"
    #: how to accept a change explicitly
    allow_change_hint: str = "pass allow_change=True"
    #: recorded with each session in run.json (argv, device, ...)
    session: dict = field(default_factory=dict)
    #: other folders the run writes to, by what they are ("ComfyUI's LoRA folder": Path)
    output_dirs: dict = field(default_factory=dict)
    #: bytes of previews and plots expected over the run (for the free-space check)
    extra_bytes: int = 0


def refusal_message(source: str, diffs: Sequence[Difference], front_end: FrontEnd, record: Path | None) -> str:
    lines = [f"{source} belongs to a run defined differently; continuing it like this would mix two runs:"]
    lines += [f"  - {d.describe()}" for d in diffs]
    where = f" in {record}" if record is not None else ""
    lines.append(f"To proceed: {front_end.restore_hint}; or {front_end.new_run_hint}; or {front_end.allow_change_hint} "
                 f"to continue this run with the change, recorded as a new branch{where}.")
    return "\n".join(lines)


# --- the run folder's records ----------------------------------------------------------------------


class RunRecords:
    """run.json (the definition, its branches and sessions), prompts.json and config.json.

    run.json's definition names the prompts by file, count and sha256 (prompts.json holds them);
    every write is atomic (storage), so a crash leaves the previous record.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RUN_RECORD

    def read(self) -> dict[str, Any] | None:
        """run.json of this folder in the current format, or None (absent, legacy or unreadable)."""
        try:
            data = read_json_file(self.path, "run record")  # a BOM from an editor is fine
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == RUN_FORMAT else None

    def run_id(self) -> str | None:
        """The run's identity (run.json's "run_id"), or None before the run is recorded (or for a
        record written before run ids existed: the next session adds one)."""
        data = self.read()
        value = data.get("run_id") if data else None
        return value if isinstance(value, str) and value else None

    def definition(self) -> RunDefinition | None:
        data = self.read()
        if data is None or not isinstance(data.get("definition"), dict):
            return None
        d = dict(data["definition"])
        ref = d.get("prompts")
        if isinstance(ref, dict):
            try:
                prompts = read_json_file(self.run_dir / ref.get("file", PROMPTS_FILE), "prompt list")
            except (OSError, ValueError):
                prompts = None
            if not isinstance(prompts, list) or prompts_hash(prompts) != ref.get("sha256"):
                raise FileNotFoundError(
                    f"{self.run_dir / ref.get('file', PROMPTS_FILE)} is missing or was changed (its sha256 no longer "
                    f"matches run.json); restore it, or give the prompts again"
                )
            d["prompts"] = prompts
        return RunDefinition.from_dict(d)

    def write(self, definition: RunDefinition, config_json: str, session: Mapping[str, Any],
              branch: Mapping[str, Any] | None = None, run_id: str | None = None) -> None:
        """Record the run (a new run, or one more session of it; with `branch`, a changed definition).

        The run id is the record's own; a record without one takes `run_id` (the id of the
        checkpoint resumed, when the record was lost), else a new one. ValueError when the record
        names another run than `run_id`."""
        existing = self.run_id()
        if existing is not None and run_id is not None and existing != run_id:
            raise ValueError(f"{self.path} records run {existing}, not run {run_id}")
        old = self.read() or {}
        d = definition.to_dict()
        if definition.prompts is not None:
            storage.write_json(self.run_dir / PROMPTS_FILE, definition.prompts, "prompt list", indent=0)
            d["prompts"] = {"file": PROMPTS_FILE, "count": len(definition.prompts), "sha256": definition.prompts_hash()}
        storage.write_text(self.run_dir / CONFIG_FILE, config_json, "resolved config")
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        record = {
            "format": RUN_FORMAT,
            # A run's identity across files and machines (picks, records copied elsewhere): made
            # once when the run starts, kept by every later session. Older records have none.
            "run_id": existing or run_id or new_run_id(),
            "definition": d,
            "branches": list(old.get("branches", [])) + ([{"time": now, **branch}] if branch else []),
            "sessions": list(old.get("sessions", [])) + [{"time": now, **session}],
        }
        storage.write_json(self.path, record, "run record")


def new_run_id() -> str:
    """A fresh run identity: 16 hex digits from the OS's random source (two runs made with the same
    seed, in any folder, on any machine, never share one)."""
    import uuid

    return uuid.uuid4().hex[:16]
def read_definition(path: str | Path) -> RunDefinition | None:
    """The run definition a checkpoint was trained on, without loading its tensors (mmap).

    A checkpoint from before definitions were recorded gives what it has (model fingerprint,
    config, reward); the rest is marked missing (never compared). None for a file that is not an
    FDFO checkpoint.
    """
    return definition_of(peek_checkpoint(path))


def definition_of(state: dict[str, Any]) -> RunDefinition | None:
    if state.get("format") not in READABLE_FORMATS:
        return None
    if state.get("definition"):
        return RunDefinition.from_dict(json.loads(state["definition"]))
    # Its reward was recorded as a display string, not comparable with today's spec: not compared.
    return RunDefinition.from_dict({"model": state.get("fingerprint"), "config": state.get("config")})


def recorded_definition(path: str | Path) -> RunDefinition | None:
    """The definition a resume of `path` (a checkpoint file or a run folder) continues: the
    checkpoint's own (read lazily: tensors are not loaded), else the run folder's run.json when
    no checkpoint was written yet; None when neither records one."""
    path = Path(path)
    ckpt = latest_checkpoint(path) if path.is_dir() else path
    if ckpt is not None and ckpt.exists():
        found = read_definition(ckpt)
        if found is not None:
            return found
    folder = path if path.is_dir() else (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
    return RunRecords(folder).definition()


# --- the reward's part of a definition ---------------------------------------------------------------


def reward_fields(reward: Any) -> dict[str, Any]:
    """reward, reward_options and reward_normalization of a built reward object.

    reward: its spec ("0.5*brightness + 1*saturation"; a custom object's describe()); options:
    {reward name: {option: value}} as its factory resolved them (`build_reward` records them on
    the object, defaults included, without device and micro_batch, which change no score);
    normalisation: {"mode": "none"} or the per-prompt wrapper's settings.
    """
    normalization: dict[str, Any] = {"mode": "none"}
    inner = reward
    if hasattr(reward, "normalize") and hasattr(reward, "inner"):
        normalization = {"mode": "per_prompt", "min_group": getattr(reward, "min_group", None),
                         "window": getattr(reward, "window", None), "eps": getattr(reward, "eps", None)}
        inner = reward.inner
    terms = list(getattr(inner, "terms", None) or [(1.0, inner)])
    options: dict[str, Any] = {}
    for _, r in terms:
        opts = getattr(r, "spec_options", None)
        if opts is not None:
            options[getattr(r, "name", type(r).__name__)] = dict(opts)
    if hasattr(inner, "terms"):
        spec = format_spec([(float(w), getattr(r, "spec_name", None) or _describe(r)) for w, r in terms])
    else:
        spec = getattr(inner, "spec_name", None) or _describe(inner)
    return {"reward": spec, "reward_options": options, "reward_normalization": normalization}


def _describe(reward: Any) -> str:
    describe = getattr(reward, "describe", None)
    return describe() if callable(describe) else type(reward).__name__


def format_spec(terms: Sequence[tuple[float, str]]) -> str:
    """[(1.0, "pickscore"), (0.1, "vlm")] -> "pickscore + 0.1*vlm" (parse_reward_spec reads it back)."""
    out = []
    for i, (w, name) in enumerate(terms):
        sign = "-" if w < 0 else "+"
        body = name if abs(w) == 1.0 else f"{abs(w):g}*{name}"
        out.append(("-" + body if sign == "-" else body) if i == 0 else f" {sign} {body}")
    return "".join(out)
