"""Rewards: one interface (images in [0, 1] + prompts -> one float per image), a registry, and
weighted sums such as ``"pickscore + 0.1*vlm"``.

Built-in rewards (see docs/rewards.md): brightness, saturation, colourfulness,
jpeg_compressibility, jpeg_incompressibility (weight-free); pickscore, hpsv2, aesthetic,
clipscore, vlm (learned, weights from local folders); reference (closeness to reference images,
a style); preference (a Bradley-Terry model fitted on an artist's picks); remote (a scoring
server you run).
Heavy libraries (transformers) are imported only when a learned reward is built.
"""

from .base import Layout, Reward, RewardError, to_nchw
from .normalize import PerPromptNormalized, wrap_normalization
from .registry import (
    WeightedSum,
    available_rewards,
    build_reward,
    coerce_options,
    parse_reward_spec,
    register_reward,
    reward_options,
    set_builtin_loader,
)
from .weights import ENV_VAR as REWARDS_DIR_ENV
from .weights import list_reward_folders, register_comfy_folder, reward_dirs


def ensure_registered() -> None:
    """Import every module that registers built-in rewards (cheap: heavy imports are lazy)."""
    from . import clip_rewards, preference, reference, remote, simple, vlm  # noqa: F401

    try:  # the toy world's caption-alignment reward (weight-free, torch only)
        from . import toy_alignment  # noqa: F401
    except ImportError:
        pass


set_builtin_loader(ensure_registered)

__all__ = [
    "Layout",
    "PerPromptNormalized",
    "REWARDS_DIR_ENV",
    "Reward",
    "RewardError",
    "WeightedSum",
    "available_rewards",
    "build_reward",
    "coerce_options",
    "ensure_registered",
    "list_reward_folders",
    "parse_reward_spec",
    "register_comfy_folder",
    "register_reward",
    "reward_dirs",
    "reward_options",
    "to_nchw",
    "wrap_normalization",
]
