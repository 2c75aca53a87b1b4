"""The "human picks" reward: an artist picks the better image of each FDFO pair while training runs.

For each pair the artist answers left, right, equal or skip; the pair's reward difference
R_left - R_right is +1, -1 or 0, and a skipped pair is dropped (`fdfo_core.rewards.pick_records`). This is
the finite difference FDFO trains on (ALGORITHM.md, "finite differences"), given by a person.

Per epoch (`HumanPicksReward.score_pairs`):

1. The first ``human_pairs`` pairs (all when 0) go to the artist: their images are written to
   ``<run>/picks/e00003-p00017-left.png`` and ``-right.png`` and a round is opened on the
   `PickSession` (the front end shows it and sends answers back). Every answer is appended to
   ``<run>/picks.jsonl`` the moment it arrives (one fsynced line, `picks.append_pick`), so
   nothing clicked is lost to a crash or a Cancel. A pair already picked in picks.jsonl (a
   resumed run replays the same pairs: they are seeded) is not asked again.
2. The wait ends when every pair is answered, when the artist lets the run go on without the
   rest, or after ``timeout`` seconds (0: no limit). Cancel stops it at once.
3. Pairs left over (unpicked ones, and in mixed mode every pair after the first ``human_pairs``)
   are dropped (``unpicked="drop"``) or scored by a Bradley-Terry preference model refitted on
   every human pick of the run so far (``unpicked="preference"``; `rewards.preference`): its
   reward difference is 2 P(left preferred) - 1, on the picks' scale. Until the model has at
   least ``min_picks`` picks, and (``require_accuracy``, the default) until its held-out
   accuracy is measured and its image score ranks the held-out picks clearly above chance, they
   are dropped: a model fitted on 8 picks guesses, and its saturated guesses would count like
   the artist's picks. Then its differences are weighted by that reliability, 2 a - 1 for a
   held-out score accuracy a (`FitReport.reliability`).
   Model-scored pairs are recorded in picks.jsonl with ``"source": "model"`` (never learned from).

The reward records, as a run's definition, its mode (human_pairs, unpicked, min_picks and the
preference model's encoder and head); the timeout is a session setting and may change on resume.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .pairwise import PairContext, PairScores, PairwiseReward, PickingHub, PickItem, PickRound, PickSession
from .pick_records import PickRecord, append_pick, now_timestamp, read_picks
from .base import RewardError

UNPICKED = ("drop", "preference")
PICKS_FILE = "picks.jsonl"
IMAGES_FOLDER = "picks"


class HumanPicksReward(PairwiseReward):
    """See the module docstring. `preference`: a `PreferenceModel` (unfitted is fine) for mixed mode."""

    name = "human_picks"

    def __init__(self, hub: PickingHub | None = None, publish: Callable[[str, dict], None] | None = None,
                 human_pairs: int = 0, timeout: float = 0.0, unpicked: str = "drop", preference=None,
                 min_picks: int = 8, title: str = "", require_accuracy: bool = True):
        super().__init__()
        if unpicked not in UNPICKED:
            raise RewardError(f"human_picks: unpicked must be one of {', '.join(UNPICKED)}, got {unpicked!r}")
        if unpicked == "preference" and preference is None:
            raise RewardError("human_picks: unpicked='preference' needs a preference model (choose an encoder)")
        if human_pairs < 0 or timeout < 0 or min_picks < 1:
            raise RewardError(f"human_picks: human_pairs and timeout must be >= 0 and min_picks >= 1, got {human_pairs}, "
                              f"{timeout}, {min_picks}")
        self.hub = hub or PickingHub()
        self.publish = publish
        self.human_pairs = int(human_pairs)
        self.timeout = float(timeout)
        self.unpicked = unpicked
        self.preference = preference
        self.min_picks = int(min_picks)
        self.require_accuracy = bool(require_accuracy)
        self.title = title
        self.session: PickSession | None = None
        self._run_dir: Path | None = None
        self._picked: dict[tuple[int, int], PickRecord] = {}  # this run's human picks by (epoch, pair_id)
        self._run_id: str | None = None
        self._weight = 1.0  # the preference model's guesses, relative to a pick (mixed mode)
        self._lock = threading.Lock()
        self.spec_name = "human_picks"
        self.spec_options = self.record_options()

    # --- what defines a run --------------------------------------------------------------------

    def record_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"human_pairs": self.human_pairs, "unpicked": self.unpicked, "min_picks": self.min_picks}
        if not self.require_accuracy:  # (recorded only when off: runs recorded before it compare equal)
            opts["require_accuracy"] = False
        if self.preference is not None and self.unpicked == "preference":
            pm = self.preference
            opts["preference"] = {"encoder": pm.encoder.kind, "encoder_source": str(pm.encoder.source),
                                  "head": pm.head.kind, "hidden": pm.head.hidden, "use_prompt": pm.head.use_prompt}
        return opts

    def describe(self) -> str:
        who = "all pairs" if self.human_pairs == 0 else f"first {self.human_pairs} pairs per epoch"
        rest = "dropped" if self.unpicked == "drop" else f"scored by a preference model on {self.preference.encoder.describe()}"
        return f"human_picks({who}; unpicked pairs {rest})"

    # --- a run's files ---------------------------------------------------------------------------

    def _start_run(self, run_dir: Path, log, run_id: str | None = None) -> None:
        """First call of a run: read the picks already made there (a resumed run) and teach them to the model."""
        self._run_dir = run_dir
        self._run_id = run_id  # written into every pick: its identity across runs
        self._picked = {}
        if self.preference is not None:  # a new run learns from its own picks only
            self.preference = fresh_preference_model(self.preference)
        path = run_dir / PICKS_FILE
        if not path.exists():
            return
        data = read_picks(path)
        for rec in data.records:
            if rec.source == "human":
                self._picked[(rec.epoch, rec.pair_id)] = rec
        if log:
            log(f"picks: {data.summary()} in {path} (kept; pairs picked there are not asked again)")
            for p in data.problems[:5]:
                log(f"picks: skipped a damaged line: {p}")
        if self.preference is not None:
            self.preference.add_records([r for r in self._picked.values()])

    def _image_paths(self, epoch: int, pair_id: int) -> tuple[Path, Path]:
        folder = self._run_dir / IMAGES_FOLDER
        stem = f"e{epoch:05d}-p{pair_id:05d}"
        return folder / f"{stem}-left.png", folder / f"{stem}-right.png"

    def _save_images(self, left: torch.Tensor, right: torch.Tensor, epoch: int, pair_id: int) -> tuple[Path, Path]:
        from ..files.drawing import save_png, to_pil
        from ..files.storage import ensure_dir

        paths = self._image_paths(epoch, pair_id)
        ensure_dir(paths[0].parent, "picked images folder")
        for image, path in zip((left, right), paths):
            save_png(to_pil(image.clamp(0, 1)), path, "picked image")
        return paths

    def _record(self, epoch: int, pair_id: int, seed: int, prompt: str, choice: str, paths: tuple[Path, Path],
                source: str = "human", extra: dict | None = None) -> PickRecord:
        rel = [str(p.relative_to(self._run_dir)) for p in paths]
        rec = PickRecord(prompt=prompt, epoch=epoch, pair_id=pair_id, choice=choice, left_image=rel[0], right_image=rel[1],
                         seed=seed, timestamp=now_timestamp(), source=source, extra=dict(extra or {}),
                         run_id=self._run_id, base_dir=self._run_dir,
                         file=(self._run_dir / PICKS_FILE).resolve())
        with self._lock:
            append_pick(self._run_dir / PICKS_FILE, rec)
        return rec

    def _run_scope(self) -> str:
        """`PickRecord.run_scope` of the picks this run writes."""
        return f"run:{self._run_id}" if self._run_id else f"file:{(self._run_dir / PICKS_FILE).resolve()}"

    # --- one epoch -------------------------------------------------------------------------------

    def score_pairs(self, left: torch.Tensor, right: torch.Tensor, prompts: Sequence[str],
                    context: PairContext) -> PairScores:
        if context.run_dir is None:
            raise RewardError("human_picks needs a run folder (picks.jsonl and the picked images are written there)")
        run_dir = Path(context.run_dir)
        if self._run_dir != run_dir:
            self._start_run(run_dir, context.log, context.run_id)
        n = left.shape[0]
        epoch = context.epoch
        choices: list[str | None] = [None] * n  # left / right / equal / skip
        source = [""] * n  # human / model / dropped
        model_delta: dict[int, float] = {}
        human = range(n) if self.human_pairs == 0 else range(min(n, self.human_pairs))

        # 1. the artist's pairs: earlier picks of the same pair are reused, the rest asked for
        items: dict[int, PickItem] = {}
        reused = 0
        for i in human:
            pid, seed, prompt = context.pair_ids[i], context.seeds[i], prompts[i]
            old = self._picked.get((epoch, pid))
            if old is not None and old.prompt == prompt and old.seed == seed:
                choices[i], source[i] = old.choice, "human"
                reused += 1
                continue
            lp, rp = self._save_images(left[i], right[i], epoch, pid)
            items[i] = PickItem(pair_id=pid, prompt=prompt, left_image=lp, right_image=rp)
        outcome, waited = "complete", 0.0
        if items:
            outcome, waited = self._ask(epoch, items, context)
            for i, item in items.items():
                if item.choice is None:
                    continue
                choices[i], source[i] = item.choice, "human"
                if self.preference is not None:
                    from .preference import pair_key

                    self.preference.add_pair(left[i], right[i], item.prompt, item.choice,
                                             key=pair_key(epoch, item.pair_id, context.seeds[i], item.prompt,
                                                          run=self._run_scope()))

        # 2. the rest: dropped, or scored by the preference model refitted on every pick so far
        rest = [i for i in range(n) if not source[i]]
        model_ready, fit_note = self._refit() if rest and self.unpicked == "preference" else (False, "")
        if rest and model_ready:
            # weighted by the model's measured reliability: a guess counts less than a pick
            d = self._weight * self.preference.pair_reward_delta(left[rest], right[rest], [prompts[i] for i in rest]).double()
            for k, i in enumerate(rest):
                model_delta[i] = float(d[k])
                source[i] = "model"
                lp, rp = self._save_images(left[i], right[i], epoch, context.pair_ids[i])
                choice = "left" if d[k] > 1e-6 else "right" if d[k] < -1e-6 else "equal"
                self._record(epoch, context.pair_ids[i], context.seeds[i], prompts[i], choice, (lp, rp), source="model",
                             extra={"reward_delta": round(float(d[k]), 6)})
        else:
            for i in rest:
                source[i] = "dropped"

        delta = torch.full((n,), float("nan"), dtype=torch.float64)
        declined = torch.zeros(n, dtype=torch.bool)
        for i in range(n):
            if source[i] == "model":
                delta[i] = model_delta[i]
            elif source[i] == "human" and choices[i] != "skip":
                delta[i] = {"left": 1.0, "right": -1.0, "equal": 0.0}[choices[i]]
            else:
                declined[i] = True
        counts = {c: sum(1 for i in range(n) if source[i] == "human" and choices[i] == c)
                  for c in ("left", "right", "equal", "skip")}
        metrics: dict[str, Any] = {
            "picks_human": sum(1 for s in source if s == "human"), "picks_reused": reused,
            "picks_left": counts["left"], "picks_right": counts["right"], "picks_equal": counts["equal"],
            "picks_skipped": counts["skip"], "pairs_model_scored": sum(1 for s in source if s == "model"),
            "pairs_unpicked_dropped": sum(1 for s in source if s == "dropped"), "pick_wait_seconds": waited,
            "pick_outcome": outcome,
        }
        if self.preference is not None and self.preference.fitted:
            metrics["preference_heldout_accuracy"] = self.preference.report.heldout_accuracy
            metrics["preference_pairs"] = self.preference.report.pairs
        if context.log:
            line = (f"picks, epoch {epoch + 1}: {metrics['picks_human']} picked by hand ({counts['left']} left, "
                    f"{counts['right']} right, {counts['equal']} same, {counts['skip']} skipped) in {waited:.0f} s")
            if metrics["pairs_model_scored"]:
                line += f", {metrics['pairs_model_scored']} scored by the preference model"
            if metrics["pairs_unpicked_dropped"]:
                line += f", {metrics['pairs_unpicked_dropped']} unpicked and dropped"
            if outcome != "complete":
                line += f" ({'timed out' if outcome == 'timeout' else 'the artist went on without the rest'})"
            if fit_note:
                line += f"; {fit_note}"
            context.log(line)
        return PairScores(delta=delta, declined=declined, metrics=metrics)

    def _ask(self, epoch: int, items: dict[int, PickItem], context: PairContext) -> tuple[str, float]:
        """Open a round with `items`, wait for the artist; (outcome, seconds waited)."""
        seeds = {context.pair_ids[i]: context.seeds[i] for i in items}

        def on_answer(rnd: PickRound, item: PickItem, choice: str) -> None:
            rec = self._record(rnd.epoch, item.pair_id, seeds[item.pair_id], item.prompt, choice,
                               (item.left_image, item.right_image))
            self._picked[(rnd.epoch, item.pair_id)] = rec

        if self.session is None:
            self.session = PickSession(publish=self.publish)
        session = self.session
        session.on_answer = on_answer
        rnd = PickRound(epoch=epoch, items=list(items.values()), title=self.title or self._run_dir.name,
                        unpicked=self.unpicked)
        self.hub.add(session)
        t0 = time.monotonic()
        try:
            session.open(rnd)
            if context.log:
                context.log(f"waiting for picks: {len(rnd.items)} pairs of epoch {epoch + 1} in the FDFO picking panel"
                            + (f" (timeout {self.timeout:.0f} s)" if self.timeout else ""))
            outcome = session.wait(self.timeout or None, context.check_cancel)
        finally:
            self.hub.remove(session)
        return outcome, time.monotonic() - t0

    def _refit(self) -> tuple[bool, str]:
        """Refit the preference model on every human pick so far; (usable, a note for the log)."""
        pm = self.preference
        if pm is None:
            return False, ""
        n = len(pm.pairs)
        if n < self.min_picks:
            return False, f"preference model waits for {self.min_picks} picks (has {n})"
        try:
            report = pm.refit() if pm.fitted else pm.fit()
        except RewardError as e:  # e.g. only "same" picks so far: nothing to learn yet
            return False, f"preference model not used: {e}"
        self._weight = 1.0
        if self.require_accuracy:
            if report.reliability == 0.0:
                why = ("its held-out accuracy is not measured yet" if report.heldout_score_accuracy is None else
                       f"its image score ranks {100 * report.heldout_score_accuracy:.0f} % of the held-out picks right, "
                       f"not clearly above chance on {report.heldout_pairs} pairs")
                return False, f"preference model waits: {why} ({n} picks); unpicked pairs are dropped"
            self._weight = report.reliability
        note = report.summary().replace("\n", "; ")
        if self.require_accuracy:
            note += f"; its guesses count {self._weight:.2f} of a pick (2 x held-out score accuracy - 1)"
        return True, note

    def state_dict(self) -> dict:
        return {"format": "human_picks/1"}  # the picks themselves live in picks.jsonl

    def load_state_dict(self, state: dict) -> None:
        return None


def fresh_preference_model(pm):
    """An unfitted `PreferenceModel` with `pm`'s encoder and settings and no pairs."""
    from .preference import PreferenceModel

    return PreferenceModel(pm.encoder, use_prompt=pm.head.use_prompt, hidden=pm.head.hidden,
                           weight_decay=pm.weight_decay, holdout=pm.holdout, seed=pm.seed,
                           encoder_model=pm.encoder_model)
