"""Build the example workflows from one Python description each, in both formats.

    python workflows/build_workflows.py                  # FDFO nodes from this checkout + workflows/reference/stock_object_info.json
    python workflows/build_workflows.py --object-info http://127.0.0.1:8188   # refresh the stock nodes from a ComfyUI
    python workflows/build_workflows.py --check          # exit 1 if a file is out of date

Writes, for every workflow:
- example_workflows/<name>.json  UI format (what people drag in; ComfyUI serves it as a template);
- workflows/ui/<name>.json       the same, canonical copy;
- workflows/api/<name>.json      API format (POST /prompt), used by the tests.
and workflows/reference/stock_object_info.json: the definitions (inputs, widget order, outputs) of the stock
ComfyUI nodes the workflows use, so the tests can convert UI to API format without a ComfyUI.
The FDFO nodes' definitions always come from this checkout's classes.

This module holds the templates (one `wf_*` function each) and the command; the graph model and
the two formats are in workflow_graph.py, the blocks several templates share in workflow_blocks.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

# The sibling modules import each other by name: this file runs as a script and is also loaded by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_blocks import (  # noqa: E402
    TOY_PROMPT, Sampling, pairs_grid_size, sample_with, score_grid_size, toy_cfg, toy_trainer_values, toy_training,
    trainer_with_views,
)
from workflow_graph import GAP, REPO, STOCK_INFO, VIRTUAL_NODES, Graph, Node, combined_object_info, import_nodepack  # noqa: E402

# Read from this module by the tests (tests/test_workflows.py), with the templates.
from workflow_blocks import trainer_image_sizes  # noqa: E402,F401
from workflow_graph import IMAGE_SIZE_TEXT, TITLE_HEIGHT, images_box  # noqa: E402,F401


# --- the workflows -----------------------------------------------------------------------------------

SD35_CKPT = "sd3.5_medium.safetensors"
SD35_CLIPS = ("clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors")
SD35_PROMPTS = "\n".join([
    "a photo of a red fox curled up in fresh snow, morning light",
    "a watercolour painting of a lighthouse on a cliff at dusk",
    "a bowl of ramen on a wooden table, steam rising, close-up",
    "an astronaut riding a horse across a desert, cinematic",
    "a cosy reading nook with a cat asleep on a pile of books",
    "a futuristic city skyline at night in the rain, neon reflections",
    "# add your own prompts here, one per line (or choose a .txt file from ComfyUI/input)",
])


def wf_toy(info: dict[str, Any]) -> Graph:
    from fdfo_core.config import PRESETS

    toy = PRESETS["toy"]
    g = Graph("fdfo_toy", info, zoom=0.63)
    note = g.note(
        "FDFO on the bundled toy model: a few minutes on a CPU. Press Run.\n\n"
        "- FDFO Paired Sampler: pairs of similar images and their reward difference, what the trainer learns from.\n"
        "- FDFO Trainer (toy preset; the rest of its settings are in FDFO Training Options): the epoch line, time "
        "left and the latest preview grid show on the node; the reward curve and base vs trained update every "
        "epoch. The LoRA goes to models/loras/fdfo_toy.safetensors, the run to output/fdfo/fdfo_toy/.\n"
        "- The trained model samples straight away (right).\n\n"
        "Queue again with more epochs to continue the run (resume on). Cancel keeps the LoRA trained so far.",
        height=250,
    )
    loader = g.add("FDFOToyModelLoader")
    prompts = g.add("FDFOToyPrompts", count=256, split="train", seed=0)
    reward = g.add("FDFOToyAlignmentReward")
    pairs = g.add("FDFOPairedSampler", model=loader["model"], clip=loader["clip"], vae=loader["vae"],
                  prompts=prompts["prompts"], reward=reward["reward"], pairs=4, seed=0, steps=toy["num_steps"], cfg=toy_cfg(toy),
                  churn="raw", churn_strength=toy["churn_strength"], width=toy["width"], height=toy["height"])
    trainer_values, option_values = toy_trainer_values(toy)
    options = g.add("FDFOTrainingOptions", "FDFO Training Options (toy preset)", **option_values)
    trainer = g.add("FDFOTrainerV2", model=loader["model"], clip=loader["clip"], vae=loader["vae"],
                    reward=reward["reward"], prompts=prompts["prompts"], options=options["options"], **trainer_values)
    pairs_view = g.shows(g.add("PreviewImage", "pairs and their reward difference", images=pairs["comparison"]),
                         [pairs_grid_size(4, toy["width"], toy["height"])])
    curve, compare = trainer_with_views(g, trainer, option_values["preview_count"], toy["width"], toy["height"], "fdfo_toy/preview")
    s = sample_with(g, trainer["model"], loader["clip"], loader["vae"], TOY_PROMPT, toy["width"], toy["height"],
                    toy["num_steps"], toy_cfg(toy), "fdfo_toy/trained")
    s.save.title = "trained model: sampled images"
    g.column(0, 300, [loader, prompts, reward, options])
    g.column(320, 540, [trainer, note])
    g.column(880, 300, [pairs, pairs_view, (s.prompt, 100), s.negative])
    g.column(1200, 540, [curve, compare])
    # The sampled images top right: the front end's minimap and zoom buttons sit in the bottom-right corner.
    g.column(1760, 300, [s.sampler, s.decode, s.save, s.latent])
    return g


def _sd35_loaders(g: Graph) -> tuple[Node, Node]:
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=SD35_CKPT)
    clip = g.add("TripleCLIPLoader", clip_name1=SD35_CLIPS[0], clip_name2=SD35_CLIPS[1], clip_name3=SD35_CLIPS[2])
    return ckpt, clip


def _published_trainer(lora_name: str, quick: bool = False, **changes) -> dict[str, Any]:
    from fdfo_core.config import FDFOConfig

    d = FDFOConfig()
    values = dict(
        epochs=d.epochs, pairs_per_epoch=d.pairs_per_epoch, steps=d.num_steps, cfg=d.cfg_scale, width=d.width,
        height=d.height, learning_rate=d.lr, lora_rank=d.lora_rank, lora_alpha=d.lora_alpha, lora_name=lora_name, resume=True,
    )
    values.update(changes)
    if quick:
        values.update(QUICK, steps=min(values["steps"], QUICK_MAX_STEPS), lora_name=f"{lora_name}_quick")
    return values


#: The quick variant of every real-model template (`<name>_quick`; docs/comfyui.md, "Quick variants"):
#: 16 epochs x 64 pairs at 20 steps (or the template's own steps when fewer), which is 1/84 of the
#: published recipe's 100 x 432 x 40 model passes (1/42 to 1/59 for the templates that already
#: sample fewer steps), at twice the published learning rate. Over 16 x 4
#: optimizer steps that moves the LoRA as far as the published rate does in its first 32 epochs; the
#: toy's early-budget sweep (docs/benchmarks/early_rate.md) found every step 3.3x or more above its
#: long-run rate worse on every seed, so the rate is raised only 2x.
QUICK = dict(epochs=16, pairs_per_epoch=64, learning_rate=6e-5)
QUICK_MAX_STEPS = 20
#: Held-out evaluation and checkpoints every 4 of the 16 epochs.
QUICK_OPTIONS = dict(eval_every=4, checkpoint_every=4)
#: The extra height of a quick variant's note (its label).
QUICK_NOTE_HEIGHT = 90


def quick_note(full: str, values: dict[str, Any], full_steps: int) -> str:
    from fdfo_core.config import FDFOConfig

    d = FDFOConfig()
    share = (d.epochs * d.pairs_per_epoch * full_steps) / (values["epochs"] * values["pairs_per_epoch"] * values["steps"])
    return (f"QUICK VARIANT: a first result the same afternoon. {values['epochs']} epochs x {values['pairs_per_epoch']} "
            f"pairs x {values['steps']} steps, lr {values['learning_rate']:g}: about 1/{share:.0f} of the model passes of "
            f"{full}, the published recipe. The Trainer shows its expected time before the first epoch.\n\n")


def _variant(g_name: str, quick: bool) -> str:
    return f"{g_name}_quick" if quick else g_name


def _zoom(zoom: float, quick: bool) -> float:
    """A quick variant's note is taller by its label: the template opens a little further out."""
    return round(zoom * 0.94, 2) if quick else zoom


