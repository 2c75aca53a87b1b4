"""Building blocks shared by the example workflows (workflows/build_workflows.py): the toy preset's
Trainer values, the stock sampling chain, the Trainer's views, the toy's training block, and the
natural sizes of the images FDFO nodes show (from the nodes' own drawing code, so the layout fits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workflow_graph import Graph, Node, Out, import_nodepack


# --- the workflows -----------------------------------------------------------------------------------

TOY_PROMPT = "two red circles above a blue square on a yellow background"


def toy_cfg(preset: dict[str, Any]) -> float:
    """The toy preset's CFG scale (train and sample with the same one)."""
    from fdfo_core.config import FDFOConfig

    return float(preset.get("cfg_scale", FDFOConfig().cfg_scale))


def toy_trainer_values(preset: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The FDFO Trainer widgets and FDFO Training Options of the toy workflow: the library's "toy" preset."""
    p = preset
    trainer = dict(
        epochs=p["epochs"], pairs_per_epoch=p["pairs_per_epoch"], steps=p["num_steps"], cfg=toy_cfg(p), width=p["width"],
        height=p["height"], learning_rate=p["lr"], lora_rank=p["lora_rank"], lora_alpha=p["lora_alpha"],
        lora_name="fdfo_toy", resume=True,
    )
    options = dict(
        seed=0, churn="raw", churn_strength=p["churn_strength"], optimizer_steps_per_epoch=p["optimizer_steps_per_epoch"],
        checkpoint_every=p["checkpoint_every"], sample_batch_size=p["sample_batch_size"],
        train_batch_size=p["train_batch_size"], decode_batch_size=p["decode_batch_size"], preview_count=8,
    )
    return trainer, options


@dataclass
class Sampling:
    """The stock sampling chain: prompt, negative prompt, (Flux guidance,) empty latent, KSampler,
    VAE Decode, Save Image."""

    prompt: Node
    negative: Node
    guidance: Node | None
    latent: Node
    sampler: Node
    decode: Node
    save: Node


def sample_with(g: Graph, model: Out, clip: Out, vae: Out, prompt: str, width: int, height: int, steps: int,
                cfg: float, prefix: str, batch: int = 4, guidance: float | None = None, min_scale: float = 1.0) -> Sampling:
    pos = g.add("CLIPTextEncode", "prompt", text=prompt, clip=clip)
    neg = g.add("CLIPTextEncode", "negative prompt (unused at cfg 1)", text="", clip=clip)
    positive, flux = pos["CONDITIONING"], None
    if guidance is not None:
        flux = g.add("FluxGuidance", guidance=guidance, conditioning=positive)
        positive = flux["CONDITIONING"]
    latent = g.add("EmptySD3LatentImage", width=width, height=height, batch_size=batch)
    ks = g.add("KSampler", model=model, seed=0, steps=steps, cfg=cfg, sampler_name="euler",
               scheduler="simple", positive=positive, negative=neg["CONDITIONING"], latent_image=latent["LATENT"], denoise=1.0)
    images = g.add("VAEDecode", samples=ks["LATENT"], vae=vae)
    save = g.add("SaveImage", filename_prefix=prefix, images=images["IMAGE"])
    g.shows(save, [(width, height)] * batch, min_scale=min_scale)
    return Sampling(pos, neg, flux, latent, ks, images, save)


# --- what the nodes will show: natural image sizes, from the nodes' own drawing code ---------------


def _nodes_module(name: str):
    import importlib

    return importlib.import_module(f"{import_nodepack().__name__}.nodes.{name}")


def trainer_image_sizes(preview_count: int, width: int, height: int) -> dict[str, tuple[int, int]]:
    """The Trainer's live image (epoch line + preview grid), its `preview` output (base vs trained)
    and its `reward_curve` output, for these settings."""
    import torch

    tn = _nodes_module("trainer_views")
    images = torch.zeros(preview_count, 3, height, width)
    grid, panel = tn.display_grid(images), tn.display_grid(images, tn.PANEL_TILE_MAX)
    return {"panel": tn.live_panel(panel, tn.LONGEST_EPOCH_LINE).size,
            "comparison": tn.comparison_image(grid, grid, "name (epoch 100)").size, "curve": tuple(tn.REWARD_CURVE_SIZE)}


def pairs_grid_size(pairs: int, width: int, height: int) -> tuple[int, int]:
    """The Paired Sampler's `comparison` output."""
    import torch

    sn = _nodes_module("sampler_nodes")
    x = torch.zeros(pairs, 3, height, width)
    return sn.comparison_grid(x, x, torch.zeros(2 * pairs)).size


def score_grid_size(n: int, width: int, height: int, columns: int) -> tuple[int, int]:
    """FDFO Score Images' `grid` output."""
    from fdfo_core.files.drawing import image_grid

    import torch

    rn = _nodes_module("scoring_nodes")
    return image_grid(rn.thumbnails(torch.zeros(n, 3, height, width)), ncol=columns, labels=["0"] * n, label_height=14).size


def trainer_with_views(g: Graph, trainer: Node, preview_count: int, width: int, height: int, prefix: str) -> tuple[Node, Node]:
    """The Trainer's live image, and preview nodes for its reward curve and base-vs-trained outputs."""
    sizes = trainer_image_sizes(preview_count, width, height)
    g.shows(trainer, [sizes["panel"]], progress_text=True)
    curve = g.shows(g.add("PreviewImage", "reward curve (updates every epoch)", images=trainer["reward_curve"]), [sizes["curve"]])
    compare = g.shows(g.add("SaveImage", "base vs trained (updates every epoch)", filename_prefix=prefix,
                            images=trainer["preview"]), [sizes["comparison"]])
    return curve, compare


def toy_training(g: Graph, toy: dict[str, Any], loader: Node, prompts: Node, reward: Node, name: str,
                 **changes) -> tuple[Node, Node, Node, Node, Sampling]:
    """The toy templates' training block: FDFO Training Options (toy preset) and the Trainer (a
    change goes to the Trainer when it is one of its widgets, else to the options), the Trainer's
    views, and the trained model's sampling chain. `name` is the output prefix."""
    trainer_values, option_values = toy_trainer_values(toy)
    for key, value in changes.items():
        (trainer_values if key in trainer_values else option_values)[key] = value
    options = g.add("FDFOTrainingOptions", "FDFO Training Options (toy preset)", **option_values)
    trainer = g.add("FDFOTrainerV2", model=loader["model"], clip=loader["clip"], vae=loader["vae"],
                    reward=reward["reward"], prompts=prompts["prompts"], options=options["options"], **trainer_values)
    curve, compare = trainer_with_views(g, trainer, option_values["preview_count"], toy["width"], toy["height"],
                                        f"{name}/preview")
    s = sample_with(g, trainer["model"], loader["clip"], loader["vae"], TOY_PROMPT, toy["width"], toy["height"],
                    toy["num_steps"], toy_cfg(toy), f"{name}/trained")
    s.save.title = "trained model: sampled images"
    return options, trainer, curve, compare, s
