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

The widgets of a UI-format node are listed in `widgets_values` in the order of the node's
widget inputs (required, then optional), with one extra value after an INT that has a
"control after generate" widget (the frontend adds one when the input sets
`control_after_generate`, and to INTs named seed / noise_seed unless it is set to false).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Stock node definitions (not directly in workflows/: ComfyUI lists every workflows/*.json as a template).
STOCK_INFO = REPO / "workflows" / "reference" / "stock_object_info.json"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
#: Frontend-only node types: in UI workflows, never sent to the server.
VIRTUAL_NODES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")


# --- node definitions (from /object_info) ----------------------------------------------------------


def input_specs(info: dict[str, Any]) -> list[tuple[str, Any, dict]]:
    """[(name, type, options)] of a node in widget order (required, then optional)."""
    out = []
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        inputs = info.get("input", {}).get(section, {}) or {}
        names = order.get(section) or list(inputs)
        for name in names:
            spec = inputs[name]
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, typ, opts))
    return out


def is_widget(typ: Any, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def has_control_widget(name: str, typ: Any, opts: dict) -> bool:
    """Does the frontend add a 'control after generate' widget after this input's widget?"""
    if typ != "INT" and not isinstance(typ, list) and typ != "COMBO":
        return False
    flag = opts.get("control_after_generate")
    if flag is None:
        return typ == "INT" and name in ("seed", "noise_seed")
    return bool(flag)


def socket_type(typ: Any) -> str:
    return "COMBO" if isinstance(typ, list) else str(typ)


# --- graph description -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    node: int
    slot: int
    type: str


@dataclass
class Node:
    id: int
    type: str
    title: str | None
    values: dict[str, Any]
    pos: tuple[float, float] | None = None
    size: tuple[float, float] | None = None
    text: str | None = None  # Note nodes
    col: int | None = None  # layout column (default: longest path from the sources)

    outputs: list[tuple[str, str]] = field(default_factory=list)

    def __getitem__(self, name: str) -> Out:
        for i, (n, t) in enumerate(self.outputs):
            if n == name:
                return Out(self.id, i, t)
        raise KeyError(f"{self.type} has no output {name!r}; outputs: {[n for n, _ in self.outputs]}")


class Graph:
    def __init__(self, name: str, object_info: dict[str, Any]):
        self.name = name
        self.info = object_info
        self.nodes: list[Node] = []

    def add(self, type_: str, title: str | None = None, pos=None, col: int | None = None, **values) -> Node:
        info = self.info.get(type_)
        if info is None:
            raise KeyError(f"node type {type_!r} is not in the object info")
        specs = {n: (t, o) for n, t, o in input_specs(info)}
        unknown = set(values) - set(specs)
        if unknown:
            raise KeyError(f"{type_} has no input(s) {sorted(unknown)}; inputs: {list(specs)}")
        node = Node(len(self.nodes) + 1, type_, title, values, pos, col=col)
        node.outputs = list(zip(info.get("output_name") or info["output"], [str(t) for t in info["output"]]))
        self.nodes.append(node)
        return node

    def note(self, text: str, pos=None, size=(420, 200), col: int = 0) -> Node:
        node = Node(len(self.nodes) + 1, "Note", None, {}, pos, size, text=text, col=col)
        self.nodes.append(node)
        return node

    # --- API format ----------------------------------------------------------------------------

    def to_api(self) -> dict[str, Any]:
        prompt = {}
        for node in self.nodes:
            if node.type in VIRTUAL_NODES:
                continue
            inputs = {}
            for name, typ, opts in input_specs(self.info[node.type]):
                if name not in node.values:
                    if is_widget(typ, opts):  # a widget left at its default
                        inputs[name] = default_value(typ, opts)
                    continue
                v = node.values[name]
                inputs[name] = [str(v.node), v.slot] if isinstance(v, Out) else v
            prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                    "_meta": {"title": node.title or display_name(self.info, node.type)}}
        return prompt

    # --- UI format -----------------------------------------------------------------------------

    def to_ui(self) -> dict[str, Any]:
        order = self._topological_order()
        positions = self._layout(order)
        links = []
        out_links: dict[tuple[int, int], list[int]] = {}
        ui_nodes = []
        for node in self.nodes:
            if node.type == "Note":
                ui_nodes.append({
                    "id": node.id, "type": "Note", "pos": list(node.pos or positions[node.id]), "size": list(node.size),
                    "flags": {}, "order": order.index(node.id), "mode": 0, "inputs": [], "outputs": [],
                    "properties": {}, "widgets_values": [node.text], "color": "#432", "bgcolor": "#653",
                })
                continue
            inputs, widgets = [], []
            for name, typ, opts in input_specs(self.info[node.type]):
                value = node.values.get(name)
                if isinstance(value, Out):
                    link_id = len(links) + 1
                    links.append([link_id, value.node, value.slot, node.id, len(inputs), value.type])
                    out_links.setdefault((value.node, value.slot), []).append(link_id)
                    entry = {"name": name, "type": socket_type(typ), "link": link_id}
                    if is_widget(typ, opts):
                        entry["widget"] = {"name": name}
                    inputs.append(entry)
                elif is_widget(typ, opts):
                    widgets.append(value if name in node.values else default_value(typ, opts))
                    if has_control_widget(name, typ, opts):
                        widgets.append("fixed")
                else:
                    inputs.append({"name": name, "type": socket_type(typ), "link": None})
            ui_nodes.append({
                "id": node.id, "type": node.type, "pos": list(node.pos or positions[node.id]),
                "size": list(node.size or self._size(node, len(inputs), len(widgets))), "flags": {},
                "order": order.index(node.id), "mode": 0, "inputs": inputs,
                "outputs": [{"name": n, "type": t, "links": []} for n, t in node.outputs],
                "properties": {"Node name for S&R": node.type}, "widgets_values": widgets,
            })
            if node.title:
                ui_nodes[-1]["title"] = node.title
        for ui in ui_nodes:
            for slot, out in enumerate(ui["outputs"]):
                out["links"] = out_links.get((ui["id"], slot), [])
                out["slot_index"] = slot
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}, "fdfo_workflow": self.name},
            "version": 0.4,
        }

    def _topological_order(self) -> list[int]:
        deps = {n.id: {v.node for v in n.values.values() if isinstance(v, Out)} for n in self.nodes}
        order, done = [], set()
        while len(order) < len(self.nodes):
            ready = [i for i in deps if i not in done and deps[i] <= done]
            if not ready:
                raise ValueError(f"workflow {self.name} has a cycle")
            for i in sorted(ready):
                order.append(i)
                done.add(i)
        return order

    def _layout(self, order: list[int]) -> dict[int, tuple[float, float]]:
        """Columns given by `col` (else the longest path from the sources); nodes stacked in each
        column in the order they were added."""
        depth: dict[int, int] = {}
        by_id = {n.id: n for n in self.nodes}
        for i in order:
            parents = [v.node for v in by_id[i].values.values() if isinstance(v, Out)]
            depth[i] = 1 + max((depth[p] for p in parents), default=-1)
            if by_id[i].col is not None:
                depth[i] = by_id[i].col
        pos, heights = {}, {}
        for i in sorted(by_id):
            col = depth[i]
            y = heights.get(col, 0.0)
            node = by_id[i]
            specs = input_specs(self.info[node.type]) if node.type not in VIRTUAL_NODES else []
            n_widgets = sum(1 for n, t, o in specs if is_widget(t, o) and not isinstance(node.values.get(n), Out))
            n_sockets = len(specs) - n_widgets
            h = node.size[1] if node.size else self._size(node, n_sockets, n_widgets)[1]
            pos[i] = (40.0 + 440.0 * col, 40.0 + y)
            heights[col] = y + h + 60.0
        return pos

    def _size(self, node: Node, n_inputs: int, n_widgets: int) -> tuple[float, float]:
        multiline = sum(1 for n, t, o in input_specs(self.info[node.type]) if o.get("multiline") and not isinstance(node.values.get(n), Out))
        rows = max(n_inputs, len(node.outputs))
        return (380.0, 46.0 + 24.0 * rows + 24.0 * n_widgets + 110.0 * multiline)


def default_value(typ: Any, opts: dict) -> Any:
    if "default" in opts:
        return opts["default"]
    if isinstance(typ, list):
        return typ[0] if typ else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(typ)


def display_name(info: dict[str, Any], type_: str) -> str:
    return info.get(type_, {}).get("display_name") or type_


# --- the workflows -----------------------------------------------------------------------------------

TOY_PROMPT = "two red circles above a blue square on a yellow background"
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


def toy_cfg(preset: dict[str, Any]) -> float:
    """The toy preset's CFG scale (train and sample with the same one)."""
    from fdfo_core.config import FDFOConfig

    return float(preset.get("cfg_scale", FDFOConfig().cfg_scale))


def toy_trainer_values(preset: dict[str, Any]) -> dict[str, Any]:
    """The FDFO Trainer widgets of the toy workflow: the library's "toy" preset."""
    p = preset
    return dict(
        epochs=p["epochs"], pairs_per_epoch=p["pairs_per_epoch"], steps=p["num_steps"], cfg=toy_cfg(p), churn="raw",
        churn_strength=p["churn_strength"], width=p["width"], height=p["height"], seed=0, learning_rate=p["lr"],
        lora_rank=p["lora_rank"], lora_alpha=p["lora_alpha"], clip_range=0.03,
        optimizer_steps_per_epoch=p["optimizer_steps_per_epoch"], checkpoint_every=p["checkpoint_every"],
        lora_name="fdfo_toy", resume=True, sample_batch_size=p["sample_batch_size"],
        train_batch_size=p["train_batch_size"], decode_batch_size=p["decode_batch_size"], preview_count=8,
    )


def sample_with(g: Graph, model: Out, clip: Out, vae: Out, prompt: str, width: int, height: int, steps: int,
                cfg: float, prefix: str, batch: int = 4, guidance: float | None = None, col: int = 2) -> Node:
    """Prompt, empty latent, KSampler, VAE Decode, Save Image: sampling with the stock nodes."""
    pos = g.add("CLIPTextEncode", "prompt", col=col, text=prompt, clip=clip)
    neg = g.add("CLIPTextEncode", "negative prompt (unused at cfg 1)", col=col, text="", clip=clip)
    positive = pos["CONDITIONING"]
    if guidance is not None:
        positive = g.add("FluxGuidance", col=col, guidance=guidance, conditioning=positive)["CONDITIONING"]
    latent = g.add("EmptySD3LatentImage", col=col, width=width, height=height, batch_size=batch)
    ks = g.add("KSampler", col=col + 1, model=model, seed=0, steps=steps, cfg=cfg, sampler_name="euler",
               scheduler="simple", positive=positive, negative=neg["CONDITIONING"], latent_image=latent["LATENT"], denoise=1.0)
    images = g.add("VAEDecode", col=col + 2, samples=ks["LATENT"], vae=vae)
    return g.add("SaveImage", col=col + 2, filename_prefix=prefix, images=images["IMAGE"])


def wf_toy(info: dict[str, Any]) -> Graph:
    from fdfo_core.config import PRESETS

    g = Graph("fdfo_toy", info)
    g.note(
        "FDFO on the bundled toy model: runs on a CPU in a few minutes.\n\n"
        "1. FDFO Paired Sampler shows what the trainer sees: pairs of similar images and their reward difference.\n"
        "2. FDFO Trainer trains a LoRA toward the toy alignment reward (the library's 'toy' preset) and saves it as "
        "models/loras/fdfo_toy.safetensors; run files go to output/fdfo/fdfo_toy/.\n"
        "3. The trained model goes straight into a KSampler.\n\n"
        "Queue again with more epochs to continue the run (resume on). Cancel keeps the LoRA trained so far.",
        size=(400, 260),
    )
    loader = g.add("FDFOToyModelLoader", col=0)
    prompts = g.add("FDFOToyPrompts", col=0, count=256, split="train", seed=0)
    reward = g.add("FDFOToyAlignmentReward", col=0)
    toy = PRESETS["toy"]
    pairs = g.add("FDFOPairedSampler", col=1, model=loader["model"], clip=loader["clip"], vae=loader["vae"],
                  prompts=prompts["prompts"], reward=reward["reward"], pairs=4, seed=0, steps=toy["num_steps"], cfg=toy_cfg(toy),
                  churn="raw", churn_strength=toy["churn_strength"], width=toy["width"], height=toy["height"])
    trainer = g.add("FDFOTrainer", col=1, model=loader["model"], clip=loader["clip"], vae=loader["vae"],
                    reward=reward["reward"], prompts=prompts["prompts"], **toy_trainer_values(toy))
    g.add("PreviewImage", "pairs and their reward difference", col=2, images=pairs["comparison"])
    g.add("PreviewImage", "reward curve", col=2, images=trainer["reward_curve"])
    g.add("SaveImage", "base vs trained", col=2, filename_prefix="fdfo_toy/preview", images=trainer["preview"])
    sample_with(g, trainer["model"], loader["clip"], loader["vae"], TOY_PROMPT, toy["width"], toy["height"],
                toy["num_steps"], toy_cfg(toy), "fdfo_toy/trained")
    return g


def _sd35_loaders(g: Graph) -> tuple[Node, Node]:
    ckpt = g.add("CheckpointLoaderSimple", col=0, ckpt_name=SD35_CKPT)
    clip = g.add("TripleCLIPLoader", col=0, clip_name1=SD35_CLIPS[0], clip_name2=SD35_CLIPS[1], clip_name3=SD35_CLIPS[2])
    return ckpt, clip


def _published_trainer(lora_name: str, **changes) -> dict[str, Any]:
    from fdfo_core.config import FDFOConfig

    d = FDFOConfig()
    values = dict(
        epochs=d.epochs, pairs_per_epoch=d.pairs_per_epoch, steps=d.num_steps, cfg=d.cfg_scale, churn=d.churn,
        churn_strength=d.churn_strength, width=d.width, height=d.height, seed=d.seed, learning_rate=d.lr,
        lora_rank=d.lora_rank, lora_alpha=d.lora_alpha, clip_range=d.clip_range,
        optimizer_steps_per_epoch=d.optimizer_steps_per_epoch, checkpoint_every=d.checkpoint_every,
        lora_name=lora_name, resume=True,
    )
    values.update(changes)
    return values


def wf_sd35_pickscore(info: dict[str, Any]) -> Graph:
    g = Graph("fdfo_sd35_pickscore", info)
    g.note(
        "SD3.5 Medium + PickScore with the published FDFO recipe (100 epochs x 432 pairs, 40 steps, no CFG, 512 px, "
        "LoRA rank 32 / alpha 64, lr 3e-5). About 12 h on 4 H200 in the paper; lower epochs / pairs_per_epoch to try it.\n\n"
        f"Files: models/checkpoints/{SD35_CKPT}; models/clip/{', '.join(SD35_CLIPS)}; PickScore weights in "
        "models/fdfo_rewards/pickscore/ and the CLIP-H tokenizer in models/fdfo_rewards/CLIP-ViT-H-14-laion2B-s32B-b79K/ "
        "(see docs/rewards.md). 24 GB: set storage_device to cpu and gradient_checkpointing on.",
        size=(400, 300),
    )
    ckpt, clip = _sd35_loaders(g)
    prompts = g.add("FDFOPromptList", col=0, text=SD35_PROMPTS)
    reward = g.add("FDFOPickScoreReward", col=0)
    trainer = g.add("FDFOTrainer", col=1, model=ckpt["MODEL"], clip=clip["CLIP"], vae=ckpt["VAE"], reward=reward["reward"],
                    prompts=prompts["prompts"], **_published_trainer("sd35m_pickscore"), storage_device="cpu")
    g.add("PreviewImage", "reward curve", col=2, images=trainer["reward_curve"])
    g.add("SaveImage", "base vs trained", col=2, filename_prefix="fdfo_sd35/preview", images=trainer["preview"])
    sample_with(g, trainer["model"], clip["CLIP"], ckpt["VAE"], "a photo of a red fox curled up in fresh snow, morning light",
                512, 512, 40, 1.0, "fdfo_sd35/pickscore", batch=1)
    return g


def wf_sd35_vlm(info: dict[str, Any]) -> Graph:
    from fdfo_core.rewards.vlm import DEFAULT_QUESTION

    g = Graph("fdfo_sd35_vlm", info)
    g.note(
        "SD3.5 Medium + a VLM yes/no question, combined with PickScore as in the FDFO paper: "
        "PickScore + 0.1 x VLM alignment (Qwen2.5-VL-7B asked whether the image matches the caption).\n\n"
        "Edit the question (use {prompt} for the image's prompt), e.g. 'Is this image of professional quality? "
        "Answer with Yes or No.'. VLM weights: models/fdfo_rewards/vlm/ (about 17 GB in bf16; the 3B model needs ~8 GB; "
        "set the VLM's device to cpu to keep VRAM for training, at a large cost in speed).",
        size=(400, 300),
    )
    ckpt, clip = _sd35_loaders(g)
    prompts = g.add("FDFOPromptList", col=0, text=SD35_PROMPTS)
    pick = g.add("FDFOPickScoreReward", col=0)
    vlm = g.add("FDFOVLMReward", col=0, question=DEFAULT_QUESTION)
    combined = g.add("FDFOCombineRewards", col=1, reward_1=pick["reward"], weight_1=1.0, reward_2=vlm["reward"], weight_2=0.1)
    trainer = g.add("FDFOTrainer", col=1, model=ckpt["MODEL"], clip=clip["CLIP"], vae=ckpt["VAE"], reward=combined["reward"],
                    prompts=prompts["prompts"], **_published_trainer("sd35m_pickscore_vlm"), storage_device="cpu")
    g.add("PreviewImage", "reward curve", col=2, images=trainer["reward_curve"])
    g.add("SaveImage", "base vs trained", col=2, filename_prefix="fdfo_sd35_vlm/preview", images=trainer["preview"])
    sample_with(g, trainer["model"], clip["CLIP"], ckpt["VAE"], "a watercolour painting of a lighthouse on a cliff at dusk",
                512, 512, 40, 1.0, "fdfo_sd35_vlm/trained", batch=1)
    return g


def wf_flux_aesthetic(info: dict[str, Any]) -> Graph:
    from fdfo_core.config import PRESETS

    g = Graph("fdfo_flux_aesthetic", info)
    flux = PRESETS["flux"]
    g.note(
        "Flux.1 dev + the LAION aesthetic predictor. Flux is trained in fp8 here (weight_dtype fp8_e4m3fn; the LoRA "
        f"itself is fp32) at 512 px with {flux['num_steps']} steps, gradient checkpointing and CPU storage of the "
        "recorded states, to fit 24 GB; use 1024 px (Flux's native size) with 48 GB or more.\n\n"
        "Files: models/diffusion_models/flux1-dev.safetensors, models/clip/clip_l.safetensors and t5xxl_fp16.safetensors, "
        "models/vae/ae.safetensors; aesthetic head in models/fdfo_rewards/aesthetic/ and CLIP ViT-L/14 in "
        "models/fdfo_rewards/clip-vit-large-patch14/. Flux dev needs no CFG: guidance 3.5 goes in as flux_guidance.",
        size=(400, 300),
    )
    unet = g.add("UNETLoader", col=0, unet_name="flux1-dev.safetensors", weight_dtype="fp8_e4m3fn")
    clip = g.add("DualCLIPLoader", col=0, clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux")
    vae = g.add("VAELoader", col=0, vae_name="ae.safetensors")
    prompts = g.add("FDFOPromptList", col=0, text=SD35_PROMPTS)
    reward = g.add("FDFOAestheticReward", col=0)
    trainer = g.add("FDFOTrainer", col=1, model=unet["MODEL"], clip=clip["CLIP"], vae=vae["VAE"], reward=reward["reward"],
                    prompts=prompts["prompts"],
                    **_published_trainer("flux_aesthetic", steps=flux["num_steps"], width=512, height=512),
                    storage_device="cpu", gradient_checkpointing=True, flux_guidance=3.5)
    g.add("PreviewImage", "reward curve", col=2, images=trainer["reward_curve"])
    g.add("SaveImage", "base vs trained", col=2, filename_prefix="fdfo_flux/preview", images=trainer["preview"])
    sample_with(g, trainer["model"], clip["CLIP"], vae["VAE"], "a cosy reading nook with a cat asleep on a pile of books",
                512, 512, flux["num_steps"], 1.0, "fdfo_flux/trained", batch=1, guidance=3.5)
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
    g = Graph("fdfo_toy_style_reference", info)
    g.note(
        "Style from reference images, on the toy model (CPU, minutes).\n\n"
        "The references are made here so the workflow runs as it is: toy scenes from a KSampler, multiplied by a warm "
        "orange (Empty Image + Image Blend, multiply). FDFO Reference Style Reward scores every training image by its "
        "closeness to them in CLIP ViT-L/14's space (weights: models/fdfo_rewards/clip-vit-large-patch14/, see "
        "docs/rewards.md), and the trainer pulls the toy towards that warm look while the prompts keep deciding the "
        "shapes. For your own style, replace the reference branch with Load Image nodes or choose a folder of images in "
        "ComfyUI/input.",
        size=(420, 300),
    )
    loader = g.add("FDFOToyModelLoader", col=0)
    prompts = g.add("FDFOToyPrompts", col=0, count=256, split="train", seed=0)
    ref_prompt = g.add("CLIPTextEncode", "reference scenes", col=1, text=TOY_PROMPT, clip=loader["clip"])
    ref_neg = g.add("CLIPTextEncode", "negative prompt (unused at cfg 1)", col=1, text="", clip=loader["clip"])
    ref_latent = g.add("EmptySD3LatentImage", col=1, width=toy["width"], height=toy["height"], batch_size=8)
    ref_ks = g.add("KSampler", "reference scenes", col=2, model=loader["model"], seed=12345, steps=toy["num_steps"],
                   cfg=toy_cfg(toy), sampler_name="euler", scheduler="simple", positive=ref_prompt["CONDITIONING"],
                   negative=ref_neg["CONDITIONING"], latent_image=ref_latent["LATENT"], denoise=1.0)
    scenes = g.add("VAEDecode", col=3, samples=ref_ks["LATENT"], vae=loader["vae"])
    orange = g.add("EmptyImage", "the style's colour", col=3, width=toy["width"], height=toy["height"], batch_size=1,
                   color=TOY_STYLE_COLOR)
    refs = g.add("ImageBlend", "references: warm-tinted scenes", col=3, image1=scenes["IMAGE"], image2=orange["IMAGE"],
                 blend_factor=1.0, blend_mode="multiply")
    g.add("PreviewImage", "the references", col=4, images=refs["IMAGE"])
    reward = g.add("FDFOReferenceStyleReward", col=4, images=refs["IMAGE"], encoder="clip", aggregation="mean_embedding")
    trainer = g.add("FDFOTrainer", col=5, model=loader["model"], clip=loader["clip"], vae=loader["vae"],
                    reward=reward["reward"], prompts=prompts["prompts"],
                    **{**toy_trainer_values(toy), "lora_name": "fdfo_toy_style"})
    g.add("PreviewImage", "reward curve", col=6, images=trainer["reward_curve"])
    g.add("SaveImage", "base vs trained", col=6, filename_prefix="fdfo_toy_style/preview", images=trainer["preview"])
    sample_with(g, trainer["model"], loader["clip"], loader["vae"], TOY_PROMPT, toy["width"], toy["height"],
                toy["num_steps"], toy_cfg(toy), "fdfo_toy_style/trained", col=7)
    return g


#: Train by picking on the toy: 8 epochs of 16 pairs on 4 prompts (the browser test's scripted artist moves
#: the held-out images toward its rule with exactly these settings); picking 16 pairs takes under a minute.
TOY_PICKS = dict(epochs=8, pairs_per_epoch=16, learning_rate=1e-3, checkpoint_every=4, lora_name="fdfo_toy_picks",
                 preview_count=4)
TOY_PICKS_PROMPTS = 4


def wf_toy_picks(info: dict[str, Any]) -> Graph:
    from fdfo_core.config import PRESETS

    toy = PRESETS["toy"]
    g = Graph("fdfo_toy_picks", info)
    g.note(
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
        size=(420, 340),
    )
    loader = g.add("FDFOToyModelLoader", col=0)
    prompts = g.add("FDFOToyPrompts", col=0, count=TOY_PICKS_PROMPTS, split="train", seed=0)
    reward = g.add("FDFOHumanPicksReward", col=0)
    trainer = g.add("FDFOTrainer", col=1, model=loader["model"], clip=loader["clip"], vae=loader["vae"],
                    reward=reward["reward"], prompts=prompts["prompts"], **{**toy_trainer_values(toy), **TOY_PICKS})
    g.add("SaveImage", "base vs trained", col=2, filename_prefix="fdfo_toy_picks/preview", images=trainer["preview"])
    sample_with(g, trainer["model"], loader["clip"], loader["vae"], TOY_PROMPT, toy["width"], toy["height"],
                toy["num_steps"], toy_cfg(toy), "fdfo_toy_picks/trained")
    return g


def _style_reward(g: Graph, col: int = 0) -> Node:
    return g.add("FDFOReferenceStyleReward", col=col, folder=STYLE_FOLDER, encoder="csd", aggregation="topk", top_k=3,
                 prompt_weight=0.5)


def wf_sd35_style(info: dict[str, Any]) -> Graph:
    g = Graph("fdfo_sd35_style_reference", info)
    g.note("SD3.5 Medium learns a style from reference images (the published FDFO recipe; lower epochs to try it).\n\n"
           + STYLE_NOTE.format(folder=STYLE_FOLDER)
           + f"\n\nModel files: models/checkpoints/{SD35_CKPT}; models/clip/{', '.join(SD35_CLIPS)}.", size=(420, 380))
    ckpt, clip = _sd35_loaders(g)
    prompts = g.add("FDFOPromptList", col=0, text=SD35_PROMPTS)
    reward = _style_reward(g)
    trainer = g.add("FDFOTrainer", col=1, model=ckpt["MODEL"], clip=clip["CLIP"], vae=ckpt["VAE"], reward=reward["reward"],
                    prompts=prompts["prompts"], **_published_trainer("sd35m_style"), storage_device="cpu")
    g.add("PreviewImage", "reward curve", col=2, images=trainer["reward_curve"])
    g.add("SaveImage", "base vs trained", col=2, filename_prefix="fdfo_sd35_style/preview", images=trainer["preview"])
    sample_with(g, trainer["model"], clip["CLIP"], ckpt["VAE"], "a watercolour painting of a lighthouse on a cliff at dusk",
                512, 512, 40, 1.0, "fdfo_sd35_style/trained", batch=1)
    return g


def wf_flux_style(info: dict[str, Any]) -> Graph:
    from fdfo_core.config import PRESETS

    flux = PRESETS["flux"]
    g = Graph("fdfo_flux_style_reference", info)
    g.note("Flux.1 dev learns a style from reference images (fp8 weights, 512 px, CPU storage and gradient "
           "checkpointing to fit 24 GB, as in the Flux aesthetic workflow).\n\n" + STYLE_NOTE.format(folder=STYLE_FOLDER)
           + "\n\nModel files: models/diffusion_models/flux1-dev.safetensors, models/clip/clip_l.safetensors and "
           "t5xxl_fp16.safetensors, models/vae/ae.safetensors.", size=(420, 380))
    unet = g.add("UNETLoader", col=0, unet_name="flux1-dev.safetensors", weight_dtype="fp8_e4m3fn")
    clip = g.add("DualCLIPLoader", col=0, clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux")
    vae = g.add("VAELoader", col=0, vae_name="ae.safetensors")
    prompts = g.add("FDFOPromptList", col=0, text=SD35_PROMPTS)
    reward = _style_reward(g)
    trainer = g.add("FDFOTrainer", col=1, model=unet["MODEL"], clip=clip["CLIP"], vae=vae["VAE"], reward=reward["reward"],
                    prompts=prompts["prompts"],
                    **_published_trainer("flux_style", steps=flux["num_steps"], width=512, height=512),
                    storage_device="cpu", gradient_checkpointing=True, flux_guidance=3.5)
    g.add("PreviewImage", "reward curve", col=2, images=trainer["reward_curve"])
    g.add("SaveImage", "base vs trained", col=2, filename_prefix="fdfo_flux_style/preview", images=trainer["preview"])
    sample_with(g, trainer["model"], clip["CLIP"], vae["VAE"], "a cosy reading nook with a cat asleep on a pile of books",
                512, 512, flux["num_steps"], 1.0, "fdfo_flux_style/trained", batch=1, guidance=3.5)
    return g


def wf_compare(info: dict[str, Any]) -> Graph:
    from fdfo_core.config import PRESETS

    toy = PRESETS["toy"]
    g = Graph("fdfo_base_vs_lora", info)
    g.note(
        "Base model vs trained LoRA, same prompt and seeds, scored with the reward. Run the toy workflow first: it "
        "saves models/loras/fdfo_toy.safetensors. For your own models swap the loader, the LoRA file and the reward; "
        "sample with the settings you trained with (steps, cfg, scheduler).",
        size=(400, 220),
    )
    loader = g.add("FDFOToyModelLoader", col=0)
    lora = g.add("LoraLoaderModelOnly", col=1, model=loader["model"], lora_name="fdfo_toy.safetensors", strength_model=1.0)
    pos = g.add("CLIPTextEncode", "prompt", col=1, text=TOY_PROMPT, clip=loader["clip"])
    neg = g.add("CLIPTextEncode", "negative prompt (unused at cfg 1)", col=1, text="", clip=loader["clip"])
    latent = g.add("EmptySD3LatentImage", col=1, width=toy["width"], height=toy["height"], batch_size=4)
    outs = {}
    for label, model in (("base", loader["model"]), ("lora", lora["MODEL"])):
        ks = g.add("KSampler", f"KSampler ({label})", col=2, model=model, seed=0, steps=toy["num_steps"], cfg=toy_cfg(toy),
                   sampler_name="euler", scheduler="simple", positive=pos["CONDITIONING"], negative=neg["CONDITIONING"],
                   latent_image=latent["LATENT"], denoise=1.0)
        img = g.add("VAEDecode", col=3, samples=ks["LATENT"], vae=loader["vae"])
        g.add("SaveImage", f"{label} images", col=4, filename_prefix=f"fdfo_compare/{label}", images=img["IMAGE"])
        outs[label] = img["IMAGE"]
    both = g.add("ImageBatch", col=3, image1=outs["base"], image2=outs["lora"])
    prompt_list = g.add("FDFOPromptList", col=0, text=TOY_PROMPT)
    reward = g.add("FDFOToyAlignmentReward", col=0)
    scored = g.add("FDFOScoreImages", col=4, images=both["IMAGE"], prompts=prompt_list["prompts"], reward=reward["reward"],
                   sort="none", columns=4)
    g.add("SaveImage", "top row base, bottom row LoRA, with rewards", col=5, filename_prefix="fdfo_compare/grid", images=scored["grid"])
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
}


def load_object_info(source: str) -> dict[str, Any]:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source.rstrip("/") + "/object_info", timeout=60) as r:
            return json.load(r)
    return json.loads(Path(source).read_text())


def import_nodepack(name: str = "comfyui_fdfo_nodepack"):
    """Import this checkout as a package (as ComfyUI does), without ComfyUI."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def combined_object_info(stock_source: str | None = None) -> dict[str, Any]:
    """Stock nodes from `stock_source` (default: the snapshot), FDFO nodes from this checkout."""
    info = load_object_info(stock_source or str(STOCK_INFO))
    pack = import_nodepack()
    info = {k: v for k, v in info.items() if k not in pack.NODE_CLASS_MAPPINGS}
    info.update(importlib_object_info(pack))
    return info


def importlib_object_info(pack) -> dict[str, Any]:
    import importlib

    return importlib.import_module(pack.__name__ + ".nodes.object_info").object_info()


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
