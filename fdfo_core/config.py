"""Training configuration: one typed dataclass, named presets, TOML files.

Defaults are the published FDFO settings for SD3.5 Medium at 512 px (ALGORITHM.md, "The epoch
loop"); presets change only what a model or budget requires.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from .errors import ConfigError
from .families import MMDIT_ATTENTION_TARGETS, family_presets
from .flow.schedules import CHURN_SCHEDULES, ChurnSchedule
from .files.text_files import TextFileError, read_toml_file

Precision = Literal["auto", "bf16", "fp16", "fp32"]
#: "fdfo" is this project's method; the others are baselines sharing models, rewards and loop
#: (fdfo_core/methods): Flow-GRPO and its Fast variant, DiffusionNFT, reward-gradient copy, backprop
#: through the chain.
Method = Literal["fdfo", "flow_grpo", "flow_grpo_fast", "diffusion_nft", "grad_copy", "backprop_chain"]
METHODS: tuple[str, ...] = ("fdfo", "flow_grpo", "flow_grpo_fast", "diffusion_nft", "grad_copy", "backprop_chain")
RewardNormalization = Literal["none", "std"]

#: The attention projections of every MMDiT / Flux / Qwen-Image block (diffusers names); a family
#: whose projections are named otherwise sets `lora_targets` in its preset.
DEFAULT_LORA_TARGETS = MMDIT_ATTENTION_TARGETS


@dataclass
class FDFOConfig:
    # --- paired sampling -------------------------------------------------------------------
    pairs_per_epoch: int = 432  # 864 images per epoch (published)
    num_steps: int = 40  # solver steps (published)
    cfg_scale: float = 1.0  # published default trains without CFG; sample with the same scale
    negative_prompt: str = ""  # unconditional prompt when cfg_scale != 1
    height: int = 512
    width: int = 512
    churn: ChurnSchedule = "raw"  # "raw" = constant g on every step and at the prior (published)
    churn_strength: float = 0.0025  # g (published)
    interval_mean: float = 0.0  # "interval" churn: logit-normal centre of the churn time
    interval_std: float = 1.0
    interval_width: float = 0.5  # width of the churn bump in logit-time
    # Branches per shared initial noise (2 = a pair, published). K > 2: groups of K branches, a
    # least-squares finite difference on their K - 1 differences (methods/fdfo_objective.group_deltas;
    # an extension beyond the paper). Images per epoch stay 2 x pairs_per_epoch: an epoch samples
    # 2 x pairs_per_epoch / K groups (`groups_per_epoch`), so changing K keeps the reward budget.
    branches: int = 2
    sample_batch_size: int = 8  # pairs per sampling batch (2x images through the model)
    decode_batch_size: int = 16  # images per VAE decode / reward call
    # Share of an epoch's pairs that may lose their reward (NaN, missing, a failed reward call)
    # before the run stops: a flaky scorer costs a few pairs, a broken one stops the run. 0.5:
    # an epoch that keeps half its pairs still gives an unbiased (noisier) update.
    max_bad_pair_fraction: float = 0.5
    # --- objective -------------------------------------------------------------------------
    clip_range: float = 0.03  # trust region of the SPO surrogate (published)
    kl_weight: float = 0.0  # KL-style pull to the base model; the authors keep it off
    reward_normalization: RewardNormalization = "none"  # "std": divide dR by the epoch's reward std
    # --- optimisation ----------------------------------------------------------------------
    epochs: int = 100  # ~100 epochs for good results (published)
    optimizer_steps_per_epoch: int = 4  # all (sample, step) items, split into 4 updates (published)
    steps_per_sample: int = 0  # train on a random subset of k steps per sample; 0 = every step
    train_batch_size: int = 16  # items per forward/backward micro-batch (memory knob only)
    lr: float = 3e-5
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-4
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    # --- adapter ---------------------------------------------------------------------------
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    # --- run -------------------------------------------------------------------------------
    seed: int = 0
    checkpoint_every: int = 5  # epochs (published)
    precision: Precision = "auto"  # auto: bf16 autocast + fp32 adapter on CUDA, fp32 on CPU
    storage_device: Literal["auto", "cpu"] = "auto"  # where recorded states live; cpu saves VRAM
    gradient_checkpointing: bool = False
    # Frozen transformer weights: "auto" = the load dtype (bf16 on CUDA, fp32 on CPU); "fp8" =
    # float8_e4m3fn storage cast per layer to the compute dtype (diffusers backend; ~half the
    # weight memory of bf16, outputs within a few per cent; fdfo_core/backends/fp8.py).
    base_weights: Literal["auto", "fp8"] = "auto"
    # torch.compile the transformer for sampling and training (diffusers backend).
    compile: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific settings, recorded as given
    # --- guardrails against reward hacking (not part of the published recipe; run/guardrails.py) -
    # Held-out evaluation every N epochs, at the last epoch and once for the base model: fixed
    # prompts x fixed seeds, plain sampling at the training settings. 4 x 4 images are 16 of the 864
    # a published-size epoch samples (and trains on): about 0.5 % of an epoch each time. 0 = off.
    eval_every: int = 5
    eval_prompt_count: int = 4  # held-out prompts (spread over the list given, or the training prompts)
    eval_seeds: int = 4  # seeds per held-out prompt (>= 2: diversity compares a prompt's seeds)
    judge: str = ""  # reward spec scoring held-out images besides the training reward ("" = none)
    early_stop_patience: int = 0  # stop after N evaluations without a new best criterion (0 = off)
    early_stop_min_diversity: float = 0.0  # stop when diversity < this x the base model's (0 = off)
    # Stop when an image statistic of the held-out images (near-black / near-white share, saturation,
    # colour entropy, edge density; image_stats.py) moves this far from the base model's, as a
    # fraction of its range (0 = off; 0.3 catches a dark share going from 0.45 to 0.93).
    early_stop_max_image_shift: float = 0.0
    # --- method and baselines (Flow-GRPO settings: its paper and public SD3.5 configs) ---------
    method: Method = "fdfo"
    grpo_group_size: int = 24  # G images per prompt
    grpo_groups_per_epoch: int = 48
    grpo_noise_level: float = 0.7  # a in sigma_t = a * sqrt(t / (1 - t))
    grpo_clip_range: float = 1e-4  # PPO ratio clip
    grpo_kl_beta: float = 0.01  # KL to the base model (0.04 for GenEval/OCR)
    grpo_global_std: bool = False  # advantages normalised by one global std instead of per group
    grpo_timestep_fraction: float = 0.99  # fraction of each sample's SDE steps trained on
    grpo_window: int = 2  # Flow-GRPO-Fast: number of consecutive SDE steps per sample
    grpo_window_range: int = 0  # Fast: window start drawn from [0, range); 0 = the first half
    # DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117; its published SD3.5-Medium settings)
    nft_group_size: int = 24  # images per prompt
    nft_groups_per_epoch: int = 48
    nft_beta: float = 1.0  # strength of the implicit policies v+- = v_old +- beta (v - v_old) (0.1: OCR, multi-reward)
    nft_reward_clip: float = 5.0  # r = 1/2 + 1/2 clip(A / clip, -1, 1), A = (R - group mean) / std
    nft_global_std: bool = True  # A uses the epoch's global reward std (False: the group's own)
    nft_timestep_fraction: float = 0.99  # each image trains at int(fraction * num_steps) times of the grid
    nft_adaptive_weighting: bool = True  # x0 error / its detached mean |error| instead of a fixed w(t)
    nft_decay_rate: float = 0.001  # soft update of the sampling policy: eta = min(rate * (step - delay), max)
    nft_decay_max: float = 0.5  # ... per optimizer step; 0.0075 / 0.999 / delay 75 is the OCR schedule
    nft_decay_delay: int = 0
    nft_kl_beta: float = 1e-4  # mean((v - v_base)^2) pull to the base model
    grad_copy_delta: float = 0.05  # grad_copy: length of the virtual pair along the reward gradient

    def validate(self) -> "FDFOConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.pairs_per_epoch >= 1, f"pairs_per_epoch must be >= 1, got {self.pairs_per_epoch}")
        need(self.num_steps >= 1, f"num_steps must be >= 1, got {self.num_steps}")
        need(self.cfg_scale >= 1.0, f"cfg_scale must be >= 1 (1 = no CFG), got {self.cfg_scale}")
        if not (self.height % 16 == 0 and self.width % 16 == 0 and self.height >= 16 and self.width >= 16):
            from .flow.image_sizes import SizeRule, nearest_sizes

            near = nearest_sizes(self.height, self.width, SizeRule(16, 16))
            raise ConfigError(
                f"height and width must be multiples of 16 (at least 16), got {self.height}x{self.width} (height x "
                f"width); nearest sizes: {', '.join(f'{h}x{w}' for h, w in near)} (the model may allow fewer: "
                "it is checked again when it is loaded)")
        need(self.churn in CHURN_SCHEDULES, f"churn must be one of {CHURN_SCHEDULES}, got {self.churn!r}")
        need(isinstance(self.branches, int) and self.branches >= 2,
             f"branches must be an integer >= 2 (2 = pairs, published), got {self.branches!r}")
        if (2 * self.pairs_per_epoch) % self.branches:
            k, images = self.branches, 2 * self.pairs_per_epoch
            below = next((p for p in range(self.pairs_per_epoch - 1, 0, -1) if (2 * p) % k == 0), None)
            above = next(p for p in range(self.pairs_per_epoch + 1, self.pairs_per_epoch + k + 1) if (2 * p) % k == 0)
            raise ConfigError(
                f"branches={k} needs 2 x pairs_per_epoch ({images} images per epoch) to be a multiple of {k}: an "
                f"epoch samples 2 x pairs_per_epoch / branches groups of {k} images. Set pairs_per_epoch to "
                + (f"{below} or {above}" if below else f"{above}") + f", or branches to a divisor of {images}")
        need(self.churn_strength >= 0, f"churn_strength must be >= 0, got {self.churn_strength}")
        need(self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}")
        need(self.kl_weight >= 0, f"kl_weight must be >= 0, got {self.kl_weight}")
        need(self.reward_normalization in ("none", "std"),
             f"reward_normalization must be 'none' or 'std', got {self.reward_normalization!r}")
        need(self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}")
        need(self.optimizer_steps_per_epoch >= 1,
             f"optimizer_steps_per_epoch must be >= 1, got {self.optimizer_steps_per_epoch}")
        need(0 <= self.steps_per_sample <= self.num_steps,
             f"steps_per_sample must be between 0 (all) and num_steps={self.num_steps}, got {self.steps_per_sample}")
        need(self.sample_batch_size >= 1 and self.train_batch_size >= 1 and self.decode_batch_size >= 1,
             "batch sizes must be >= 1")
        need(isinstance(self.max_bad_pair_fraction, (int, float)) and 0.0 <= self.max_bad_pair_fraction <= 1.0,
             f"max_bad_pair_fraction must be between 0 (stop at the first pair without a reward) and 1 (never stop "
             f"while any pair is left), got {self.max_bad_pair_fraction!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.lora_rank >= 1, f"lora_rank must be >= 1, got {self.lora_rank}")
        need(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = only at the end), got {self.checkpoint_every}")
        need(self.precision in ("auto", "bf16", "fp16", "fp32"),
             f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        need(self.storage_device in ("auto", "cpu"), f"storage_device must be 'auto' or 'cpu', got {self.storage_device!r}")
        need(self.base_weights in ("auto", "fp8"), f"base_weights must be 'auto' or 'fp8', got {self.base_weights!r}")
        need(self.eval_every >= 0, f"eval_every must be >= 0 (0 = no held-out evaluation), got {self.eval_every}")
        need(self.eval_prompt_count >= 1, f"eval_prompt_count must be >= 1, got {self.eval_prompt_count}")
        need(self.eval_seeds >= 2, f"eval_seeds must be >= 2 (diversity compares the seeds of a prompt), got {self.eval_seeds}")
        need(self.early_stop_patience >= 0, f"early_stop_patience must be >= 0 (0 = off), got {self.early_stop_patience}")
        need(0.0 <= self.early_stop_min_diversity <= 1.0,
             f"early_stop_min_diversity is a fraction of the base model's diversity in [0, 1] (0 = off), "
             f"got {self.early_stop_min_diversity}")
        need(0.0 <= self.early_stop_max_image_shift <= 1.0,
             f"early_stop_max_image_shift is a fraction of each image statistic's range in [0, 1] (0 = off), "
             f"got {self.early_stop_max_image_shift}")
        if not self.eval_every:
            for name, value in (("judge", self.judge), ("early_stop_patience", self.early_stop_patience),
                                ("early_stop_min_diversity", self.early_stop_min_diversity),
                                ("early_stop_max_image_shift", self.early_stop_max_image_shift)):
                need(not value, f"{name} needs the held-out evaluation: set eval_every >= 1 (it is 0)")
        need(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        if self.method.startswith("flow_grpo"):
            need(self.grpo_group_size >= 2, f"grpo_group_size must be >= 2, got {self.grpo_group_size}")
            need(self.grpo_groups_per_epoch >= 1, "grpo_groups_per_epoch must be >= 1")
            need(self.grpo_noise_level > 0, f"grpo_noise_level must be > 0, got {self.grpo_noise_level}")
            need(self.grpo_clip_range > 0, f"grpo_clip_range must be > 0, got {self.grpo_clip_range}")
            need(0 < self.grpo_timestep_fraction <= 1, "grpo_timestep_fraction must be in (0, 1]")
            need(1 <= self.grpo_window <= self.num_steps, f"grpo_window must be in [1, num_steps], got {self.grpo_window}")
        if self.method == "diffusion_nft":
            need(self.nft_group_size >= 2, f"nft_group_size must be >= 2, got {self.nft_group_size}")
            need(self.nft_groups_per_epoch >= 1, f"nft_groups_per_epoch must be >= 1, got {self.nft_groups_per_epoch}")
            need(self.nft_beta > 0, f"nft_beta must be > 0, got {self.nft_beta}")
            need(self.nft_reward_clip > 0, f"nft_reward_clip must be > 0, got {self.nft_reward_clip}")
            need(0 < self.nft_timestep_fraction <= 1, f"nft_timestep_fraction must be in (0, 1], got {self.nft_timestep_fraction}")
            need(self.nft_decay_rate >= 0 and 0 <= self.nft_decay_max <= 1 and self.nft_decay_delay >= 0,
                 "the soft update needs nft_decay_rate >= 0, 0 <= nft_decay_max <= 1 and nft_decay_delay >= 0, got "
                 f"{self.nft_decay_rate}, {self.nft_decay_max}, {self.nft_decay_delay}")
            need(self.nft_kl_beta >= 0, f"nft_kl_beta must be >= 0, got {self.nft_kl_beta}")
            need(self.cfg_scale == 1.0, f"diffusion_nft is CFG-free (its paper samples and trains without CFG); "
                 f"set cfg_scale to 1, got {self.cfg_scale}")
            n_nft = self.nft_group_size * self.nft_groups_per_epoch * max(1, int(self.num_steps * self.nft_timestep_fraction))
            need(n_nft >= self.optimizer_steps_per_epoch,
                 f"{n_nft} DiffusionNFT training items per epoch cannot fill {self.optimizer_steps_per_epoch} optimizer "
                 "steps; raise nft_groups_per_epoch or lower optimizer_steps_per_epoch")
        n_items = 2 * self.pairs_per_epoch * (self.steps_per_sample or self.num_steps)
        need(n_items >= self.optimizer_steps_per_epoch,
             f"{n_items} training items per epoch cannot fill {self.optimizer_steps_per_epoch} optimizer steps; "
             "raise pairs_per_epoch or lower optimizer_steps_per_epoch")
        return self

    @property
    def groups_per_epoch(self) -> int:
        """Initial noises an FDFO epoch samples: 2 x pairs_per_epoch / branches (= pairs_per_epoch
        for pairs), each with `branches` branches; images per epoch are 2 x pairs_per_epoch either way."""
        return 2 * self.pairs_per_epoch // self.branches

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FDFOConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
        values = dict(values)
        if "lora_targets" in values:
            values["lora_targets"] = tuple(values["lora_targets"])
        return cls(**values)

    def replace(self, **changes: Any) -> "FDFOConfig":
        return dataclasses.replace(self, **changes)


#: Named presets: small flat dicts applied on top of the defaults. One per model family (declared
#: in the family's module, `fdfo_core.families`; "sd35-medium" is the published recipe, i.e. the
#: defaults), plus the bundled toy model's.
PRESETS: dict[str, dict[str, Any]] = {
    **family_presets(),
    # The bundled toy model on CPU: a few minutes per run.
    "toy": {
        "height": 64, "width": 64, "num_steps": 20, "pairs_per_epoch": 32, "sample_batch_size": 16,
        "decode_batch_size": 16, "train_batch_size": 64, "lr": 3e-4, "lora_rank": 8,
        "lora_alpha": 16.0, "churn_strength": 0.05, "checkpoint_every": 5, "epochs": 40,
        "optimizer_steps_per_epoch": 4,
    },
}


def config_values(
    preset: str | None = None,
    toml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The values a preset, a TOML file and explicit overrides set (later ones win), unvalidated:
    exactly what the user gave, e.g. to lay over a resumed run's own config."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset])
    if toml_path:
        path = Path(toml_path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:  # UTF-8 with or without a byte-order mark, any line ends (fdfo_core.files.text_files)
            data = read_toml_file(path, "config file")
        except TextFileError as e:
            raise ConfigError(str(e)) from None
        data = data.get("fdfo", data)
        values.update(data)
    if overrides:
        values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def load_config(
    preset: str | None = None,
    toml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FDFOConfig:
    """Defaults <- preset <- TOML file <- explicit overrides (CLI flags), then validate."""
    return FDFOConfig.from_dict(config_values(preset, toml_path, overrides)).validate()
