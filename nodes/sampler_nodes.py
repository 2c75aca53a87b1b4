"""FDFO Paired Sampler: the pairs the trainer samples, shown to the artist.

Each pair shares its initial noise; both branches are re-noised slightly ("churn") and end as two
similar, counterfactual images. FDFO learns from their reward difference along the direction in
which they differ. With the same seed, steps, CFG, churn, size and scheduler, pair i of epoch e
here is exactly pair i of epoch e of an FDFO Trainer run on the same prompts (before that epoch's
update): both draw the pairs with `fdfo_core.backends.generation.epoch_pairs` (the same prompt
order, noise and churn draws).
"""

from __future__ import annotations

import math

import torch

from ..fdfo_core.backends.generation import amp_dtype, epoch_pairs, model_velocity, sample_pair_batches
from ..fdfo_core.config import FDFOConfig
from ..fdfo_core.flow.schedules import CHURN_SCHEDULES
from .common import CATEGORY, PROMPTS, REWARD, NodeProgress, check_interrupt, nchw_to_image, pil_to_image

DEFAULTS = FDFOConfig()
MAX_SEED = 2**63 - 1


def scheduler_names() -> list[str]:
    try:
        import comfy.samplers

        return list(comfy.samplers.SCHEDULER_NAMES)
    except ImportError:
        return ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal"]


def sampling_inputs() -> dict[str, tuple]:
    """Inputs shared by the Paired Sampler and the Trainer, with the published FDFO defaults."""
    d = DEFAULTS
    return {
        # control_after_generate off: a seed that changed on every queue would break resuming a run.
        "seed": ("INT", {"default": d.seed, "min": 0, "max": MAX_SEED, "control_after_generate": False, "tooltip": (
            "Seeds the prompt order, the shared initial noise of each pair and its churn noise. Same seed, same pairs.")}),
        "steps": ("INT", {"default": d.num_steps, "min": 1, "max": 1000, "tooltip": "Solver steps per image (40 published for SD3.5 Medium)."}),
        "cfg": ("FLOAT", {"default": d.cfg_scale, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01, "tooltip": (
            "Classifier-free guidance scale; 1.0 = no CFG (the published recipe; after FDFO models need no CFG). "
            "Sample the trained model with the same value.")}),
        "churn": (list(CHURN_SCHEDULES), {"default": d.churn, "tooltip": (
            "Where the two images of a pair are re-noised. raw: a constant strength at every step and at the start "
            "(published); interval: concentrated around one random time; prior: only at the start.")}),
        "churn_strength": ("FLOAT", {"default": d.churn_strength, "min": 0.0, "max": 1.0, "step": 0.0005, "round": 0.00001, "tooltip": (
            "Churn strength g (0.0025 published). Larger: the two images of a pair differ more.")}),
        "width": ("INT", {"default": d.width, "min": 16, "max": 8192, "step": 16, "tooltip": "Image width in pixels (a multiple of 16)."}),
        "height": ("INT", {"default": d.height, "min": 16, "max": 8192, "step": 16, "tooltip": "Image height in pixels (a multiple of 16)."}),
    }


def optional_sampling_inputs() -> dict[str, tuple]:
    return {
        "negative_prompt": ("STRING", {"default": DEFAULTS.negative_prompt, "multiline": False, "tooltip": "Unconditional prompt for CFG (used only when cfg > 1)."}),
        "scheduler": (scheduler_names(), {"default": "simple", "tooltip": "ComfyUI scheduler that gives the time grid (the model's own shift applies). Use the same when sampling the trained model."}),
        "flux_guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Flux dev's guidance embedding value, used when the conditioning has none (as FluxGuidance sets it). Ignored by other models."}),
    }


def clean_prompts(prompts) -> list[str]:
    from ..fdfo_core.files.prompts import clean_prompt
    from ..fdfo_core.run.hooks import TrainingError

    cleaned = [clean_prompt(p) for p in (prompts or []) if isinstance(p, str)]
    cleaned = [p for p in cleaned if p]
    if not cleaned:
        raise TrainingError("the prompt list is empty: give at least one non-empty prompt (FDFO Prompt List, one per line)")
    return cleaned


@torch.no_grad()
def sample_epoch_pairs(backend, config: FDFOConfig, prompts: list[str], epoch: int, on_step=None) -> tuple[torch.Tensor, list[int]]:
    """Final latents [2n, C, h, w] (a rows, then b rows) of the first `config.pairs_per_epoch`
    pairs of `epoch`, and each pair's prompt index: the trainer's own draw
    (`fdfo_core.backends.generation.epoch_pairs` and `sample_pair_batches`, as `FDFOTrainer.sample_epoch`)."""
    pairs = epoch_pairs(backend, config, prompts, epoch)
    device = torch.device(backend.device)
    velocity = model_velocity(backend, config.cfg_scale, pairs.uncond, amp_dtype(config.precision, device),
                              check_cancel=check_interrupt)
    final_a, final_b = [], []
    for start, stop, roll in sample_pair_batches(velocity, pairs, config, epoch, device, record=False, on_step=on_step):
        b = stop - start
        final_a.append(roll.final[:b].float().cpu())
        final_b.append(roll.final[b:].float().cpu())
    return torch.cat(final_a + final_b), pairs.prompt_ids.tolist()


