"""Training by picking: pairwise rewards, and the rendezvous between the trainer and an artist.

FDFO trains on pairs of near-identical images, and all it needs of a pair is the reward
difference R_left - R_right (ALGORITHM.md, "finite differences"). A person can give exactly
that: "the left one is better" is +1, "the right one" -1, "the same" 0, and a skipped pair is
dropped. Rewards that score pairs rather than single images extend the reward interface:

    PairwiseReward.score_pairs(left [n, 3, H, W] in [0, 1], right, prompts [n], PairContext)
        -> PairScores(delta [n] float64 = R_left - R_right (NaN: no score), declined [n] bool)

The trainer turns delta into the per-image rewards (+delta / 2, -delta / 2), whose difference
is delta. A declined pair (skipped on purpose, or left unpicked) is dropped without counting
as a reward failure.

Waiting for a person happens in the trainer's thread (ComfyUI's execution thread); answers
come from another thread (the web server's event loop, through `PickingHub.answer`). A
`PickSession` holds the open round of pairs under a lock; `PickSession.wait` sleeps on a
condition in short slices and calls `check_cancel` between them, so ComfyUI's Cancel stops a
wait within a fraction of a second and the server never blocks. Nothing here imports ComfyUI:
the front end passes a `publish(event, data)` callable (ComfyUI: a websocket message) and
calls `answer` / `finish` from its routes.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .pick_records import CHOICES
from .base import Reward, RewardError

#: Seconds between cancel checks while waiting for picks.
POLL_SECONDS = 0.2


@dataclass
class PairContext:
    """What a pairwise reward knows about the pairs it scores (given by the trainer)."""

    epoch: int  # 0-based epoch being scored
    pair_ids: list[int]  # the pairs' global indices within the epoch
    seeds: list[int]  # each pair's shared noise seed (the trainer's derive_seed(seed, "pair", epoch, id))
    run_dir: Path | None = None  # the run folder (picks.jsonl and the picked images go there)
    run_id: str | None = None  # the run's identity (run.json's run_id), written into every pick
    check_cancel: Callable[[], None] | None = None  # raises to stop (ComfyUI's Cancel)
    log: Callable[[str], None] | None = None


@dataclass
class PairScores:
    """A pairwise reward's answer for n pairs."""

    delta: torch.Tensor  # [n] float64 R_left - R_right; NaN where the pair has no score
    declined: torch.Tensor  # [n] bool: dropped on purpose (skipped, unpicked), not a failure
    metrics: dict[str, Any] = field(default_factory=dict)  # added to the epoch's metrics


class PairwiseReward(Reward):
    """A reward that scores the two images of a pair together (`score_pairs`); see the module docstring.

    It cannot score single images, so `__call__` raises: connect it to the FDFO Trainer, which
    asks for pairs. (Subclasses that can score single images may override `_score`.)
    """

    pairwise = True

    def score_pairs(self, left: torch.Tensor, right: torch.Tensor, prompts: Sequence[str],
                    context: PairContext) -> PairScores:
        raise NotImplementedError

    def _score(self, images, prompts):
        raise RewardError(f"{self.name} scores pairs of images (which of two is better), not single images: connect it "
                          "straight to the FDFO Trainer (not to Score Images, the Paired Sampler or Combine Rewards)")


def is_pairwise(reward: Any) -> bool:
    return bool(getattr(reward, "pairwise", False)) and callable(getattr(reward, "score_pairs", None))


# ---- the rendezvous -------------------------------------------------------------------------------


@dataclass
class PickItem:
    """One pair shown to the artist."""

    pair_id: int
    prompt: str
    left_image: Path
    right_image: Path
    choice: str | None = None  # left / right / equal / skip once answered
    answered_by: str | None = None  # the window (browser tab) whose answer `choice` is, when it said


@dataclass
class PickRound:
    """The pairs of one wait (one epoch's share for the artist)."""

    epoch: int
    items: list[PickItem]
    title: str = ""
    unpicked: str = "drop"  # what happens to pairs left unpicked: "drop" or "preference"
    deadline: float | None = None  # time.time() when the wait ends, or None
    round_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    finished_early: bool = False  # the artist let the run go on without the rest

    @property
    def picked(self) -> int:
        return sum(1 for it in self.items if it.choice is not None)

    @property
    def complete(self) -> bool:
        return self.finished_early or all(it.choice is not None for it in self.items)


class PickError(ValueError):
    """An answer that cannot be taken (unknown session or round, bad choice); the message says why."""


class PickConflict(PickError):
    """A second answer for a pair that did not know of the first (another window answered it
    meanwhile): refused, so no pick is overwritten unseen. The message says what the pair holds."""


#: `PickSession.answer(expect=...)` default: take the answer whatever the pair holds (in-process callers).
UNCHECKED = object()