#: Images sampled at the end of the big-model workflows show at half size at least (512 px -> 256).
SAMPLE_MIN_SCALE = 0.5


def wf_sd35_pickscore(info: dict[str, Any], quick: bool = False) -> Graph:
    g = Graph(_variant("fdfo_sd35_pickscore", quick), info, zoom=_zoom(0.63, quick))
    values = _published_trainer("sd35m_pickscore", quick=quick)
    note = g.note(
        (quick_note("fdfo_sd35_pickscore", values, 40) if quick else "")
        + "SD3.5 Medium + PickScore with the published FDFO recipe (100 epochs x 432 pairs, 40 steps, no CFG, 512 px, "
        "LoRA rank 32 / alpha 64, lr 3e-5). About 12 h on 4 H200 in the paper; lower epochs / pairs_per_epoch to try it.\n\n"
        f"Files: models/checkpoints/{SD35_CKPT}; models/clip/{', '.join(SD35_CLIPS)}; PickScore weights in "
        "models/fdfo_rewards/pickscore/ and the CLIP-H tokenizer in models/fdfo_rewards/CLIP-ViT-H-14-laion2B-s32B-b79K/ "
        "(fetch_missing_weights on the reward node downloads them; see docs/rewards.md). 24 GB: in FDFO Training Options "
        "set storage_device to cpu (done here) and gradient_checkpointing on.",
        height=250 + (QUICK_NOTE_HEIGHT if quick else 0),
    )
    ckpt, clip = _sd35_loaders(g)
    prompts = g.add("FDFOPromptList", text=SD35_PROMPTS)
    reward = g.add("FDFOPickScoreReward")
    options = g.add("FDFOTrainingOptions", storage_device="cpu", **(QUICK_OPTIONS if quick else {}))
    trainer = g.add("FDFOTrainerV2", model=ckpt["MODEL"], clip=clip["CLIP"], vae=ckpt["VAE"], reward=reward["reward"],
                    prompts=prompts["prompts"], options=options["options"], **values)
    curve, compare = trainer_with_views(g, trainer, 4, values["width"], values["height"], _variant("fdfo_sd35", quick) + "/preview")
    s = sample_with(g, trainer["model"], clip["CLIP"], ckpt["VAE"], "a photo of a red fox curled up in fresh snow, morning light",
                    512, 512, values["steps"], 1.0, _variant("fdfo_sd35", quick) + "/pickscore", batch=1,
                    min_scale=SAMPLE_MIN_SCALE)
    _big_model_layout(g, [ckpt, clip, (prompts, 200), reward], options, trainer, note, curve, compare, s)
    return g


