"""Every setting of the FDFO Trainer, declared once: the few on the Trainer node, the rest on the
optional FDFO Training Options node.

The Trainer shows what a person decides for a run (epochs, pairs, steps, CFG, resolution, learning
rate, LoRA rank / alpha, name, resume); everything else is an `Option` in `OPTIONS`, with the
published default. A setting left out of a workflow (no options node, or an options node saved
before the setting existed) takes its default.

Adding an option is one entry at the end of `OPTIONS`:
- `config="field"`: it sets that `FDFOConfig` field (through `to_config` when the widget value
  needs translating); nothing else to write;
- `config=None`: the node reads it from the settings dict (`settings["name"]`) where it is used.
At the end, because a saved UI workflow stores widget values by position: an appended option takes
its default in an older workflow, an inserted one would shift the values after it. Every option is
an optional input, so an API-format prompt saved before an option existed still validates. The
options node, its widget order and the workflow builder read this list; docs/comfyui.md describes
every option (a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..fdfo_core.config import FDFOConfig
from ..fdfo_core.backends.prompt_cache import DEFAULT_PROMPT_CACHE_BYTES, MB
from .common import CATEGORY, PROMPTS
from .sampler_nodes import DEFAULTS, optional_sampling_inputs, sampling_inputs

#: The socket type of a Training Options node's output.
TRAINING_OPTIONS = "FDFO_TRAINING_OPTIONS"


@dataclass(frozen=True)
class Option:
    """One setting: its ComfyUI input spec (type, options with default and tooltip), the
    FDFOConfig field it sets (None: read by the node) and a group for the docs."""

    name: str
    spec: tuple
    group: str
    config: str | None = None
    to_config: Callable[[Any], Any] | None = None

    @property
    def default(self) -> Any:
        opts = self.spec[1] if len(self.spec) > 1 else {}
        if "default" in opts:
            return opts["default"]
        if isinstance(self.spec[0], list):
            return self.spec[0][0]
        return None  # a socket (e.g. preview prompts): absent unless connected

    @property
    def tooltip(self) -> str:
        return self.spec[1].get("tooltip", "") if len(self.spec) > 1 else ""


_s, _o, d = sampling_inputs(), optional_sampling_inputs(), DEFAULTS


def _int(default: int, lo: int, hi: int, tooltip: str, **extra) -> tuple:
    return ("INT", {"default": default, "min": lo, "max": hi, "tooltip": tooltip, **extra})


def _float(default: float, lo: float, hi: float, step: float, tooltip: str, **extra) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tooltip, **extra})


#: The Trainer node's own widgets, in order: what a person decides for a run.
TRAINER_SETTINGS: tuple[Option, ...] = (
    Option("epochs", _int(d.epochs, 0, 100000, (
        "Total epochs of the run (about 100 for good results on SD3.5). Raising it and queueing again with resume "
        "continues the run.")), "run", "epochs"),
    Option("pairs_per_epoch", _int(d.pairs_per_epoch, 1, 1000000, "Pairs sampled per epoch (432 published = 864 images)."),
           "run", "pairs_per_epoch"),
    Option("steps", _s["steps"], "run", "num_steps"),
    Option("cfg", _s["cfg"], "run", "cfg_scale"),
    Option("width", _s["width"], "run", "width"),
    Option("height", _s["height"], "run", "height"),
    Option("learning_rate", _float(d.lr, 1e-8, 1.0, 1e-6, "AdamW learning rate (3e-5 published).", round=1e-8), "run", "lr"),
    Option("lora_rank", _int(d.lora_rank, 1, 1024, "LoRA rank on every attention projection (32 published)."), "run", "lora_rank"),
    Option("lora_alpha", _float(d.lora_alpha, 0.01, 4096.0, 0.5, "LoRA alpha; the update is scaled by alpha / rank (64 published)."),
           "run", "lora_alpha"),
    Option("lora_name", ("STRING", {"default": "fdfo_lora", "tooltip": (
        "File name of the LoRA in ComfyUI/models/loras/ and of the run folder in output/fdfo/. A new run never "
        "overwrites an earlier LoRA: it gets a -2, -3, ... suffix; a file of that name from another run or tool found "
        "when the LoRA is saved is kept, and this run's LoRA gets its run id as a suffix (the node says so).")}), "run"),
    Option("resume", ("BOOLEAN", {"default": True, "tooltip": (
        "Continue the newest run of this name from its last checkpoint (with the same settings; epochs may grow). "
        "Off: start a new run.")}), "run"),
)

#: The FDFO Training Options node, in widget order. Add new settings here (see the module docstring).
OPTIONS: tuple[Option, ...] = (
    # --- sampling of the pairs ------------------------------------------------------------------
    Option("seed", _s["seed"], "sampling", "seed"),
    Option("churn", _s["churn"], "sampling", "churn"),
    Option("churn_strength", _s["churn_strength"], "sampling", "churn_strength"),
    Option("interval_mean", _float(d.interval_mean, -10.0, 10.0, 0.05, (
        "churn 'interval' only: centre of the churn time, in logit flow time (0 = t 0.5).")), "sampling", "interval_mean"),
    Option("interval_std", _float(d.interval_std, 0.0, 10.0, 0.05, (
        "churn 'interval' only: spread of the churn time across pairs, in logit flow time.")), "sampling", "interval_std"),
    Option("interval_width", _float(d.interval_width, 0.01, 10.0, 0.05, (
        "churn 'interval' only: width of the churn bump, in logit flow time.")), "sampling", "interval_width"),
    Option("negative_prompt", _o["negative_prompt"], "sampling", "negative_prompt"),
    Option("scheduler", _o["scheduler"], "sampling"),
    Option("flux_guidance", _o["flux_guidance"], "sampling"),
    # --- the update -----------------------------------------------------------------------------
    Option("clip_range", _float(d.clip_range, 1e-5, 10.0, 0.001, (
        "Trust region of the surrogate objective (0.03 published): how far one epoch may move the model."), round=1e-5),
        "update", "clip_range"),
    Option("optimizer_steps_per_epoch", _int(d.optimizer_steps_per_epoch, 1, 10000, (
        "Optimizer updates per epoch; every (image, step) item of the epoch is used once (4 published).")),
        "update", "optimizer_steps_per_epoch"),
    Option("steps_per_sample", _int(d.steps_per_sample, 0, 1000, (
        "Train on k random solver steps per image instead of all (0 = all, published). Faster epochs.")),
        "update", "steps_per_sample"),
    Option("reward_normalization", (["none", "std", "per_prompt"], {"default": "none", "tooltip": (
        "none: raw reward differences (published); std: divided by the epoch's reward spread; per_prompt: each "
        "score standardised against its prompt's scores (for rewards whose scale varies by prompt).")}),
        "update", "reward_normalization", lambda v: "std" if v == "std" else "none"),
    Option("kl_weight", _float(d.kl_weight, 0.0, 1000.0, 0.01, (
        "Pull toward the base model's velocity (0 published; costs one more model pass per item).")), "update", "kl_weight"),
    # --- checkpoints and previews ---------------------------------------------------------------
    Option("checkpoint_every", _int(d.checkpoint_every, 0, 100000, (
        "Save a resumable checkpoint every N epochs (5 published; 0 = only at the end). Cancel keeps the last one.")),
        "checkpoints", "checkpoint_every"),
    Option("preview_count", _int(4, 1, 64, "Images in the preview grid (fixed prompts and seeds)."), "previews"),
    Option("preview_every", _int(1, 0, 10000, "Show and save a preview grid every N epochs (0 = never)."), "previews"),
    Option("preview_prompts", (PROMPTS, {"tooltip": "Prompts of the preview grid (default: the first training prompts)."}),
           "previews"),
    # --- memory and precision (results do not change, except precision) --------------------------
    Option("sample_batch_size", _int(d.sample_batch_size, 1, 4096, "Pairs per sampling batch (memory only)."),
           "memory", "sample_batch_size"),
    Option("train_batch_size", _int(d.train_batch_size, 1, 4096, "Items per forward/backward pass (memory only)."),
           "memory", "train_batch_size"),
    Option("decode_batch_size", _int(d.decode_batch_size, 1, 4096, "Images per VAE decode and reward call (memory only)."),
           "memory", "decode_batch_size"),
    Option("gradient_checkpointing", ("BOOLEAN", {"default": d.gradient_checkpointing, "tooltip": (
        "Recompute activations in the backward pass: less VRAM, about 30 % slower.")}), "memory", "gradient_checkpointing"),
    Option("precision", (["auto", "bf16", "fp16", "fp32"], {"default": d.precision, "tooltip": (
        "Autocast for the model passes (the LoRA itself is always fp32). auto: bf16 on a GPU, fp32 on the CPU.")}),
        "memory", "precision"),
    Option("storage_device", (["auto", "cpu"], {"default": d.storage_device, "tooltip": (
        "Where the recorded states of an epoch live. cpu saves VRAM (SD3.5/Flux at the published size need it on "
        "24 GB cards).")}), "memory", "storage_device"),
    Option("full_load", ("BOOLEAN", {"default": False, "tooltip": (
        "Load the whole model onto the GPU for training. Off: ComfyUI decides (partial loading when VRAM is short).")}),
        "memory"),
    Option("prompt_cache_mb", _int(DEFAULT_PROMPT_CACHE_BYTES // MB, 16, 1048576, (
        "Host RAM (MB) for the encoded prompts, kept so each prompt is encoded once. An SD3.5 prompt takes about "
        "2.5 MB, a Flux prompt 4.2 MB (half in bf16); beyond the bound the least recently used are dropped and "
        "encoded again when needed. Keep it above one epoch's prompts."), step=64), "memory"),
    # --- bad rewards and resuming (issues 10 and 17) -------------------------------------------------
    Option("max_bad_pair_fraction", _float(d.max_bad_pair_fraction, 0.0, 1.0, 0.05, (
        "Pairs whose reward is missing, NaN or failed (a scoring server's error for some images) are dropped and "
        "counted; the run stops when more than this share of an epoch's pairs is lost (0: stop at the first; "
        "1: never while any pair is left).")), "update", "max_bad_pair_fraction"),
    Option("allow_run_changes", ("BOOLEAN", {"default": False, "tooltip": (
        "With resume on: continue the run even though prompts, reward, seed or other settings that define it "
        "changed, and record the change as a new branch in its run.json. Off: such a change is refused with the "
        "list of differences (epochs and memory settings may always change).")}), "run"),
    # --- memory for a GPU budget (issue 14) ----------------------------------------------------------
    Option("vram_gb", _float(0.0, 0.0, 4096.0, 1.0, (
        "GPU memory to fit in, in GB (0 = off: the memory options are used as set). On: gradient checkpointing, "
        "storage device and batch sizes are chosen from memory estimates for this budget and logged with the "
        "expected peak (fp8 weights come from the loader's weight_dtype). Needs diffusers for the estimate.")),
        "memory"),
    # --- guardrails against reward hacking (issue 13; fdfo_core/run/guardrails.py) -----------------------
    Option("eval_every", _int(d.eval_every, 0, 100000, (
        "Held-out evaluation every N epochs, at the last epoch and once for the base model: the training reward, "
        "the judge (the Trainer's judge input), diversity across seeds and drift from the base model on held-out "
        "prompts x fixed seeds. 0 = off: no best LoRA, no early stop. Costs a small share of an epoch; the log "
        "says how much.")), "guardrails", "eval_every"),
    Option("eval_prompt_count", _int(d.eval_prompt_count, 1, 4096, "How many held-out prompts (spread over the list)."),
           "guardrails", "eval_prompt_count"),
    Option("eval_seeds", _int(d.eval_seeds, 2, 256, (
        "Seeds per held-out prompt (fixed). Diversity compares a prompt's images of different seeds.")),
        "guardrails", "eval_seeds"),
    Option("eval_prompts", (PROMPTS, {"tooltip": (
        "Held-out prompts for the evaluation (prompts you do not train on). Not connected: spread over the training "
        "prompts, with seeds training never uses.")}), "guardrails"),
    Option("early_stop_patience", _int(d.early_stop_patience, 0, 100000, (
        "Stop when the judge (or the held-out reward without a judge) has not beaten its best for N evaluations "
        "(0 = off).")), "guardrails", "early_stop_patience"),
    Option("early_stop_min_diversity", _float(d.early_stop_min_diversity, 0.0, 1.0, 0.05, (
        "Stop when diversity across seeds falls below this fraction of the base model's (0 = off; 0.5 is a "
        "reasonable guard against mode collapse).")), "guardrails", "early_stop_min_diversity"),
    Option("lora_output", (["last", "best"], {"default": "last", "tooltip": (
        "Which LoRA the Trainer's model / lora / lora_name outputs carry: the last epoch's, or the best held-out one "
        "(<name>-best.safetensors). Both files are saved either way.")}), "guardrails"),
    Option("early_stop_max_image_shift", _float(d.early_stop_max_image_shift, 0.0, 1.0, 0.05, (
        "Stop when a plain statistic of the held-out images (near-black or near-white share, saturation, colour "
        "entropy, edge density) moves this far from the base model's, as a fraction of its range (0 = off; 0.3 "
        "catches a dark share going from 0.45 to 0.93).")), "guardrails", "early_stop_max_image_shift"),
    # --- groups of branches (issue 30; fdfo_core/methods/fdfo_objective.group_deltas) -------------------
    Option("branches", _int(d.branches, 2, 64, (
        "Branches per shared initial noise: 2 = pairs (published). K > 2: groups of K branches trained on a "
        "least-squares finite difference over their K - 1 differences (an extension beyond the paper). Images per "
        "epoch stay 2 x pairs per epoch (2 x pairs / K groups; it must divide). Not with human picks (pairs only).")),
        "sampling", "branches"),
)

ALL_SETTINGS: tuple[Option, ...] = TRAINER_SETTINGS + OPTIONS
_BY_NAME = {o.name: o for o in ALL_SETTINGS}
assert len(_BY_NAME) == len(ALL_SETTINGS), "duplicate setting names"


def setting(name: str) -> Option:
    return _BY_NAME[name]


def input_spec(options: tuple[Option, ...]) -> dict[str, tuple]:
    return {o.name: o.spec for o in options}


def option_defaults() -> dict[str, Any]:
    """Every setting's default (sockets such as preview_prompts: None)."""
    return {o.name: o.default for o in ALL_SETTINGS}