class PickSession:
    """One run's picking: at most one open round; answers from any thread, the wait in the trainer's.

    `publish(event, data)` announces "round" (a new round's payload), "update" (after each
    answer) and "closed" (the round ended: done, timed out, finished early or cancelled).
    `on_answer(round, item, choice)` is called (under the session's write lock, outside the state
    lock) for every valid answer before it is taken and acknowledged: the reward appends it to picks.jsonl
    there, so an acknowledged click is on disk.
    """

    def __init__(self, session_id: str | None = None, publish: Callable[[str, dict], None] | None = None,
                 on_answer: Callable[[PickRound, PickItem, str], None] | None = None):
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.publish = publish
        self.on_answer = on_answer
        self.round: PickRound | None = None
        self._cond = threading.Condition()
        self._write = threading.Lock()

    # --- payloads ---------------------------------------------------------------------------

    def payload(self, rnd: PickRound | None = None) -> dict[str, Any]:
        rnd = rnd or self.round
        if rnd is None:
            return {"session": self.session_id, "round": None}
        return {
            "session": self.session_id, "round": rnd.round_id, "epoch": rnd.epoch, "title": rnd.title,
            "picked": rnd.picked, "total": len(rnd.items), "unpicked": rnd.unpicked,
            "deadline": rnd.deadline, "now": time.time(),
            "pairs": [{"index": i, "pair_id": it.pair_id, "prompt": it.prompt, "choice": it.choice,
                       "by": it.answered_by} for i, it in enumerate(rnd.items)],
        }

    def _send(self, event: str, data: dict) -> None:
        if self.publish is None:
            return
        try:
            self.publish(event, data)
        except Exception:  # a closed socket must not stop training: the panel can ask again (/current)
            pass

    # --- the trainer's side ---------------------------------------------------------------------

    def open(self, rnd: PickRound) -> None:
        with self._cond:
            self.round = rnd
        self._send("round", self.payload(rnd))

    def wait(self, timeout: float | None = None, check_cancel: Callable[[], None] | None = None,
             poll: float = POLL_SECONDS) -> str:
        """Block until the open round is complete, finished early, or `timeout` seconds pass.

        Returns "complete", "finished" (the artist went on without the rest) or "timeout".
        Calls `check_cancel` every `poll` seconds; whatever it raises propagates after the round
        is closed (the panel is told). The round stays readable in `self.round` afterwards.
        """
        rnd = self.round
        if rnd is None:
            raise RuntimeError("no open round to wait for")
        if timeout is not None and timeout > 0:
            rnd.deadline = time.time() + timeout
            self._send("update", self.payload(rnd))
        outcome = "complete"
        try:
            with self._cond:
                while not rnd.complete:
                    if rnd.deadline is not None and time.time() >= rnd.deadline:
                        outcome = "timeout"
                        break
                    self._cond.release()
                    try:
                        if check_cancel is not None:
                            check_cancel()
                    finally:
                        self._cond.acquire()
                    if rnd.complete:
                        break
                    left = poll if rnd.deadline is None else max(0.0, min(poll, rnd.deadline - time.time()))
                    self._cond.wait(left)
                if outcome != "timeout" and rnd.finished_early and any(it.choice is None for it in rnd.items):
                    outcome = "finished"
        except BaseException:
            self.close("cancelled")
            raise
        self.close(outcome)
        return outcome

    def close(self, reason: str) -> None:
        with self._cond:
            rnd, self.round = self.round, None
            self._cond.notify_all()
        if rnd is not None:
            self._send("closed", {"session": self.session_id, "round": rnd.round_id, "reason": reason,
                                  "picked": rnd.picked, "total": len(rnd.items)})

    # --- the front end's side (any thread) ------------------------------------------------------

    def _round(self, round_id: str) -> PickRound:
        rnd = self.round
        if rnd is None or rnd.round_id != round_id:
            raise PickError(f"round {round_id!r} is not open any more (the run moved on, timed out or was cancelled); "
                            "the panel shows the current one")
        return rnd

    def answer(self, round_id: str, index: int, choice: str, expect: Any = UNCHECKED,
               client: str | None = None) -> dict[str, Any]:
        """Record the artist's choice for pair `index` of the round.

        `expect` is the pair's choice as the answering window showed it (None: not picked yet).
        When given, the answer is taken only if the pair still holds exactly that: a second answer
        for the same pair from a window that had not seen the first (two tabs on one round) raises
        `PickConflict` instead of overwriting it, and a correction names what it replaces.
        `client` identifies the window (kept as `PickItem.answered_by` and sent with the update,
        so the window whose pick was changed can say so). Without `expect` (in-process callers)
        a second answer corrects the first.

        Raises PickError for a closed round, a bad index or a choice outside left / right /
        equal / skip. Returns the round's payload after the answer.
        """
        choice = str(choice).strip().lower()
        if choice not in CHOICES:
            raise PickError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        if expect is not UNCHECKED and expect is not None:
            expect = str(expect).strip().lower()
            if expect not in CHOICES:
                raise PickError(f"expect must be null or one of {', '.join(CHOICES)}, got {expect!r}")
        with self._write:  # one answer at a time: its line is on disk before the next is taken
            with self._cond:
                rnd = self._round(round_id)
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(rnd.items):
                    raise PickError(f"pair index must be 0..{len(rnd.items) - 1}, got {index!r}")
                item = rnd.items[index]
                if expect is not UNCHECKED and item.choice != expect:
                    raise PickConflict(self._conflict_message(index, item, choice, expect, client))
                previous, previous_by = item.choice, item.answered_by
            if self.on_answer is not None:
                self.on_answer(rnd, item, choice)  # raises when it cannot be saved: then it is not taken
            with self._cond:
                item.choice = choice
                item.answered_by = client
                self._cond.notify_all()
                data = self.payload(rnd)
        data["last"] = {"index": index, "choice": choice, "client": client, "previous": previous,
                        "previous_client": previous_by}
        self._send("update", data)
        return data

    @staticmethod
    def _conflict_message(index: int, item: PickItem, choice: str, expect: str | None, client: str | None) -> str:
        where = "this window" if client is not None and item.answered_by == client else "another window or tab"
        said = f"'{expect}'" if expect is not None else "no pick yet"
        holds = f"'{item.choice}'" if item.choice is not None else "no pick"
        return (f"pair {index + 1} was answered in {where} meanwhile: it holds {holds}, while this window showed {said}. "
                f"Your '{choice}' was not saved; the panel now shows the pair as it is: answer again to change it.")

    def finish(self, round_id: str) -> dict[str, Any]:
        """Let the run go on without the round's unpicked pairs (they are handled as on a timeout)."""
        with self._cond:
            rnd = self._round(round_id)
            rnd.finished_early = True
            self._cond.notify_all()
            return self.payload(rnd)

    def image_path(self, round_id: str, index: int, side: str) -> Path:
        with self._cond:
            rnd = self._round(round_id)
            if not 0 <= index < len(rnd.items):
                raise PickError(f"pair index must be 0..{len(rnd.items) - 1}, got {index}")
            if side not in ("left", "right"):
                raise PickError(f"side must be 'left' or 'right', got {side!r}")
            item = rnd.items[index]
            return item.left_image if side == "left" else item.right_image


