"""Held-out evaluation: fixed prompts x fixed seeds, plain sampling, four figures.

One evaluation samples every (prompt, seed) of a `HeldOutSet` with the plain Euler sampler at the
training settings (steps, CFG, size) and measures (besides the plain image statistics of
image_stats.py)

- the **held-out reward**: the training reward (before any per-prompt normalisation), mean and
  standard error over the images;
- the **judge**: any other reward, same statistics (None when no judge is set);
- the **diversity across seeds**: for each prompt the mean distance between its images of
  different seeds, averaged over prompts (collapse to one picture per prompt drives it to 0);
- the **drift from the base model**: the mean distance between the image of a (prompt, seed) from
  the base model and from the current LoRA (0 for the base itself).

Distances are taken in the image-embedding space of a small encoder a reward already loads (any
reward with an `image_embeds(images) -> [N, D]` method, such as the CLIP-family rewards; the judge's
encoder first, then the training reward's), as the cosine distance 1 - cos in [0, 2]; with no such
encoder, as the mean absolute pixel difference in [0, 1]. `ImageSpace.name` says which was used.

Every draw comes from the set's own seeded generators, and the caller's global RNG state is
restored afterwards, so evaluating never changes what training samples.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from ..rewards.failure_policy import RewardFailures, score_call
from ..backends.generation import generate_images
from ..rewards.normalize import raw_reward
from ..rewards.pairwise import is_pairwise
from ..files.image_stats import image_statistics

#: Seeds of held-out images: fixed across runs (so two runs are compared on the same noise) and far
#: from the preview grid's seeds 0, 1, 2, ... Training noise comes from hashed seeds (`derive_seed`).
EVAL_SEED_BASE = 1_000_000


def spread_select(items: Sequence[str], n: int) -> list[str]:
    """`n` distinct items spread evenly over `items` (all of them when there are at most `n`)."""
    distinct = list(dict.fromkeys(items))
    if len(distinct) <= n:
        return distinct
    return [distinct[(i * len(distinct)) // n] for i in range(n)]


@dataclass(frozen=True)
class HeldOutSet:
    """Distinct prompts x seeds; image k is prompt k // len(seeds) with seed k % len(seeds)."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]

    @classmethod
    def build(cls, prompts: Sequence[str], count: int, seeds_per_prompt: int) -> "HeldOutSet":
        chosen = spread_select([p.strip() for p in prompts if p and p.strip()], count)
        if not chosen:
            raise ValueError("the held-out prompt list is empty: give at least one non-empty prompt")
        return cls(tuple(chosen), tuple(EVAL_SEED_BASE + s for s in range(seeds_per_prompt)))

    @property
    def size(self) -> int:
        return len(self.prompts) * len(self.seeds)

    def image_prompts(self) -> list[str]:
        return [p for p in self.prompts for _ in self.seeds]

    def image_seeds(self) -> list[int]:
        return [s for _ in self.prompts for s in self.seeds]


# --- image spaces: where distances are measured ---------------------------------------------------