def _big_model_layout(g: Graph, inputs: list, options: Node, trainer: Node, note: Node, curve: Node, compare: Node,
                      s: Sampling, extra: list | None = None) -> None:
    """Loaders, prompts and rewards on the left, then the options, the trainer (its note under it),
    its outputs next to it, and the sampling chain of the trained model on the right."""
    g.column(0, 300, inputs)
    g.column(320, 300, [options] + (extra or []) + ([s.guidance] if s.guidance else []))
    g.column(640, 440, [trainer, note])
    right = max(g.column(1100, 540, [curve, compare]) and n.pos[0] + n.size[0] for n in (curve, compare))
    g.column(right + GAP, 300, [(s.prompt, 100), s.negative, s.latent, s.sampler, s.decode, s.save])


def wf_sd35_vlm(info: dict[str, Any], quick: bool = False) -> Graph:
    from fdfo_core.rewards.vlm import DEFAULT_QUESTION

    g = Graph(_variant("fdfo_sd35_vlm", quick), info, zoom=_zoom(0.63, quick))
    values = _published_trainer("sd35m_pickscore_vlm", quick=quick)
    note = g.note(
        (quick_note("fdfo_sd35_vlm", values, 40) if quick else "")
        + "SD3.5 Medium + a VLM yes/no question, combined with PickScore as in the FDFO paper: "
        "PickScore + 0.1 x VLM alignment (Qwen2.5-VL-7B asked whether the image matches the caption).\n\n"
        "Edit the question (use {prompt} for the image's prompt), e.g. 'Is this image of professional quality? "
        "Answer with Yes or No.'. VLM weights: models/fdfo_rewards/vlm/ (about 17 GB in bf16; the 3B model needs ~8 GB; "
        "set the VLM's device to cpu to keep VRAM for training, at a large cost in speed).",
        height=250 + (QUICK_NOTE_HEIGHT if quick else 0),
    )
    ckpt, clip = _sd35_loaders(g)
    prompts = g.add("FDFOPromptList", text=SD35_PROMPTS)
    pick = g.add("FDFOPickScoreReward")
    vlm = g.add("FDFOVLMReward", question=DEFAULT_QUESTION)
    combined = g.add("FDFOCombineRewards", reward_1=pick["reward"], weight_1=1.0, reward_2=vlm["reward"], weight_2=0.1)
    options = g.add("FDFOTrainingOptions", storage_device="cpu", **(QUICK_OPTIONS if quick else {}))
    trainer = g.add("FDFOTrainerV2", model=ckpt["MODEL"], clip=clip["CLIP"], vae=ckpt["VAE"], reward=combined["reward"],
                    prompts=prompts["prompts"], options=options["options"], **values)
    prefix = _variant("fdfo_sd35_vlm", quick)
    curve, compare = trainer_with_views(g, trainer, 4, values["width"], values["height"], f"{prefix}/preview")
    s = sample_with(g, trainer["model"], clip["CLIP"], ckpt["VAE"], "a watercolour painting of a lighthouse on a cliff at dusk",
                    512, 512, values["steps"], 1.0, f"{prefix}/trained", batch=1, min_scale=SAMPLE_MIN_SCALE)
    _big_model_layout(g, [ckpt, clip, (prompts, 200), pick, vlm], options, trainer, note, curve, compare, s, extra=[combined])
    return g