class PickingHub:
    """The picking sessions of one process, by id: what the front end's routes talk to.

    Thread-safe. A session registers itself for the duration of a run (`add` / `remove`).
    """

    def __init__(self) -> None:
        self._sessions: dict[str, PickSession] = {}
        self._lock = threading.Lock()
        self._order = itertools.count()

    def add(self, session: PickSession) -> PickSession:
        with self._lock:
            self._sessions[session.session_id] = session
        return session

    def remove(self, session: PickSession) -> None:
        with self._lock:
            if self._sessions.get(session.session_id) is session:
                del self._sessions[session.session_id]

    def get(self, session_id: str) -> PickSession:
        with self._lock:
            session = self._sessions.get(str(session_id))
        if session is None:
            raise PickError(f"no picking session {session_id!r} is running (the run ended or was cancelled)")
        return session

    def open_rounds(self) -> list[dict[str, Any]]:
        """The payloads of every open round (a panel that reconnects asks for these)."""
        with self._lock:
            sessions = list(self._sessions.values())
        return [s.payload() for s in sessions if s.round is not None]

    def answer(self, session_id: str, round_id: str, index: int, choice: str, expect: Any = UNCHECKED,
               client: str | None = None) -> dict[str, Any]:
        return self.get(session_id).answer(round_id, index, choice, expect=expect, client=client)

    def finish(self, session_id: str, round_id: str) -> dict[str, Any]:
        return self.get(session_id).finish(round_id)

    def image_path(self, session_id: str, round_id: str, index: int, side: str) -> Path:
        return self.get(session_id).image_path(round_id, index, side)


def parse_answer(body: Any) -> tuple[str, str, int, str, str | None, str | None]:
    """(session, round, index, choice, expect, client) from an answer's JSON body; PickError says what is wrong.

    `expect` (the pair's choice as the window showed it, null when unpicked) defaults to null: an
    answer over the network never overwrites a pick its window did not show (`PickSession.answer`).
    `client` (optional) names the window.
    """
    if not isinstance(body, dict):
        raise PickError("the answer must be a JSON object {session, round, index, choice, expect}")
    missing = [k for k in ("session", "round", "index", "choice") if k not in body]
    if missing:
        raise PickError(f"the answer lacks {', '.join(missing)}")
    index = body["index"]
    if isinstance(index, bool) or not isinstance(index, int):
        raise PickError(f"index must be a whole number, got {index!r}")
    expect = body.get("expect")
    if expect is not None and not isinstance(expect, str):
        raise PickError(f"expect must be null or a choice, got {expect!r}")
    client = body.get("client")
    client = None if client is None else str(client)[:64]
    return str(body["session"]), str(body["round"]), index, str(body["choice"]), expect, client
