"""The restore of a resumed run: one for every front end (`fdfo train --resume`, the ComfyUI
Trainer node, a script).

A resume goes through these steps, each a function here:

1. `open_resumed_run(path)`: what the run recorded, read before any model is loaded: its
   definition (the newest checkpoint's, else run.json's when no checkpoint was written yet) and its
   last session (what the front end recorded about itself: threads, preview cadence, ...).
2. `ResumedRun.definition` and `ResumedRun.prompts`, `restore_reward`, `restore_judge_options`:
   what the user gives wins; what they omit comes from the run (`run.definition.restore`).
3. `continue_run(trainer, resumed, allow_change)`: the trainer reads its resume point
   (`read_resume_point`: the checkpoint, or the run record of a run stopped before its first one)
   and compares its definition with the recorded one (`check_changes`): a difference outside
   `RESUMABLE_CHANGES` is refused with one message listing each (`run.definition.refusal_message`,
   in the front end's words), unless allowed, which records it as a new branch of the run; a
   checkpoint of another run than the folder's is refused first (`check_run_identity`).

A new run, the other way round, must not start in a folder that holds a run
(`check_new_run_folder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import FDFOConfig
from .checkpoints import checkpoint_files, checkpoint_run_id, latest_checkpoint, load_checkpoint
from .definition import (
    Difference,
    FrontEnd,
    RunDefinition,
    RunRecords,
    definition_of,
    differences,
    recorded_definition,
    refusal_message,
    restore,
)
from .hooks import RunChangeRefused, TrainingError


def run_folder_of(path: str | Path) -> Path:
    """The run folder of a resume path: the folder itself, or the folder a checkpoint file lies in
    (`<run>/checkpoints/checkpoint-*.pt` -> `<run>`)."""
    p = Path(path)
    return p if p.is_dir() else p.parent.parent if p.parent.name == "checkpoints" else p.parent


def last_session(run_dir: str | Path) -> dict[str, Any]:
    """The last session run.json records for `run_dir` (what its front end recorded: argv, device,
    threads, preview cadence, ...); {} when there is none."""
    sessions = (RunRecords(run_dir).read() or {}).get("sessions") or [{}]
    return sessions[-1] if isinstance(sessions[-1], dict) else {}


@dataclass(frozen=True)
class ResumedRun:
    """What a run recorded, as a front end needs it to resume: read by `open_resumed_run`."""

    #: what the user named: a checkpoint file or a run folder
    source: Path
    #: the definition the resume continues (the newest checkpoint's, else run.json's)
    recorded: RunDefinition
    #: the last session's record in run.json ({} when none)
    session: dict = field(default_factory=dict)

    def definition(self, given: Mapping[str, Any]) -> RunDefinition:
        """The definition to resume with: what the user gave (RunDefinition fields; None or absent
        for omitted), the rest from the run (`run.definition.restore`: per-key fields merge)."""
        return restore(self.recorded, given)

    def prompts(self, name: str, given: Sequence[str] | None) -> list[str] | None:
        """A prompt list of the definition (`preview_prompts`, `eval_prompts`): `given` when the
        user gave one, else the run's recorded list, else None."""
        if given is not None:
            return list(given)
        recorded = getattr(self.recorded, name)
        return list(recorded) if recorded is not None else None


def open_resumed_run(path: str | Path, run_dir: str | Path | None = None) -> ResumedRun | None:
    """Read what a resume of `path` (a checkpoint file or a run folder) continues, without loading
    tensors; None when `path` holds neither an FDFO checkpoint nor a run record (run.json).
    run_dir: the folder the resumed run writes to, whose run.json holds the last session (default:
    `path`'s run folder)."""
    recorded = recorded_definition(path)
    if recorded is None:
        return None
    session = last_session(run_dir if run_dir is not None else run_folder_of(path))
    return ResumedRun(source=Path(path), recorded=recorded, session=session)


def new_or_resumed_definition(resumed: ResumedRun | None, given: Mapping[str, Any]) -> RunDefinition:
    """A new run's definition is what the user gave; a resumed run's is `ResumedRun.definition`."""
    return resumed.definition(given) if resumed is not None else RunDefinition(**given)


