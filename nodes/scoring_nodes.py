"""Nodes that use a reward: Combine Rewards (a weighted sum) and Score Images, and the scoring
helpers the Paired Sampler and the Trainer share (`score_images`, `thumbnails`).

The reward loaders (what makes an FDFO_REWARD) are in `reward_nodes`.
"""

from __future__ import annotations

import math

import torch

from ..fdfo_core.rewards import RewardError, WeightedSum
from ..fdfo_core.rewards.base import PartialRewardError, as_scores
from .common import CATEGORY, log, PROMPTS, REWARD, image_to_nchw, nchw_to_image, pil_to_image, reward_report, split_prompts_for_images



class FDFOCombineRewards:
    CATEGORY = f"{CATEGORY}/rewards"
    RETURN_TYPES = (REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("weight_1 * reward_1 + weight_2 * reward_2 + ... (the FDFO paper's default: PickScore + 0.1 * VLM).",)
    FUNCTION = "combine"
    DESCRIPTION = "A weighted sum of up to four rewards, e.g. PickScore + 0.1 * VLM alignment. Each part's scores are kept for logging."
    SLOTS = 4

    @classmethod
    def INPUT_TYPES(cls):
        def weight(i, default):
            return ("FLOAT", {"default": default, "min": -1000.0, "max": 1000.0, "step": 0.01,
                              "tooltip": f"Weight of reward_{i} (negative to penalise)."})

        optional = {}
        for i in range(2, cls.SLOTS + 1):
            optional[f"reward_{i}"] = (REWARD, {"tooltip": f"Optional reward {i}."})
            optional[f"weight_{i}"] = weight(i, 1.0 if i > 2 else 0.1)
        return {"required": {"reward_1": (REWARD, {"tooltip": "First reward."}), "weight_1": weight(1, 1.0)},
                "optional": optional}

    def combine(self, reward_1, weight_1, **optional):
        terms = [(float(weight_1), reward_1)]
        for i in range(2, self.SLOTS + 1):
            r = optional.get(f"reward_{i}")
            if r is not None:
                terms.append((float(optional.get(f"weight_{i}", 1.0)), r))
        if len(terms) == 1 and terms[0][0] == 1.0:
            return (reward_1,)
        return (WeightedSum(terms),)


def score_images(reward, images_nchw: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Scores [N] (float32), NaN for images the reward could not score (see `score_images_noted`)."""
    return score_images_noted(reward, images_nchw, prompts)[0]


def score_images_noted(reward, images_nchw: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, str]:
    """(scores [N] float32, note). Images the reward could not score are NaN (fdfo_core's policy
    for partial failures) and `note` says how many and why; a reward that fails for every image
    raises a RewardError naming the reward."""
    name = reward.describe() if hasattr(reward, "describe") else type(reward).__name__
    note = ""
    try:
        scores = reward(images_nchw, prompts)
    except PartialRewardError as e:
        scores, note = e.scores, str(e)
    except RewardError:
        raise
    except Exception as e:
        raise RewardError(f"reward {name!r} failed: {type(e).__name__}: {e}") from e
    scores = as_scores(scores, images_nchw.shape[0], f"reward {name!r}")
    missing = int((~torch.isfinite(scores)).sum())
    if missing and not note:
        note = f"{missing} of {scores.shape[0]} images got no finite score (NaN, infinite or missing)"
    if note:
        log.warning("FDFO: %s", note)
    return scores, note


def thumbnails(images: torch.Tensor, max_side: int = 256) -> torch.Tensor:
    """Downscale [B, 3, H, W] so the longer side is at most max_side (for grids)."""
    h, w = images.shape[-2:]
    f = max(h, w) / max_side
    if f <= 1:
        return images
    size = (max(1, round(h / f)), max(1, round(w / f)))
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


class FDFOScoreImages:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("scores", "report", "grid", "images")
    OUTPUT_IS_LIST = (True, False, False, False)
    OUTPUT_TOOLTIPS = (
        "One score per image, in the order of the output images (a list).",
        "One line per image: its score and prompt.",
        "The images in a grid, each labelled with its score (and rank when sorted).",
        "The images, sorted as chosen.",
    )
    FUNCTION = "score"
    DESCRIPTION = "Score and rank any images with an FDFO reward: useful on its own to compare models, seeds or LoRAs."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The images to score (any size; a batch)."}),
            "prompts": (PROMPTS, {"tooltip": "One prompt for all images, one per image, or k prompts each covering N/k consecutive images."}),
            "reward": (REWARD, {"tooltip": "The reward that scores them."}),
            "sort": (["none", "best first", "worst first"], {"default": "best first", "tooltip": "Order of the grid and of the images output."}),
            "columns": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Images per row of the grid."}),
        }}

    def score(self, images, prompts, reward, sort, columns):
        from ..fdfo_core.files.drawing import image_grid

        x = image_to_nchw(images)
        per_image = split_prompts_for_images(prompts, x.shape[0])
        scores, note = score_images_noted(reward, x, per_image)
        order = list(range(x.shape[0]))
        if sort != "none":  # images without a score go last either way
            finite = [i for i in order if math.isfinite(float(scores[i]))]
            order = sorted(finite, key=lambda i: float(scores[i]), reverse=(sort == "best first"))
            order += [i for i in range(x.shape[0]) if i not in set(finite)]
        labels = [f"{'#' + str(r + 1) + ' ' if sort != 'none' else ''}{float(scores[i]):.4g}" for r, i in enumerate(order)]
        grid = image_grid(thumbnails(x[order]), ncol=columns, labels=labels, label_height=14)
        report = reward_report([float(scores[i]) for i in order], [per_image[i] for i in order],
                               [f"#{r + 1} image {i}" for r, i in enumerate(order)])
        if note:
            report += f"\n{note}"
        return ([float(scores[i]) for i in order], report, pil_to_image(grid), nchw_to_image(x[order]))


NODES = {
    "FDFOCombineRewards": (FDFOCombineRewards, "FDFO Combine Rewards"),
    "FDFOScoreImages": (FDFOScoreImages, "FDFO Score Images"),
}