def difference_images(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
    """|a - b| (mean over channels) as grey images, scaled so the largest difference is white."""
    d = (a - b).abs().mean(dim=1, keepdim=True)
    peak = float(d.max())
    gain = 1.0 / peak if peak > 0 else 1.0
    return (d * gain).clamp(0, 1).expand(-1, 3, -1, -1), gain


def comparison_grid(a: torch.Tensor, b: torch.Tensor, rewards: torch.Tensor | None):
    """Rows = pairs; columns: image a, image b, their difference. Labels carry each image's reward
    and the pair's reward difference dR_a = (R_a - R_b) / 2 (what the update is weighted by)."""
    from ..fdfo_core.files.drawing import image_grid
    from .scoring_nodes import thumbnails

    n = a.shape[0]
    diff, gain = difference_images(a, b)
    tiles = torch.stack([thumbnails(a), thumbnails(b), thumbnails(diff)], dim=1).flatten(0, 1)
    labels = []
    for i in range(n):
        if rewards is not None:
            ra, rb = float(rewards[i]), float(rewards[n + i])
            labels += [f"a {ra:.4g}", f"b {rb:.4g}", f"dR {(ra - rb) / 2:+.3g}"]
        else:
            labels += [f"pair {i} a", f"pair {i} b", f"|a-b| x{gain:.3g}"]
    return image_grid(tiles, ncol=3, labels=labels)


class FDFOPairedSampler:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING", "FLOAT")
    RETURN_NAMES = ("images", "comparison", "report", "rewards")
    OUTPUT_IS_LIST = (False, False, False, True)
    OUTPUT_TOOLTIPS = (
        "All images, pair by pair: a0, b0, a1, b1, ...",
        "One row per pair: image a, image b, their difference; labelled with the rewards and the pair's reward difference dR.",
        "One line per pair: prompt, both rewards and dR.",
        "The reward of every image, in the order of 'images' (empty without a reward).",
    )
    FUNCTION = "sample"
    DESCRIPTION = (
        "Samples pairs exactly as the FDFO Trainer does: two images per prompt from one shared noise, re-noised "
        "slightly ('churn') so they differ a little. With a reward connected, shows each pair's reward difference: "
        "what the trainer learns from. Use it to pick a churn strength: pairs should differ visibly but stay similar."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A flow-matching model (SD3, SD3.5, Flux, the FDFO toy, ...)."}),
                "clip": ("CLIP", {"tooltip": "Its text encoder(s)."}),
                "vae": ("VAE", {"tooltip": "Its VAE."}),
                "prompts": (PROMPTS, {"tooltip": "The prompts; pairs walk through them in the trainer's random order."}),
                "pairs": ("INT", {"default": 4, "min": 1, "max": 4096, "tooltip": "How many pairs to sample."}),
                **sampling_inputs(),
            },
            "optional": {
                "reward": (REWARD, {"tooltip": "Optional: score both images of every pair."}),
                "epoch": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Which training epoch's pairs to reproduce (0 = the first)."}),
                "batch_size": ("INT", {"default": DEFAULTS.sample_batch_size, "min": 1, "max": 512, "tooltip": "Pairs per model call (memory only; results do not change)."}),
                **optional_sampling_inputs(),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, model, clip, vae, prompts, pairs, seed, steps, cfg, churn, churn_strength, width, height,
               reward=None, epoch=0, batch_size=DEFAULTS.sample_batch_size, negative_prompt="", scheduler="simple",
               flux_guidance=3.5, unique_id=None):
        from .comfy_backend import ComfyBackend
        from .scoring_nodes import score_images

        prompts = clean_prompts(prompts)
        config = FDFOConfig(
            pairs_per_epoch=pairs, num_steps=steps, cfg_scale=cfg, churn=churn, churn_strength=churn_strength,
            width=width, height=height, seed=seed, negative_prompt=negative_prompt, sample_batch_size=batch_size,
            optimizer_steps_per_epoch=1,
        ).validate()
        backend = ComfyBackend(model, clip, vae, config, scheduler=scheduler, flux_guidance=flux_guidance,
                               check_cancel=check_interrupt)
        progress = NodeProgress(math.ceil(pairs / batch_size) * steps + 1, node_id=unique_id)
        with backend.session(train=False):
            latents, prompt_idx = sample_epoch_pairs(backend, config, prompts, epoch,
                                                     on_step=lambda done, total: progress.update(done))
            images = torch.cat([backend.decode(latents[i:i + config.decode_batch_size].to(backend.device)).float().cpu()
                                for i in range(0, latents.shape[0], config.decode_batch_size)])
        pair_prompts = [prompts[i] for i in prompt_idx]
        rewards = score_images(reward, images, pair_prompts * 2) if reward is not None else None
        a, b = images[:pairs], images[pairs:]
        grid = comparison_grid(a, b, rewards)
        # No node preview: the comparison output is what a preview node shows (a preview here would
        # grow the node by an image area the workflow layout does not reserve).
        progress.update(progress.total, force=True)
        interleaved = torch.stack([a, b], dim=1).flatten(0, 1)
        lines, reward_list = [], []
        for i, p in enumerate(pair_prompts):
            if rewards is not None:
                ra, rb = float(rewards[i]), float(rewards[pairs + i])
                reward_list += [ra, rb]
                lines.append(f"pair {i}: R_a {ra:.4f}  R_b {rb:.4f}  dR {(ra - rb) / 2:+.4f}  {p}")
            else:
                lines.append(f"pair {i}: {p}")
        return (nchw_to_image(interleaved), pil_to_image(grid), "\n".join(lines), reward_list)


NODES = {"FDFOPairedSampler": (FDFOPairedSampler, "FDFO Paired Sampler")}