def restore_reward(resumed: ResumedRun | None, spec: str | None, options: Mapping[str, Mapping[str, Any]],
                   normalize: str | None, default: str = "toy_alignment") -> tuple[str, dict, str | None, dict]:
    """(reward spec, its options, normalisation mode or None, normalisation options) of a run.

    spec: the reward the user gave (a canonical spec, `run.definition.format_spec`) or None;
    options: {reward: {option: value}} they gave; normalize: "none" / "per_prompt" or None (not
    given). On a resume, an omitted spec is the run's, and with the run's own reward the options the
    user omits keep the run's values; an omitted normalisation is the run's. `default`: the spec of a
    new run that names none.
    """
    recorded = resumed.recorded if resumed is not None else None
    merged: dict[str, dict[str, Any]] = {}
    if recorded is not None and recorded.reward is not None and spec in (None, recorded.reward):
        spec = recorded.reward  # the same reward: options the user omits keep the run's values
        merged = {k: dict(v) for k, v in (recorded.reward_options or {}).items()}
    for name, opts in options.items():
        merged.setdefault(name, {}).update(opts)
    norm = dict((recorded.reward_normalization if recorded is not None else None) or {"mode": "none"})
    if normalize is not None:
        norm = {"mode": normalize}
    mode = norm.pop("mode", "none")
    norm = {k: v for k, v in norm.items() if v is not None}
    return spec or default, merged, (None if mode == "none" else mode), norm


def restore_judge_options(resumed: ResumedRun | None, judge: str,
                          options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The judge reward's options: the run's own when it is resumed with the same judge, with what
    the user gave (`options`, {reward: {option: value}}) on top."""
    recorded = resumed.recorded if resumed is not None else None
    same_judge = recorded is not None and (recorded.config or {}).get("judge", "") == judge
    merged = {k: dict(v) for k, v in ((recorded.judge_options if same_judge else None) or {}).items()}
    for name, opts in options.items():
        merged.setdefault(name, {}).update(opts)
    return merged


def continue_run(trainer, resumed: ResumedRun, allow_change: bool = False) -> None:
    """Continue `resumed` with `trainer` (built with the definition to resume with): the trainer
    loads the resume point and applies the change rule (`check_changes`). Raises RunChangeRefused
    for a refused change, TrainingError / FileNotFoundError for what cannot be resumed."""
    trainer.resume(resumed.source, allow_change=allow_change)


# --- what the trainer reads and checks (called by `run.trainer.RunLoop.resume`) -----------------------


@dataclass(frozen=True)
class ResumePoint:
    """Where a resume continues: a checkpoint (with its state), or a run folder that has a run
    record but no checkpoint yet (`checkpoint` and `state` None: the run starts again at epoch 0)."""

    recorded: RunDefinition
    checkpoint: Path | None = None
    state: dict | None = None

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"]) if self.state is not None else 0

    def describe(self, path: Path) -> str:
        """How messages name it: "checkpoint <file>" or "run folder <path>"."""
        return f"checkpoint {self.checkpoint}" if self.checkpoint is not None else f"run folder {path}"


def read_resume_point(path: str | Path) -> ResumePoint:
    """The resume point of `path`: a checkpoint file, or a run folder's newest checkpoint (its
    tensors loaded), else its run record. FileNotFoundError when a folder has neither;
    TrainingError for a file that is not an FDFO checkpoint."""
    path = Path(path)
    ckpt = latest_checkpoint(path) if path.is_dir() else path
    if ckpt is None:
        recorded = RunRecords(path).definition()
        if recorded is None:
            raise FileNotFoundError(f"no checkpoint-*.pt and no run record (run.json) in {path}; "
                                    "pass a checkpoint file or a run folder")
        return ResumePoint(recorded=recorded)
    state = load_checkpoint(ckpt)
    recorded = definition_of(state)
    if recorded is None:
        raise TrainingError(f"{ckpt} is not an FDFO checkpoint")
    return ResumePoint(recorded=recorded, checkpoint=ckpt, state=state)


@dataclass(frozen=True)
class AllowedChanges:
    """Changes a resume was allowed to make: the branch recorded in run.json and the log line."""

    branch: dict
    note: str
    diffs: list[Difference]


def check_changes(recorded: RunDefinition, current: RunDefinition, source: str, front_end: FrontEnd,
                  allow_change: bool, record: Path | None, epoch: int,
                  checkpoint: Path | None) -> AllowedChanges | None:
    """The change rule of a resume: compare the definition the trainer was built with (`current`)
    with the recorded one. None when they agree; a difference outside RESUMABLE_CHANGES raises
    RunChangeRefused (its message: `refusal_message` in the front end's words, `record` the run.json
    that would record a branch), unless `allow_change`: then the branch to record at `epoch`.

    A setting added after the run was recorded compares as its default; a run recorded with the
    held-out evaluation off may turn it on.
    """
    if isinstance(recorded.config, dict):  # a setting added after the run was recorded compares as its default
        recorded = recorded.replace(config={**FDFOConfig().to_dict(), **recorded.config})
    if recorded.eval_prompts is None:  # recorded with the evaluation off: turning it on is allowed
        recorded = recorded.replace(missing=recorded.missing | {"eval_prompts"})
    diffs = differences(recorded, current)
    if not diffs:
        return None
    if not allow_change:
        raise RunChangeRefused(refusal_message(source, diffs, front_end, record), diffs)
    branch = {"epoch": epoch, "checkpoint": str(checkpoint) if checkpoint else None,
              "changes": [d.to_dict() for d in diffs]}
    note = (f"continuing {source} with changes, recorded as a new branch of the run"
            + (f" in {record}" if record else "") + ": " + "; ".join(d.describe() for d in diffs))
    return AllowedChanges(branch=branch, note=note, diffs=list(diffs))


@dataclass(frozen=True)
class RunIdentity:
    """What a resumed checkpoint says about the run's identity (`check_run_identity`)."""

    #: the run id the run keeps (the checkpoint's), or None (none recorded, or a fork)
    run_id: str | None = None
    #: a checkpoint of another folder's run continued here: {"run_id", "checkpoint"}, else None
    forked_from: dict | None = None


