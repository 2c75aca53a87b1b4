"""Baselines that share FDFO's models, prompts, rewards and loop; chosen by `FDFOConfig.method`."""

from __future__ import annotations

from ..run.trainer import FDFOTrainer
from .diffusion_nft import DiffusionNFTTrainer, implicit_policies, nft_loss, optimality_probability, soft_update_
from .flow_grpo import FlowGRPOTrainer, group_advantages, sde_mean, sde_step_std
from .reward_gradient import BackpropChainTrainer, GradCopyTrainer

TRAINERS: dict[str, type[FDFOTrainer]] = {
    "fdfo": FDFOTrainer,
    "flow_grpo": FlowGRPOTrainer,
    "flow_grpo_fast": FlowGRPOTrainer,
    "diffusion_nft": DiffusionNFTTrainer,
    "grad_copy": GradCopyTrainer,
    "backprop_chain": BackpropChainTrainer,
}


def build_trainer(backend, reward, prompts, config, **kwargs) -> FDFOTrainer:
    """The trainer class for `config.method`, with the shared constructor arguments."""
    return TRAINERS[config.method](backend, reward, prompts, config, **kwargs)


__all__ = ["TRAINERS", "BackpropChainTrainer", "DiffusionNFTTrainer", "FlowGRPOTrainer", "GradCopyTrainer",
           "build_trainer", "group_advantages", "implicit_policies", "nft_loss", "optimality_probability", "sde_mean",
           "sde_step_std", "soft_update_"]