def wf_flux_aesthetic(info: dict[str, Any], quick: bool = False) -> Graph:
    from fdfo_core.config import PRESETS

    g = Graph(_variant("fdfo_flux_aesthetic", quick), info, zoom=_zoom(0.63, quick))
    flux = PRESETS["flux"]
    values = _published_trainer("flux_aesthetic", quick=quick, steps=flux["num_steps"], width=512, height=512)
    note = g.note(
        (quick_note("fdfo_flux_aesthetic", values, flux["num_steps"]) if quick else "")
        + "Flux.1 dev + the LAION aesthetic predictor. Flux is trained in fp8 here (weight_dtype fp8_e4m3fn; the LoRA "
        f"itself is fp32) at 512 px with {flux['num_steps']} steps, gradient checkpointing and CPU storage of the "
        "recorded states (FDFO Training Options), to fit 24 GB; use 1024 px (Flux's native size) with 48 GB or more.\n\n"
        "Files: models/diffusion_models/flux1-dev.safetensors, models/clip/clip_l.safetensors and t5xxl_fp16.safetensors, "
        "models/vae/ae.safetensors; aesthetic head in models/fdfo_rewards/aesthetic/ and CLIP ViT-L/14 in "
        "models/fdfo_rewards/clip-vit-large-patch14/. Flux dev needs no CFG: guidance 3.5 goes in as flux_guidance.",
        height=250 + (QUICK_NOTE_HEIGHT if quick else 0),
    )
    unet = g.add("UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="fp8_e4m3fn")
    clip = g.add("DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux")
    vae = g.add("VAELoader", vae_name="ae.safetensors")
    prompts = g.add("FDFOPromptList", text=SD35_PROMPTS)
    reward = g.add("FDFOAestheticReward")
    options = g.add("FDFOTrainingOptions", storage_device="cpu", gradient_checkpointing=True, flux_guidance=3.5,
                    **(QUICK_OPTIONS if quick else {}))
    trainer = g.add("FDFOTrainerV2", model=unet["MODEL"], clip=clip["CLIP"], vae=vae["VAE"], reward=reward["reward"],
                    prompts=prompts["prompts"], options=options["options"], **values)
    prefix = _variant("fdfo_flux", quick)
    curve, compare = trainer_with_views(g, trainer, 4, values["width"], values["height"], f"{prefix}/preview")
    s = sample_with(g, trainer["model"], clip["CLIP"], vae["VAE"], "a cosy reading nook with a cat asleep on a pile of books",
                    512, 512, values["steps"], 1.0, f"{prefix}/trained", batch=1, guidance=3.5, min_scale=SAMPLE_MIN_SCALE)
    _big_model_layout(g, [unet, clip, vae, (prompts, 200), reward], options, trainer, note, curve, compare, s)
    return g


#: The toy's "style": its own scenes multiplied by a warm orange (ImageBlend, multiply), 0xFFCC8C.
TOY_STYLE_COLOR = 0xFFCC8C
STYLE_FOLDER = "my_style"
STYLE_NOTE = (
    "Put 5 to 50 images of the style in ComfyUI/input/{folder}/ (PNG, JPEG, WebP; any sizes), then refresh the page "
    "so the folder appears in FDFO Reference Style Reward (or connect Load Image nodes to its images input).\n\n"
    "encoder: csd is the CSD style descriptor (Somepalli et al. 2024: models/fdfo_rewards/csd/model.safetensors from "
    "tomg-group-umd/CSD-ViT-L), clip is CLIP ViT-L/14, dinov2 and siglip work too. Content guard: prompt_weight 0.5 "
    "adds CLIP score with each prompt so the subjects follow your prompts, and content_captions lists what the "
    "references show (one per line) so it is not copied; both use CLIP ViT-L/14 (models/fdfo_rewards/"
    "clip-vit-large-patch14/). See docs/rewards.md, 'reference'."
)


def wf_toy_style(info: dict[str, Any]) -> Graph:
    from fdfo_core.config import PRESETS

    toy = PRESETS["toy"]
    g = Graph("fdfo_toy_style_reference", info, zoom=0.58)
    note = g.note(
        "Style from reference images, on the toy model (CPU, minutes). Press Run.\n\n"
        "The references are made here so the workflow runs as it is: toy scenes from a KSampler, multiplied by a warm "
        "orange (Empty Image + Image Blend, multiply). FDFO Reference Style Reward scores every training image by its "
        "closeness to them in CLIP ViT-L/14's space (weights: models/fdfo_rewards/clip-vit-large-patch14/, see "
        "docs/rewards.md), and the trainer pulls the toy towards that warm look while the prompts keep deciding the "
        "shapes. For your own style, replace the reference branch with Load Image nodes or choose a folder of images in "
        "ComfyUI/input.",
        height=250,
    )
    loader = g.add("FDFOToyModelLoader")
    prompts = g.add("FDFOToyPrompts", count=256, split="train", seed=0)
    ref_prompt = g.add("CLIPTextEncode", "reference scenes", text=TOY_PROMPT, clip=loader["clip"])
    ref_neg = g.add("CLIPTextEncode", "negative prompt (unused at cfg 1)", text="", clip=loader["clip"])
    ref_latent = g.add("EmptySD3LatentImage", width=toy["width"], height=toy["height"], batch_size=8)
    ref_ks = g.add("KSampler", "reference scenes", model=loader["model"], seed=12345, steps=toy["num_steps"],
                   cfg=toy_cfg(toy), sampler_name="euler", scheduler="simple", positive=ref_prompt["CONDITIONING"],
                   negative=ref_neg["CONDITIONING"], latent_image=ref_latent["LATENT"], denoise=1.0)
    scenes = g.add("VAEDecode", samples=ref_ks["LATENT"], vae=loader["vae"])
    orange = g.add("EmptyImage", "the style's colour", width=toy["width"], height=toy["height"], batch_size=1,
                   color=TOY_STYLE_COLOR)
    refs = g.add("ImageBlend", "references: warm-tinted scenes", image1=scenes["IMAGE"], image2=orange["IMAGE"],
                 blend_factor=1.0, blend_mode="multiply")
    refs_view = g.shows(g.add("PreviewImage", "the references", images=refs["IMAGE"]), [(toy["width"], toy["height"])] * 8)
    reward = g.add("FDFOReferenceStyleReward", images=refs["IMAGE"], encoder="clip", aggregation="mean_embedding")
    options, trainer, curve, compare, s = toy_training(g, toy, loader, prompts, reward, "fdfo_toy_style",
                                                       lora_name="fdfo_toy_style")
    g.column(0, 300, [loader, prompts, (ref_prompt, 100), ref_neg, ref_latent])
    g.column(320, 300, [ref_ks, scenes, orange, refs, refs_view])
    g.column(640, 300, [reward, options])
    g.column(960, 540, [trainer, note])
    g.column(1520, 540, [curve, compare])
    # The sampled images top right: the front end's minimap and zoom buttons sit in the bottom-right corner.
    g.column(2080, 300, [s.sampler, s.decode, s.save, (s.prompt, 100), s.negative, s.latent])
    return g


#: Train by picking on the toy: 8 epochs of 16 pairs on 4 prompts (the browser test's scripted artist moves
#: the held-out images toward its rule with exactly these settings); picking 16 pairs takes under a minute.
TOY_PICKS = dict(epochs=8, pairs_per_epoch=16, learning_rate=1e-3, checkpoint_every=4, lora_name="fdfo_toy_picks",
                 preview_count=4)
TOY_PICKS_PROMPTS = 4


def wf_toy_picks(info: dict[str, Any]) -> Graph:
    from fdfo_core.config import PRESETS

    toy = PRESETS["toy"]
    g = Graph("fdfo_toy_picks", info, zoom=0.66)
    note = g.note(
        "Train by picking, on the toy model (CPU).\n\n"
        "Queue it: every epoch the FDFO picking panel opens over the canvas with pairs of similar images. Press 1 if "
        "the left one is better, 2 for the right one, space if they are the same, s to skip; Backspace goes back to "
        "correct a pick. Your pick is the pair's reward difference, and the trainer moves the model toward what you "
        "prefer (pick a style consistently: warmer, darker, busier...). 4 prompts so a few picks show an effect; "
        "raise FDFO Toy Prompts' count for a model that generalises. Every click is saved at once in "
        "output/fdfo/fdfo_toy_picks/picks.jsonl; Cancel keeps the LoRA trained so far and the picks, and queueing again "
        "resumes.\n\n"
        "Mixed mode: set human_pairs_per_epoch to pick only the first pairs of each epoch and unpicked to 'preference "
        "model': a Bradley-Terry model on CLIP image embeddings (models/fdfo_rewards/clip-vit-large-patch14/), refitted "
        "on your picks every epoch, scores the rest. The picks also train an FDFO Preference Reward for later runs.",
        height=260,
    )
    loader = g.add("FDFOToyModelLoader")
    prompts = g.add("FDFOToyPrompts", count=TOY_PICKS_PROMPTS, split="train", seed=0)
    reward = g.add("FDFOHumanPicksReward")
    options, trainer, curve, compare, s = toy_training(g, toy, loader, prompts, reward, "fdfo_toy_picks", **TOY_PICKS)
    g.column(0, 300, [loader, prompts, options])
    g.column(320, 540, [trainer, note])
    g.column(880, 540, [reward, curve, compare])
    # The sampled images top right: the front end's minimap and zoom buttons sit in the bottom-right corner.
    g.column(1440, 300, [s.sampler, s.decode, s.save, (s.prompt, 100), s.negative, s.latent])
    return g


def _style_reward(g: Graph) -> Node:
    return g.add("FDFOReferenceStyleReward", folder=STYLE_FOLDER, encoder="csd", aggregation="topk", top_k=3,
                 prompt_weight=0.5)


def wf_sd35_style(info: dict[str, Any], quick: bool = False) -> Graph:
    g = Graph(_variant("fdfo_sd35_style_reference", quick), info, zoom=_zoom(0.63, quick))
    values = _published_trainer("sd35m_style", quick=quick)
    note = g.note((quick_note("fdfo_sd35_style_reference", values, 40) if quick else "")
                  + "SD3.5 Medium learns a style from reference images (the published FDFO recipe; lower epochs / "
                  "pairs_per_epoch to try it).\n\n" + STYLE_NOTE.format(folder=STYLE_FOLDER)
                  + f"\n\nModel files: models/checkpoints/{SD35_CKPT}; models/clip/{', '.join(SD35_CLIPS)}. 24 GB: "
                  "storage_device cpu (done here) and gradient_checkpointing on, in FDFO Training Options.",
                  height=330 + (QUICK_NOTE_HEIGHT if quick else 0))
    ckpt, clip = _sd35_loaders(g)
    prompts = g.add("FDFOPromptList", text=SD35_PROMPTS)
    reward = _style_reward(g)
    options = g.add("FDFOTrainingOptions", storage_device="cpu", **(QUICK_OPTIONS if quick else {}))
    trainer = g.add("FDFOTrainerV2", model=ckpt["MODEL"], clip=clip["CLIP"], vae=ckpt["VAE"], reward=reward["reward"],
                    prompts=prompts["prompts"], options=options["options"], **values)
    prefix = _variant("fdfo_sd35_style", quick)
    curve, compare = trainer_with_views(g, trainer, 4, values["width"], values["height"], f"{prefix}/preview")
    s = sample_with(g, trainer["model"], clip["CLIP"], ckpt["VAE"], "a watercolour painting of a lighthouse on a cliff at dusk",
                    512, 512, values["steps"], 1.0, f"{prefix}/trained", batch=1, min_scale=SAMPLE_MIN_SCALE)
    _big_model_layout(g, [ckpt, clip, (prompts, 200), reward], options, trainer, note, curve, compare, s)
    return g


def wf_flux_style(info: dict[str, Any], quick: bool = False) -> Graph:
    from fdfo_core.config import PRESETS

    flux = PRESETS["flux"]
    g = Graph(_variant("fdfo_flux_style_reference", quick), info, zoom=_zoom(0.63, quick))
    values = _published_trainer("flux_style", quick=quick, steps=flux["num_steps"], width=512, height=512)
    note = g.note((quick_note("fdfo_flux_style_reference", values, flux["num_steps"]) if quick else "") + "Flux.1 dev learns a style from reference images (fp8 weights, 512 px, CPU storage and gradient "
                  "checkpointing in FDFO Training Options to fit 24 GB, as in the Flux aesthetic workflow).\n\n"
                  + STYLE_NOTE.format(folder=STYLE_FOLDER)
                  + "\n\nModel files: models/diffusion_models/flux1-dev.safetensors, models/clip/clip_l.safetensors and "
                  "t5xxl_fp16.safetensors, models/vae/ae.safetensors.", height=330 + (QUICK_NOTE_HEIGHT if quick else 0))
    unet = g.add("UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="fp8_e4m3fn")
    clip = g.add("DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux")
    vae = g.add("VAELoader", vae_name="ae.safetensors")
    prompts = g.add("FDFOPromptList", text=SD35_PROMPTS)
    reward = _style_reward(g)
    options = g.add("FDFOTrainingOptions", storage_device="cpu", gradient_checkpointing=True, flux_guidance=3.5,
                    **(QUICK_OPTIONS if quick else {}))
    trainer = g.add("FDFOTrainerV2", model=unet["MODEL"], clip=clip["CLIP"], vae=vae["VAE"], reward=reward["reward"],
                    prompts=prompts["prompts"], options=options["options"], **values)
    prefix = _variant("fdfo_flux_style", quick)
    curve, compare = trainer_with_views(g, trainer, 4, values["width"], values["height"], f"{prefix}/preview")
    s = sample_with(g, trainer["model"], clip["CLIP"], vae["VAE"], "a cosy reading nook with a cat asleep on a pile of books",
                    512, 512, values["steps"], 1.0, f"{prefix}/trained", batch=1, guidance=3.5,
                    min_scale=SAMPLE_MIN_SCALE)
    _big_model_layout(g, [unet, clip, vae, (prompts, 200), reward], options, trainer, note, curve, compare, s)
    return g


#: Qwen-Image as ComfyUI's own Qwen-Image template loads it (file names of Comfy-Org/Qwen-Image_ComfyUI),
#: with that template's sampling: AuraFlow-style shift 3.1, 20 steps, CFG 2.5.
QWEN_UNET, QWEN_TEXT_ENCODER, QWEN_VAE = ("qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                                          "qwen_image_vae.safetensors")
QWEN_SHIFT, QWEN_STEPS, QWEN_CFG = 3.1, 20, 2.5


def wf_qwen_style(info: dict[str, Any], quick: bool = False) -> Graph:
    g = Graph(_variant("fdfo_qwen_image_style_reference", quick), info, zoom=_zoom(0.62, quick))
    values = _published_trainer("qwen_image_style", quick=quick, steps=QWEN_STEPS, cfg=QWEN_CFG, width=512, height=512)
    note = g.note((quick_note("fdfo_qwen_image_style_reference", values, QWEN_STEPS) if quick else "") + "Qwen-Image (20 B) learns a style from reference images: fp8 weights, 512 px, CPU storage and "
                  "gradient checkpointing in FDFO Training Options, about 40 GB of VRAM (see docs/memory.md; "
                  "set vram_gb there to let FDFO choose for your card). Sampling as ComfyUI's Qwen-Image template: "
                  f"shift {QWEN_SHIFT}, {QWEN_STEPS} steps, CFG {QWEN_CFG} (CFG doubles the passes; cfg 1 halves the "
                  "time at some cost in quality).\n\n" + STYLE_NOTE.format(folder=STYLE_FOLDER)
                  + f"\n\nModel files: models/diffusion_models/{QWEN_UNET}, models/text_encoders/{QWEN_TEXT_ENCODER}, "
                  f"models/vae/{QWEN_VAE}.", height=360 + (QUICK_NOTE_HEIGHT if quick else 0))
    unet = g.add("UNETLoader", unet_name=QWEN_UNET, weight_dtype="default")
    shift = g.add("ModelSamplingAuraFlow", "shift (ComfyUI's Qwen-Image value)", model=unet["MODEL"],
                  shift=QWEN_SHIFT)
    clip = g.add("CLIPLoader", clip_name=QWEN_TEXT_ENCODER, type="qwen_image")
    vae = g.add("VAELoader", vae_name=QWEN_VAE)
    prompts = g.add("FDFOPromptList", text=SD35_PROMPTS)
    reward = _style_reward(g)
    options = g.add("FDFOTrainingOptions", storage_device="cpu", gradient_checkpointing=True,
                    **(QUICK_OPTIONS if quick else {}))
    trainer = g.add("FDFOTrainerV2", model=shift["MODEL"], clip=clip["CLIP"], vae=vae["VAE"], reward=reward["reward"],
                    prompts=prompts["prompts"], options=options["options"], **values)
    prefix = _variant("fdfo_qwen_image_style", quick)
    curve, compare = trainer_with_views(g, trainer, 4, values["width"], values["height"], f"{prefix}/preview")
    s = sample_with(g, trainer["model"], clip["CLIP"], vae["VAE"], "a watercolour painting of a lighthouse on a cliff at dusk",
                    512, 512, values["steps"], QWEN_CFG, f"{prefix}/trained", batch=1, min_scale=SAMPLE_MIN_SCALE)
    _big_model_layout(g, [unet, shift, clip, vae, (prompts, 200), reward], options, trainer, note, curve, compare, s)
    return g


def wf_compare(info: dict[str, Any]) -> Graph:
    from fdfo_core.config import PRESETS

    toy = PRESETS["toy"]
    g = Graph("fdfo_base_vs_lora", info, zoom=0.75)
    note = g.note(
        "Base model vs trained LoRA, same prompt and seeds, scored with the reward. Run the toy workflow first: it "
        "saves models/loras/fdfo_toy.safetensors. For your own models swap the loader, the LoRA file and the reward; "
        "sample with the settings you trained with (steps, cfg, scheduler).",
        height=150,
    )
    loader = g.add("FDFOToyModelLoader")
    lora = g.add("LoraLoaderModelOnly", model=loader["model"], lora_name="fdfo_toy.safetensors", strength_model=1.0)
    pos = g.add("CLIPTextEncode", "prompt", text=TOY_PROMPT, clip=loader["clip"])
    neg = g.add("CLIPTextEncode", "negative prompt (unused at cfg 1)", text="", clip=loader["clip"])
    latent = g.add("EmptySD3LatentImage", width=toy["width"], height=toy["height"], batch_size=4)
    samplers, decodes, saves, outs = [], [], [], {}
    for label, model in (("base", loader["model"]), ("lora", lora["MODEL"])):
        ks = g.add("KSampler", f"KSampler ({label})", model=model, seed=0, steps=toy["num_steps"], cfg=toy_cfg(toy),
                   sampler_name="euler", scheduler="simple", positive=pos["CONDITIONING"], negative=neg["CONDITIONING"],
                   latent_image=latent["LATENT"], denoise=1.0)
        img = g.add("VAEDecode", samples=ks["LATENT"], vae=loader["vae"])
        save = g.add("SaveImage", f"{label} images", filename_prefix=f"fdfo_compare/{label}", images=img["IMAGE"])
        g.shows(save, [(toy["width"], toy["height"])] * 4)
        samplers.append(ks)
        decodes.append(img)
        saves.append(save)
        outs[label] = img["IMAGE"]
    both = g.add("ImageBatch", image1=outs["base"], image2=outs["lora"])
    prompt_list = g.add("FDFOPromptList", text=TOY_PROMPT)
    reward = g.add("FDFOToyAlignmentReward")
    scored = g.add("FDFOScoreImages", images=both["IMAGE"], prompts=prompt_list["prompts"], reward=reward["reward"],
                   sort="none", columns=4)
    grid = g.add("SaveImage", "top row base, bottom row LoRA, with rewards", filename_prefix="fdfo_compare/grid", images=scored["grid"])
    g.shows(grid, [score_grid_size(8, toy["width"], toy["height"], 4)])
    g.column(0, 300, [note, loader, prompt_list, reward])
    g.column(320, 300, [lora, (pos, 100), neg, latent])
    g.column(640, 300, samplers)
    g.column(960, 300, decodes + [both, scored])
    g.column(1280, 300, saves + [grid])
    return g


WORKFLOWS = {
    "fdfo_toy": wf_toy,
    "fdfo_sd35_pickscore": wf_sd35_pickscore,
    "fdfo_sd35_vlm": wf_sd35_vlm,
    "fdfo_flux_aesthetic": wf_flux_aesthetic,
    "fdfo_base_vs_lora": wf_compare,
    "fdfo_toy_style_reference": wf_toy_style,
    "fdfo_toy_picks": wf_toy_picks,
    "fdfo_sd35_style_reference": wf_sd35_style,
    "fdfo_flux_style_reference": wf_flux_style,
    "fdfo_qwen_image_style_reference": wf_qwen_style,
}
#: Every real-model template gets a quick variant `<name>_quick` (QUICK above).
REAL_MODEL_TEMPLATES = ("fdfo_sd35_pickscore", "fdfo_sd35_vlm", "fdfo_flux_aesthetic", "fdfo_sd35_style_reference",
                        "fdfo_flux_style_reference", "fdfo_qwen_image_style_reference")
WORKFLOWS.update({f"{name}_quick": functools.partial(WORKFLOWS[name], quick=True) for name in REAL_MODEL_TEMPLATES})

def build_all(info: dict[str, Any]) -> dict[str, Graph]:
    return {name: build(info) for name, build in WORKFLOWS.items()}


def dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--object-info", default=None,
                   help="stock node definitions: URL of a running ComfyUI or an object_info JSON file "
                        "(default: workflows/reference/stock_object_info.json)")
    p.add_argument("--check", action="store_true", help="only check that the files on disk are up to date")
    a = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    info = combined_object_info(a.object_info)
    graphs = build_all(info)
    for name, g in graphs.items():
        if not g.fits_view():
            raise SystemExit(f"{name}: the layout does not fit the window at zoom {g.zoom}: bounds {g.bounds()}")
    pack = import_nodepack()
    used = sorted({n.type for g in graphs.values() for n in g.nodes
                   if n.type not in VIRTUAL_NODES and n.type not in pack.NODE_CLASS_MAPPINGS})
    files = {STOCK_INFO: dump({k: info[k] for k in used})}
    for name, g in graphs.items():
        ui, api = dump(g.to_ui()), dump(g.to_api())
        files[REPO / "example_workflows" / f"{name}.json"] = ui
        files[REPO / "workflows" / "ui" / f"{name}.json"] = ui
        files[REPO / "workflows" / "api" / f"{name}.json"] = api
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if a.check:
        for path in stale:
            print(f"out of date: {path.relative_to(REPO)}")
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