class TrainingOptions(dict):
    """The FDFO_TRAINING_OPTIONS value: option name -> value, every option of `OPTIONS` present."""

    def describe(self) -> str:
        changed = {k: v for k, v in self.items() if k in _BY_NAME and v != _BY_NAME[k].default}
        return "training options: " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "all defaults")


def resolve_settings(values: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every setting of a run: defaults <- the options node <- the values given to the trainer.

    Unknown names are refused (a typo must not silently fall back to a default)."""
    unknown = sorted(set(values) - set(_BY_NAME)) + sorted(set(options or {}) - set(_BY_NAME))
    if unknown:
        raise KeyError(f"unknown FDFO training setting(s) {unknown}; known: {sorted(_BY_NAME)}")
    settings = option_defaults()
    settings.update({k: v for k, v in (options or {}).items()})
    settings.update(values)
    return settings


def config_from_settings(settings: Mapping[str, Any]) -> FDFOConfig:
    """An FDFOConfig from resolved settings (validated: errors name the field)."""
    kwargs = {}
    for o in ALL_SETTINGS:
        if o.config is None or o.name not in settings:
            continue
        value = settings[o.name]
        kwargs[o.config] = o.to_config(value) if o.to_config else value
    kwargs["extra"] = {"frontend": "comfyui", "scheduler": settings.get("scheduler", "simple"),
                       "flux_guidance": settings.get("flux_guidance", 3.5)}
    return FDFOConfig(**kwargs).validate()


class FDFOTrainingOptionsNode:
    """Everything the FDFO Trainer does not show: one node, connected to the Trainer's options input."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (TRAINING_OPTIONS,)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("Connect to the FDFO Trainer's options input.",)
    FUNCTION = "build"
    DESCRIPTION = (
        "The FDFO Trainer's less common settings: churn schedule, clip range, optimizer steps, checkpoints, "
        "previews, reward normalisation, KL, batch sizes, precision and memory, held-out evaluation and early stop "
        "(guardrails against reward hacking). Defaults are the published recipe; "
        "without this node the Trainer uses them all."
    )

    @classmethod
    def INPUT_TYPES(cls):
        # All optional: a prompt saved before an option existed still validates (see the module docstring).
        return {"required": {}, "optional": input_spec(OPTIONS)}

    def build(self, **values) -> tuple[TrainingOptions]:
        options = TrainingOptions({o.name: o.default for o in OPTIONS})
        options.update(values)
        return (options,)


NODES = {"FDFOTrainingOptions": (FDFOTrainingOptionsNode, "FDFO Training Options")}
