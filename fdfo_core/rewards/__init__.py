"""Rewards: one interface (images in [0, 1] + prompts -> one float per image), a registry, and
weighted sums such as ``"pickscore + 0.1*vlm"``."""

from .base import Layout, Reward, RewardError, to_nchw
from .registry import (
    WeightedSum,
    available_rewards,
    build_reward,
    parse_reward_spec,
    register_reward,
)


def ensure_registered() -> None:
    """Import every module that registers built-in rewards (cheap: heavy imports are lazy)."""
    from . import simple  # noqa: F401


__all__ = [
    "Layout",
    "Reward",
    "RewardError",
    "WeightedSum",
    "available_rewards",
    "build_reward",
    "ensure_registered",
    "parse_reward_spec",
    "register_reward",
    "to_nchw",
]
