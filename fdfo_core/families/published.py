"""The published models of a family, as declarations: transformer and VAE configs, sizes.

A family lists its published variants (`Family.published_models`); the memory estimator
(`fdfo_core.backends.memory`) and the GPU profile (`benchmarks/gpu_profile.py`) build their transformers
from these configs on the meta device (no download, no memory) to count parameters, estimate
memory and, on a GPU, materialise random weights of the true size.

The configs are the `config.json` files of the models' diffusers repositories (the `repo` field);
`published_params_b` is the size the model card states, which a test compares with the count of
the transformer built from the config. Text-encoder sizes are the published sizes of the
encoders the pipeline loads (CLIP ViT-L/14 123.7 M, OpenCLIP bigG/14 694.7 M, T5 v1.1 XXL
encoder 4.76 B, Qwen2.5-VL-7B 8.29 B): the profile stands in for them with conditioning of the
right shapes and the estimator only needs their size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: Published sizes of the text encoders (billions of parameters).
CLIP_L_B = 0.1237
CLIP_G_B = 0.6947
T5_XXL_ENCODER_B = 4.762
QWEN25_VL_7B_B = 8.292

#: The VAE of SD3 / SD3.5 and Flux.1 (diffusers AutoencoderKL, 16 latent channels, 8x downscale).
SD3_VAE_CONFIG: Mapping[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "sample_size": 1024, "use_quant_conv": False,
    "use_post_quant_conv": False, "scaling_factor": 1.5305, "shift_factor": 0.0609,
}
#: A VAE of the same layout (8x downscale, 16 channels) with 8 channels per level, for CPU runs.
SMALL_KL_VAE_CONFIG: Mapping[str, Any] = {
    **SD3_VAE_CONFIG, "block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4,
    "sample_size": 64,
}


@dataclass(frozen=True)
class PublishedModel:
    """One published model of a family.

    key: short name used on the command line (`benchmarks/gpu_profile.py --models sd35-medium`).
    transformer / transformer_config: diffusers class name and its published config.
    vae / vae_config: the same for the VAE (empty config: the class defaults, which are the
        published ones).
    pipeline: the diffusers pipeline class (the backend recognises the family through it).
    published_params_b: the transformer's size in billions as its model card states it.
    text_encoders_b: published size of the text encoders the pipeline loads (billions).
    resolution: the training resolution of the published / recommended recipe (pixels).
    small_transformer / small_vae: overrides of the two configs that give a model of the same
        architecture small enough for a CPU (the profile's CPU mode and its test).
    count_buffers: the published count includes persistent buffers (SD3's position table is a
        parameter in the original checkpoint and a buffer in diffusers).
    """

    key: str
    title: str
    repo: str
    pipeline: str
    transformer: str
    transformer_config: Mapping[str, Any]
    vae: str
    vae_config: Mapping[str, Any]
    published_params_b: float
    text_encoders_b: float
    resolution: int
    small_transformer: Mapping[str, Any] = field(default_factory=dict)
    small_vae: Mapping[str, Any] = field(default_factory=dict)
    count_buffers: bool = False
    vae_scale_factor: int = 8
    #: FlowMatchEulerDiscreteScheduler config of the pipeline (only the time grid depends on it).
    scheduler_config: Mapping[str, Any] = field(default_factory=lambda: {"shift": 3.0})

    def config(self, small: bool = False) -> dict[str, Any]:
        """The transformer config (the small CPU one when `small`)."""
        return {**self.transformer_config, **(self.small_transformer if small else {})}

    def vae_config_for(self, small: bool = False) -> dict[str, Any]:
        return {**self.vae_config, **(self.small_vae if small else {})}