def check_run_identity(ckpt: Path, ckpt_run: Any, run_dir: Path | None) -> RunIdentity:
    """Refuse a checkpoint of another run than the run folder's (run.json's run_id): one copied
    between folders, or `--resume` of one run's checkpoint into another run's folder, would
    continue the wrong weights and overwrite that run's checkpoints (TrainingError saying what to
    do). A checkpoint from its own folder whose run.json is gone keeps its run id; one from another
    folder continued in a folder without a run record is a fork: a new run id, its origin recorded
    in run.json. Checkpoints written before run ids existed carry none and are not checked."""
    if not isinstance(ckpt_run, str) or not ckpt_run or run_dir is None:
        return RunIdentity(run_id=ckpt_run if isinstance(ckpt_run, str) and ckpt_run else None)
    folder_run = RunRecords(run_dir).run_id()
    home = ckpt.resolve().parent
    own = home in (run_dir.resolve(), (run_dir / "checkpoints").resolve())
    if folder_run is not None and folder_run != ckpt_run:
        mine = [p for p in checkpoint_files(run_dir) if p.resolve() != ckpt.resolve() and checkpoint_run_id(p) == folder_run]
        where = (f"its newest own checkpoint is {mine[-1]}; move {ckpt.name} out of the folder to resume from there"
                 if own and mine else f"keep {ckpt.name} in its own run folder")
        raise TrainingError(
            f"checkpoint {ckpt} was written by run {ckpt_run}, but {run_dir} holds run {folder_run} (run.json): "
            f"{'it was copied here from another run' if own else 'it belongs to another run folder'}, and continuing it "
            f"would overwrite this run's checkpoints with another run's weights. To continue run {folder_run}: {where}. "
            f"To continue run {ckpt_run}: resume its own folder. To start a new run from its weights: resume it into a "
            f"new, empty run folder.")
    if own or folder_run == ckpt_run:
        return RunIdentity(run_id=ckpt_run)
    return RunIdentity(forked_from={"run_id": ckpt_run, "checkpoint": str(ckpt)})


def check_new_run_folder(run_dir: Path, definition: RunDefinition, front_end: FrontEnd) -> None:
    """A new run must not write into a folder that holds another run (or this run's checkpoints):
    TrainingError with the front end's hints (how to resume it, how to start elsewhere)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        raise TrainingError(
            f"{run_dir} already holds a run (its newest checkpoint is {ckpt.name}); a new run there would mix "
            f"the two. To continue that run: {front_end.resume_hint}. Otherwise: {front_end.new_run_hint}."
        )
    try:
        recorded = RunRecords(run_dir).definition()
    except FileNotFoundError:
        recorded = None
    diffs = differences(recorded, definition) if recorded is not None else []
    if diffs:
        raise TrainingError(
            f"{run_dir} holds the record of another run (run.json, no checkpoint yet) that differs in "
            + ", ".join(d.name for d in diffs) + f"; {front_end.new_run_hint}."
        )
