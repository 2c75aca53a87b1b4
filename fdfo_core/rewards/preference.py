"""A preference reward learned from an artist's picks: a Bradley-Terry model on frozen embeddings.

Each pick compares the two images of a pair (`fdfo_core.rewards.pick_records`). The model gives every image a
score s(x, p) and explains a pick by the Bradley-Terry probability (Bradley and Terry 1952; the
form RLHF reward models use, e.g. Ouyang et al. 2022, eq. 1)

    P(left preferred) = sigmoid(s(x_left, p) - s(x_right, p))

fitted by minimising the binary cross-entropy to the pick's target (1 left, 0 right, 0.5 equal;
skipped pairs are dropped) plus ``weight_decay * |W|^2`` on the head's weight matrices.

    s(x, p) = head(standardise(f(x, p))),    f(x, p) = e(x)               (image only)
                                             f(x, p) = [e(x), e(x) * t(p)] (use_prompt)

e(x) is a frozen image encoder's unit embedding (`image_encoders`: CLIP, SigLIP, DINOv2, CSD),
t(p) the prompt's embedding in the same space (CLIP / SigLIP only); the elementwise product lets
the preference depend on the prompt (a feature of the prompt alone would cancel in the
difference). `standardise` subtracts the mean and divides by the standard deviation of the
training features (stored with the model): embeddings of one encoder are nearly parallel, and
without it the fit is badly conditioned. The head is linear (no bias: it cancels) or a one-hidden
-layer GELU MLP. Fitting is full-batch L-BFGS, deterministic for a given seed.

The reward is the score itself, ``scale * s(x, p)``, in logits: a difference of 1 means the
model prefers the image 73 % of the time. For a pair the picks' own scale (+1 / -1 / 0) is matched
by `PreferenceModel.pair_reward_delta` = 2 * P(left preferred) - 1.

Position bias: people pick the left (or right) image more often than the images alone explain.
The fit absorbs it with one more logit b, P(left preferred) = sigmoid(s(x_left) - s(x_right) + b),
that is not part of the score (so the reward does not learn the habit), and reports
sigmoid(b), the chance of "left" between two images the model scores alike.

Held-out accuracy: a fixed share of the pairs (``holdout``, 20 %) is left out, the model is fitted
on the rest and predicts the held-out picks that were not "equal" (with the position bias: the
person's picks, habit included); it is reported next to the always-left baseline (the share of those pairs picked left), which a model must beat to know
anything. The saved model is then fitted on every pair. Picks with no decisive pair (only "same"
or skipped) are refused: they would fit a zero model, a constant reward.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .base import RewardError, to_nchw
from .clip_common import ModelReward, as_device
from .bradley_terry import (
    HEADS, MIN_HELDOUT, FitReport, PreferenceHead, fit_head, fit_warnings, left_share, pair_accuracy,
)
from .image_encoders import ENCODER_KINDS, ImageEncoder, load_image_encoder
from .registry import register_reward

FORMAT = "fdfo-preference/1"


def pair_key(epoch: int, pair_id: int, seed: int | None, prompt: str, run: str = "") -> str:
    """The identity of a picked pair: its run (`PickRecord.run_scope`: "run:<run_id>", or
    "file:<picks file>" for a file written before run ids) and its place in that run. Runs made
    with the same seed repeat epoch, pair, seed and prompt, so without the run one run's picks
    would replace another's. The held-out split (a hash of the key) is the same on any machine
    (`split_key`); a pick read twice (the same file given twice, or a copy) is one pair;
    a pick added from memory (`PreferenceModel.add_pair`) with this key is the same pair as its
    line in picks.jsonl."""
    return f"{epoch}/{pair_id}/{seed}/{prompt}" + (f"{_RUN_SEP}{run}" if run else "")


_RUN_SEP = "\x1f"  # (a control character: never in a prompt)


def split_key(key: str) -> str:
    """The part of a pair key the held-out split hashes: all of it for picks with a run id, the
    pair without its file for older picks (so the split does not depend on where a file lies)."""
    pair, _, run = key.partition(_RUN_SEP)
    return key if run.startswith("run:") else pair


@dataclass
class _Pair:
    left: torch.Tensor  # [D] image embedding
    right: torch.Tensor
    prompt: str
    target: float
    key: str


class PreferenceModel:
    """A frozen image encoder plus a Bradley-Terry head; fits on picks, scores images.

    The picking front end keeps one of these per run: `add_records` / `add_pair` as picks come
    in (image embeddings are computed once per file and cached), `refit()` each epoch, and
    `pair_reward_delta` for the pairs the artist did not pick (mixed mode).
    """

    def __init__(self, encoder: ImageEncoder, use_prompt: bool = False, hidden: int = 0, weight_decay: float = 1e-2,
                 holdout: float = 0.2, seed: int = 0, encoder_model: str | None = None):
        if use_prompt and not encoder.has_text:
            raise RewardError(f"preference: use_prompt needs an encoder with a text tower (clip or siglip); "
                              f"{encoder.describe()} cannot embed text ({encoder.text_problem})")
        if not 0.0 <= holdout < 1.0:
            raise RewardError(f"preference: holdout must be in [0, 1), got {holdout}")
        self.encoder = encoder
        self.encoder_model = encoder_model
        self.weight_decay = float(weight_decay)
        self.holdout = float(holdout)
        self.seed = int(seed)
        self.head = PreferenceHead(encoder.dim, use_prompt=use_prompt, hidden=hidden, seed=seed)
        self.pairs: list[_Pair] = []
        self._keys: dict[str, int] = {}
        self._cache: dict[tuple[str, int, int], torch.Tensor] = {}
        # Keys of what was not learned from, as sets so that reading a file again counts nothing twice.
        self._skipped: set[str] = set()
        self._model_scored: set[str] = set()
        self._missing: dict[str, str] = {}
        # The head fitted on the training split only (held-out accuracy); kept for warm starts so the
        # held-out pairs never leak into it.
        self._probe: PreferenceHead | None = None
        self.report = FitReport()
        self.fitted = False
        self.sources: list[str] = []

    # --- data -------------------------------------------------------------------------------

    def _embed_file(self, path: Path) -> torch.Tensor:
        from ..files.image_files import read_image

        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        if key not in self._cache:
            self._cache[key] = self.encoder.embed_images([read_image(path)])[0].cpu()
        return self._cache[key]

    def _store(self, pair: _Pair) -> None:
        if pair.key in self._keys:  # the same pair picked again: the later pick wins
            self.pairs[self._keys[pair.key]] = pair
        else:
            self._keys[pair.key] = len(self.pairs)
            self.pairs.append(pair)

    def add_records(self, records: Iterable, include_model: bool = False) -> int:
        """Add picks (`fdfo_core.rewards.pick_records.PickRecord`); returns how many pairs were added or replaced.

        Skipped picks carry no information; records with ``source == "model"`` are ignored unless
        `include_model`; picks whose image files are missing are listed in the report, not fatal.
        """
        from ..files.image_files import ImageFileError

        added = 0
        for r in records:
            key = pair_key(r.epoch, r.pair_id, r.seed, r.prompt, run=r.run_scope)
            if r.choice == "skip":
                self._skipped.add(key)
                continue
            if r.source != "human" and not include_model:
                self._model_scored.add(key)
                continue
            try:
                left, right = (self._embed_file(r.image_path(side)) for side in ("left", "right"))
            except (OSError, ImageFileError) as e:
                self._missing[key] = f"{r.origin or r.prompt}: {e}"
                continue
            self._missing.pop(key, None)
            self._skipped.discard(key)
            self._store(_Pair(left, right, r.prompt, float(r.target), key))
            added += 1
        self._update_counts()
        return added

    def _update_counts(self) -> None:
        self.report.skipped = len(self._skipped - set(self._keys))
        self.report.model_scored = len(self._model_scored)
        self.report.missing_images = list(self._missing.values())

    def add_pair(self, left: torch.Tensor, right: torch.Tensor, prompt: str, choice: str, key: str | None = None) -> bool:
        """Add one pick from images in memory ([3, H, W] or [1, 3, H, W] in [0, 1], or NHWC).

        `choice`: "left", "right", "equal" or "skip" (returns False, nothing stored). `key`
        identifies the pair, normally `pair_key(epoch, pair_id, seed, prompt)`: a corrected pick
        replaces the old one, and the same pick read later from picks.jsonl is not counted twice.
        """
        from .pick_records import PicksError, choice_target

        try:
            target = choice_target(choice)
        except PicksError as e:
            raise RewardError(f"preference: {e}") from None
        key = key or f"memory#{len(self.pairs) + len(self._skipped)}"
        if target is None:
            self._skipped.add(key)
            self._update_counts()
            return False
        emb = self.encoder.embed_images([to_nchw(left)[0].clamp(0, 1), to_nchw(right)[0].clamp(0, 1)]).cpu()
        self._skipped.discard(key)
        self._store(_Pair(emb[0], emb[1], prompt, target, key))
        self._update_counts()
        return True

    # --- fitting ----------------------------------------------------------------------------

    def _features(self, which: str, idx: Sequence[int]) -> torch.Tensor:
        emb = torch.stack([getattr(self.pairs[i], which) for i in idx]).to(self.encoder.device)
        text = None
        if self.head.use_prompt:
            text = self.encoder.embed_texts([self.pairs[i].prompt for i in idx])
        return self.head.features(emb, text).float().cpu()

    def _arrays(self, idx: Sequence[int]):
        target = torch.tensor([self.pairs[i].target for i in idx], dtype=torch.float32)
        return self._features("left", idx), self._features("right", idx), target

    def split(self) -> tuple[list[int], list[int]]:
        """(train, held-out) pair indices: a fixed share held out, chosen by the seed and the pair keys
        (so a pair stays on its side as more picks arrive)."""
        import zlib

        train, held = [], []
        for i, p in enumerate(self.pairs):
            u = zlib.crc32(f"{self.seed}:{split_key(p.key)}".encode()) / 2**32
            (held if u < self.holdout else train).append(i)
        return train, held

    def fit(self, warm_start: bool = False, max_iter: int = 300) -> FitReport:
        """Measure held-out accuracy on a split, then fit the head on every pair. Returns the report.

        Safe to call under `torch.inference_mode()` (inside a ComfyUI node) and while a
        `PreferenceReward` of this model is in use: the reward scores with the newest head.
        """
        with torch.inference_mode(False):
            return self._fit(warm_start, max_iter)

    def _fit(self, warm_start: bool, max_iter: int) -> FitReport:
        t0 = time.perf_counter()
        n = len(self.pairs)
        if n == 0:
            first = next(iter(self._missing.values()), "")
            raise RewardError("preference: no usable picks (every pair was skipped, scored by the model, or has missing "
                              "images)" + (f"; missing: {first}" if first else ""))

        def fresh(start: PreferenceHead | None = None) -> PreferenceHead:
            """A new head (copying `start`'s weights for a warm start), owned by this autograd context."""
            head = PreferenceHead(self.head.dim, self.head.use_prompt, self.head.hidden, seed=self.seed)
            if start is not None:
                head.load_state_dict(start.state_dict())
            return head

        all_targets = torch.tensor([p.target for p in self.pairs], dtype=torch.float32)
        decisive = int(((all_targets - 0.5).abs() > 0.25).sum())
        if decisive == 0:
            raise RewardError(
                f"preference: none of the {n} picks prefers one image (all 'same'): a model fitted on them scores every "
                "image alike, a constant reward that trains nothing. Pick left or right where you prefer one image.")
        warm = warm_start and self.fitted
        train, held = self.split()
        acc, n_held, always_left, score_acc = None, 0, None, None
        if held and train:
            probe = fresh(self._probe if warm else None)
            _, probe_bias = fit_head(probe, *self._arrays(train), weight_decay=self.weight_decay, max_iter=max_iter)
            self._probe = probe
            held_arrays = self._arrays(held)
            # the person's picks predicted with their position habit, against always-left / -right
            acc, n_held = pair_accuracy(probe, *held_arrays, position_bias=probe_bias)
            score_acc, _ = pair_accuracy(probe, *held_arrays)
            always_left = left_share(held_arrays[2])
            if n_held < MIN_HELDOUT:
                acc, always_left, score_acc = None, None, None
        left, right, target = self._arrays(range(n))
        head = fresh(self.head if warm else None)
        loss, bias = fit_head(head, left, right, target, weight_decay=self.weight_decay, max_iter=max_iter)
        self.head = head  # swapped in whole: a reward scoring with this model never sees a half-fitted head
        train_acc, _ = pair_accuracy(head, left, right, target, position_bias=bias)
        self.fitted = True
        self._update_counts()
        r = self.report
        r.pairs, r.heldout_pairs, r.heldout_accuracy, r.train_accuracy, r.loss = n, n_held, acc, train_acc, loss
        r.decisive_pairs, r.left_share, r.heldout_always_left = decisive, left_share(target), always_left
        r.heldout_score_accuracy = score_acc
        r.position_bias = 1.0 / (1.0 + math.exp(-bias))
        r.warnings = fit_warnings(r)
        r.seconds = time.perf_counter() - t0
        return r

    def refit(self) -> FitReport:
        """Fit again after new picks, starting from the current weights (the picking loop calls this each epoch)."""
        return self.fit(warm_start=True)

    # --- scoring ----------------------------------------------------------------------------

    def score(self, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """Scores s(x, p) [N] (logits, differentiable) of NCHW/NHWC images in [0, 1] on the encoder's device."""
        images = to_nchw(images)
        if isinstance(prompts, str):
            prompts = [prompts] * images.shape[0]
        emb = self.encoder(images)
        text = self.encoder.embed_texts(list(prompts)) if self.head.use_prompt else None
        self.head.to(emb.device)
        return self.head(self.head.features(emb, text))

    @torch.no_grad()
    def preference_probability(self, left: torch.Tensor, right: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """P(left preferred) [N] = sigmoid(s(left) - s(right)) for image batches of equal length."""
        return torch.sigmoid(self.score(left, prompts) - self.score(right, prompts)).float().cpu()

    def pair_reward_delta(self, left: torch.Tensor, right: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """The model's stand-in for a pick: 2 * P(left preferred) - 1 in (-1, 1), the scale of
        picks' +1 / -1 / 0 (for the pairs an artist did not pick)."""
        return 2.0 * self.preference_probability(left, right, prompts) - 1.0

    # --- files ------------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        r = self.report
        return {
            "format": FORMAT, "encoder_kind": self.encoder.kind, "encoder_source": str(self.encoder.source),
            "encoder_model": self.encoder_model or "", "encoder_dim": str(self.head.dim), "head": self.head.kind,
            "hidden": str(self.head.hidden), "use_prompt": str(self.head.use_prompt).lower(),
            "weight_decay": repr(self.weight_decay), "holdout": repr(self.holdout), "seed": str(self.seed),
            "n_picks": str(r.pairs), "heldout_pairs": str(r.heldout_pairs),
            "heldout_accuracy": "none" if r.heldout_accuracy is None else f"{r.heldout_accuracy:.6f}",
            "train_accuracy": "none" if r.train_accuracy is None else f"{r.train_accuracy:.6f}",
            "heldout_always_left": "none" if r.heldout_always_left is None else f"{r.heldout_always_left:.6f}",
            "heldout_score_accuracy": "none" if r.heldout_score_accuracy is None else f"{r.heldout_score_accuracy:.6f}",
            "position_bias": f"{r.position_bias:.6f}",
            "picks_files": json.dumps(self.sources), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the head, its standardisation and probe embeddings of the encoder to a .safetensors
        file, atomically (a crash leaves the previous file intact; missing folders are created,
        the output being a path the user named)."""
        from safetensors.torch import save

        from ..files.storage import write_bytes

        if not self.fitted:
            raise RewardError("preference: fit the model before saving it")
        tensors = {f"head.{k}": v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}
        tensors["probe_embeddings"] = probe_embeddings(self.encoder).cpu().contiguous()
        # A full disk or a read-only folder raises storage.StorageError, which says so.
        return write_bytes(path, save(tensors, metadata=self.metadata()), what="preference model", parents=True)

    def as_reward(self, scale: float = 1.0, micro_batch: int = 16) -> "PreferenceReward":
        """The fitted model as a reward. Built this way (not by `build_reward`) it records itself as
        reward "preference" with its encoder, head, scale and the fitted weights' hash."""
        if not self.fitted:
            raise RewardError("preference: fit the model before using it as a reward")
        reward = PreferenceReward(self, scale=scale, micro_batch=micro_batch)
        reward.spec_name = "preference"
        reward.spec_options = reward.record_options({
            "encoder": self.encoder.kind, "encoder_source": str(self.encoder.source), "head": self.head.kind,
            "hidden": self.head.hidden, "use_prompt": self.head.use_prompt, "scale": float(scale),
            "picks": list(self.sources)})
        return reward


def probe_images() -> torch.Tensor:
    """Four fixed 64x64 images (gradients and stripes) whose embeddings identify an encoder's weights."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    stripes = (torch.sin(xs * 25.0) > 0).float()
    return torch.stack([
        torch.stack([xs, ys, 1 - xs]),
        torch.stack([ys * 0 + 0.8, xs * 0.3, ys * 0.6]),
        torch.stack([stripes, 1 - stripes, stripes * 0.5]),
        torch.stack([(xs + ys) / 2, 1 - ys, xs * ys]),
    ])


@torch.no_grad()
def probe_embeddings(encoder: ImageEncoder) -> torch.Tensor:
    return encoder(probe_images()).float()


# ---- the reward -----------------------------------------------------------------------------------


class PreferenceReward(ModelReward):
    """``scale * s(x, p)`` of a fitted `PreferenceModel` (see the module docstring)."""

    name = "preference"
    differentiable = True

    def __init__(self, model: PreferenceModel, scale: float = 1.0, micro_batch: int = 16, device=None):
        super().__init__(micro_batch=micro_batch, device=device or model.encoder.device, dtype=model.encoder.dtype)
        self.model = model
        self.scale = float(scale)
        self.to(self.device)

    @property
    def report(self) -> FitReport:
        return self.model.report

    def model_sha256(self) -> str:
        """sha256 of the fitted head (weights and standardisation): identifies the scores it gives."""
        import hashlib

        h = hashlib.sha256(f"{self.model.encoder.kind}:{self.model.head.kind}:{self.model.head.use_prompt}".encode())
        for k, v in sorted(self.model.head.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def record_options(self, options: dict) -> dict:
        """Options as a run records them: the picks files as given, plus the fitted model's hash
        (new picks change the reward, and a resumed run should know)."""
        out = {k: (str(v) if isinstance(v, os.PathLike) else
                   [str(x) for x in v] if isinstance(v, (list, tuple)) else v) for k, v in options.items()}
        out["model_sha256"] = self.model_sha256()
        return out

    def torch_modules(self):
        return [self.model.head]

    def to(self, device):
        super().to(device)
        self.model.encoder.to(self.device)
        return self

    def _score(self, images, prompts):
        return self.scale * self.model.score(images, prompts)

    def describe(self) -> str:
        r = self.model.report
        acc = f", held-out acc {r.heldout_accuracy:.3f}" if r.heldout_accuracy is not None else ""
        prompt = "+prompt" if self.model.head.use_prompt else ""
        return (f"preference({self.model.encoder.describe()}{prompt}, {self.model.head.kind}, {r.pairs} picks{acc}"
                f"{', scale ' + format(self.scale, 'g') if self.scale != 1 else ''})")


# ---- loading ----------------------------------------------------------------------------------------


def load_preference_model(path: str | os.PathLike, encoder_path: str | None = None, dtype: str = "auto",
                          device=None) -> PreferenceModel:
    """Read a model written by `PreferenceModel.save` and load its encoder.

    The encoder is looked up like every reward's weights (`encoder_path`, else the path recorded
    at fitting time if it still exists, else the reward folders and cache by kind and model id)
    and checked against the stored probe embeddings, so a model is never silently scored with a
    different encoder than it was fitted on.
    """
    from safetensors import safe_open

    from .weights import resolve_named

    found = resolve_named(path)  # a file, or a name inside the reward folders ("preference/my_taste.safetensors")
    if found is None or not found.is_file():
        raise RewardError(f"preference: model file {path} does not exist; fit one with `fdfo fit-preference "
                          "picks.jsonl -o pref.safetensors` or the FDFO Preference Reward node")
    path = found
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise RewardError(f"preference: cannot read {path}: {e}") from e
    if meta.get("format") != FORMAT:
        raise RewardError(f"preference: {path} is not an FDFO preference model (format {meta.get('format')!r}, "
                          f"expected {FORMAT!r})")
    kind = meta.get("encoder_kind", "")
    if kind not in ENCODER_KINDS:
        raise RewardError(f"preference: {path} names an unknown encoder {kind!r}")
    recorded = meta.get("encoder_source") or None
    where = encoder_path or (recorded if recorded and Path(recorded).exists() else None)
    encoder = load_image_encoder(kind, where, meta.get("encoder_model") or None, dtype=dtype, device=as_device(device),
                                 reward="preference")
    stored = tensors.get("probe_embeddings")
    if stored is not None:
        now = probe_embeddings(encoder).cpu()
        if now.shape != stored.shape or float((now * stored).sum(-1).min()) < 0.99:
            raise RewardError(
                f"preference: {path} was fitted with the {kind} encoder at {recorded}, and the one found at "
                f"{encoder.source} gives different embeddings; pass the original with the encoder_path option"
            )
    model = PreferenceModel(encoder, use_prompt=meta.get("use_prompt") == "true", hidden=int(meta.get("hidden", 0)),
                            weight_decay=float(meta.get("weight_decay", 1e-2)), holdout=float(meta.get("holdout", 0.2)),
                            seed=int(meta.get("seed", 0)), encoder_model=meta.get("encoder_model") or None)
    head_state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    try:
        model.head.load_state_dict(head_state, strict=True)
    except RuntimeError as e:
        raise RewardError(f"preference: the head in {path} does not match its metadata: {e}") from e
    r = model.report
    r.pairs = int(meta.get("n_picks", 0))
    r.heldout_pairs = int(meta.get("heldout_pairs", 0))
    acc = meta.get("heldout_accuracy", "none")
    r.heldout_accuracy = None if acc == "none" else float(acc)
    tacc = meta.get("train_accuracy", "none")
    r.train_accuracy = None if tacc == "none" else float(tacc)
    base = meta.get("heldout_always_left", "none")  # (files fitted before the baseline was recorded: none)
    r.heldout_always_left = None if base == "none" else float(base)
    r.position_bias = float(meta.get("position_bias", 0.5))
    sacc = meta.get("heldout_score_accuracy", "none")
    r.heldout_score_accuracy = None if sacc == "none" else float(sacc)
    model.sources = json.loads(meta.get("picks_files", "[]"))
    model.fitted = True
    return model


def fit_preference(picks: str | os.PathLike | Iterable[str | os.PathLike], encoder: str = "clip",
                   encoder_path: str | None = None, model: str | None = None, head: str = "linear", hidden: int = 64,
                   use_prompt: bool = False, weight_decay: float = 1e-2, holdout: float = 0.2, seed: int = 0,
                   dtype: str = "auto", device=None, log=None) -> PreferenceModel:
    """Read picks files, embed their images, fit (see the module docstring). Returns the fitted model.

    Unreadable lines of the picks files are reported through `log` (a callable taking a line).
    """
    from .pick_records import PicksError, read_picks
    from .reference import split_paths

    if head not in HEADS:
        raise RewardError(f"preference: head must be one of {', '.join(HEADS)}, got {head!r}")
    try:
        data = read_picks(split_paths(picks) if isinstance(picks, (str, os.PathLike)) else list(picks))
    except PicksError as e:
        raise RewardError(f"preference: {e}") from None
    if log:
        log(data.summary())
        for p in data.problems[:20]:
            log(f"  skipped: {p}")
    enc = load_image_encoder(encoder, encoder_path, model, dtype=dtype, device=as_device(device), reward="preference")
    pm = PreferenceModel(enc, use_prompt=use_prompt, hidden=hidden if head == "mlp" else 0,
                         weight_decay=weight_decay, holdout=holdout, seed=seed, encoder_model=model)
    pm.sources = [str(f) for f in data.files]
    pm.add_records(data.records)
    pm.fit()
    if log:
        for m in pm.report.missing_images[:20]:
            log(f"  missing image: {m}")
        log(pm.report.summary())
    return pm


@register_reward("preference", "Bradley-Terry score of a model fitted on an artist's picks (picks.jsonl), in logits")
def _preference(path: str | None = None, picks: str | None = None, encoder: str = "clip",
                encoder_path: str | None = None, model: str | None = None, head: str = "linear", hidden: int = 64,
                use_prompt: bool = False, weight_decay: float = 1e-2, holdout: float = 0.2, seed: int = 0,
                save: str | None = None, scale: float = 1.0, dtype: str = "auto", micro_batch: int = 16,
                device=None) -> PreferenceReward:
    """path: a fitted model (.safetensors from `fdfo fit-preference`); or picks: picks files to fit
    now (separated by newlines or the path separator), optionally saved to `save`."""
    if path and picks:
        raise RewardError("preference: give either path (a fitted model) or picks (files to fit), not both")
    if path:
        pm = load_preference_model(path, encoder_path=encoder_path, dtype=dtype, device=device)
    elif picks:
        pm = fit_preference(picks, encoder=encoder, encoder_path=encoder_path, model=model, head=head, hidden=hidden,
                            use_prompt=use_prompt, weight_decay=weight_decay, holdout=holdout, seed=seed, dtype=dtype,
                            device=device)
        if save:
            pm.save(save)
    else:
        raise RewardError("preference: give path (a model fitted with `fdfo fit-preference`) or picks (picks.jsonl "
                          "files to fit now)")
    return pm.as_reward(scale=scale, micro_batch=micro_batch)