def _is_image_batch(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.shape[1] in (1, 3, 4)


class ImageSpace:
    """Pixel space: features are the flattened images, the distance is the mean absolute difference."""

    name = "pixel"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images.detach().float().reshape(images.shape[0], -1).cpu()

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise distance of two [N, D] feature batches -> float64 [N]."""
        return (a.double() - b.double()).abs().mean(dim=1)


class EmbeddingSpace(ImageSpace):
    """A reward's image encoder: features are its unit-norm embeddings, the distance is 1 - cos."""

    def __init__(self, reward: Any, label: str):
        self.reward = reward
        self.name = f"embedding:{label}"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        r = self.reward
        device = getattr(r, "device", torch.device("cpu"))
        step = max(1, int(getattr(r, "micro_batch", 16)))
        out = []
        for i in range(0, images.shape[0], step):
            chunk = images[i : i + step].float().to(device)
            if chunk.shape[1] != 3:
                chunk = chunk[:, :3] if chunk.shape[1] == 4 else chunk.expand(-1, 3, -1, -1)
            e = r.image_embeds(chunk).float()
            out.append((e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu())
        return torch.cat(out)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1.0 - (a.double() * b.double()).sum(dim=1)


def _encoders(reward: Any, label: str) -> list[tuple[Any, str]]:
    """Rewards inside `reward` (itself, a weighted sum's terms, a normaliser's inner reward) that
    can embed images, in order."""
    if reward is None:
        return []
    found = []
    if callable(getattr(reward, "image_embeds", None)):
        found.append((reward, label))
    inner = getattr(reward, "inner", None)
    if inner is not None:
        found += _encoders(inner, label)
    for _, term in getattr(reward, "terms", []) or []:
        found += _encoders(term, f"{label}/{getattr(term, 'name', type(term).__name__)}")
    return found


def find_image_space(judge: Any = None, reward: Any = None) -> ImageSpace:
    """The judge's image encoder, else the training reward's, else pixel space."""
    for obj, role in ((judge, "judge"), (reward, "reward")):
        hits = _encoders(obj, f"{role} {getattr(obj, 'name', type(obj).__name__)}" if obj is not None else role)
        if hits:
            return EmbeddingSpace(*hits[0])
    return ImageSpace()


def seed_diversity(features: torch.Tensor, n_prompts: int, n_seeds: int, space: ImageSpace) -> float | None:
    """Mean over prompts of the mean pairwise distance between a prompt's images of different seeds.

    `features`: [n_prompts * n_seeds, D], prompt-major. None with fewer than 2 seeds per prompt.
    """
    if n_seeds < 2:
        return None
    f = features.reshape(n_prompts, n_seeds, -1)
    i, j = torch.triu_indices(n_seeds, n_seeds, offset=1)
    per_prompt = [float(space.distance(f[p, i], f[p, j]).mean()) for p in range(n_prompts)]
    return sum(per_prompt) / len(per_prompt)


def drift_from_base(features: torch.Tensor, base_features: torch.Tensor, space: ImageSpace) -> float:
    """Mean distance between the same (prompt, seed) image from the base model and from the LoRA."""
    return float(space.distance(features, base_features).mean())


def quantize_images(images: torch.Tensor) -> torch.Tensor:
    """Round images in [0, 1] to 8 bits (what a saved PNG holds) so that base images stored in a
    checkpoint compare equal to the ones computed in memory. Other outputs pass unchanged."""
    if _is_image_batch(images):
        return (images.float().clamp(0, 1) * 255).round() / 255
    return images.float()


def pack_images(images: torch.Tensor) -> torch.Tensor:
    """Images quantised by `quantize_images` as uint8 for a checkpoint (other outputs as float32)."""
    if _is_image_batch(images):
        return (images * 255).round().to(torch.uint8)
    return images.float().clone()


def unpack_images(packed: torch.Tensor) -> torch.Tensor:
    return packed.float() / 255 if packed.dtype == torch.uint8 else packed.float()


# --- one evaluation ----------------------------------------------------------------------------


def _name(reward: Any) -> str:
    return str(getattr(reward, "name", type(reward).__name__))


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the finite entries (nan, nan when there are none)."""
    x = x.double()
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return math.nan, math.nan
    se = float(x.std() / math.sqrt(x.numel())) if x.numel() > 1 else 0.0
    return float(x.mean()), se


@dataclass
class Evaluation:
    """The figures of one held-out evaluation (`epoch` 0 is the base model)."""

    epoch: int
    heldout_reward: float | None  # None: a pairwise reward (human picks) scores no single image
    heldout_reward_se: float | None
    judge: float | None
    judge_se: float | None
    diversity: float | None
    drift: float
    seconds: float
    #: Plain image statistics of the held-out images (image_stats.py: near-black / near-white shares,
    #: saturation, colour entropy, edge density); None for outputs that are not images.
    image_stats: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Evaluation":
        # Evaluations recorded before a field existed take its default.
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@contextlib.contextmanager
def preserved_rng(device: torch.device):
    """Restore the global CPU (and this CUDA device's) RNG state on exit."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@torch.no_grad()
def sample_heldout(
    backend,
    held: HeldOutSet,
    config,
    amp: torch.dtype | None = None,
    use_adapter: bool = True,
    check_cancel: Callable[[], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Images of every (prompt, seed) of `held` at the training settings, quantised to 8 bits:
    float32 [held.size, 3, H, W] in [0, 1] on the CPU."""
    prompts, seeds = held.image_prompts(), held.image_seeds()
    # sampled like training's images (2 x sample_batch_size a time), decoded decode_batch_size a time
    batch = max(1, 2 * config.sample_batch_size)
    out = []
    for start in range(0, len(prompts), batch):
        stop = min(len(prompts), start + batch)
        out.append(generate_images(
            backend, prompts[start:stop], seeds[start:stop], config.num_steps, config.height, config.width,
            config.cfg_scale, config.negative_prompt, batch_size=batch, amp=amp, use_adapter=use_adapter,
            check_cancel=check_cancel, decode_batch_size=config.decode_batch_size,
        ))
        if on_progress is not None:
            on_progress(stop, len(prompts))
    return quantize_images(torch.cat(out))


def score_heldout(
    images: torch.Tensor,
    held: HeldOutSet,
    reward: Any,
    judge: Any,
    space: ImageSpace,
    base_features: torch.Tensor | None,
    epoch: int,
    seconds_so_far: float = 0.0,
    strict: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[Evaluation, torch.Tensor]:
    """Score sampled held-out images; returns the evaluation and the images' features in `space`
    (the base model's features are None when scoring the base itself: its drift is 0).

    Rewards that fail for some images follow the training's policy (fdfo_core/rewards/failure_policy.py):
    those images count as unscored (NaN), the means and standard errors use the others, and `log`
    gets one line naming the reward, how many images and why. `strict` (the base model's
    evaluation, before any reward has worked in the run): a reward failing as a whole raises
    RewardError. Fatal errors (Cancel, out of memory) always raise."""
    t0 = time.perf_counter()
    prompts = held.image_prompts()

    def scores(r: Any, what: str) -> torch.Tensor:
        failures = RewardFailures()
        out = score_call(raw_reward(r), images, prompts, failures, name=f"{what} {_name(r)}", strict=strict)
        if failures.images_without_reward and log is not None:
            log(f"held-out evaluation {'of the base model' if base_features is None else f'at epoch {epoch}'}: "
                f"{what} {_name(r)}: {failures.images_without_reward} of {failures.images} image(s) without a score "
                f"({failures.summary()}); the figures use the others")
        return out

    # A pairwise reward (human picks) says which of two images is better, not how good one is: the
    # held-out evaluation has no reward of its own then (the judge, diversity and drift still run).
    r_mean = r_se = None
    if not is_pairwise(raw_reward(reward)):
        r_mean, r_se = mean_se(scores(reward, "reward"))
    j_mean = j_se = None
    if judge is not None:
        j_mean, j_se = mean_se(scores(judge, "judge"))
    features = space.features(images)
    diversity = seed_diversity(features, len(held.prompts), len(held.seeds), space)
    drift = 0.0 if base_features is None else drift_from_base(features, base_features, space)
    stats = image_statistics(images) if _is_image_batch(images) else None
    seconds = seconds_so_far + time.perf_counter() - t0
    return Evaluation(epoch, r_mean, r_se, j_mean, j_se, diversity, drift, seconds, stats), features
