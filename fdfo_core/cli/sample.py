"""`fdfo sample`: images from a model, with or without an FDFO LoRA, at the settings it was trained
with (a flag wins, then the LoRA's metadata, then the model's fdfo.json and defaults)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import FDFOConfig
from ..files import storage
from .options import CLIError, default_model, device_for, is_toy_model



#: Built-in defaults of `fdfo sample` when neither a flag, the LoRA nor the model says otherwise.
SAMPLE_DEFAULTS = {"num_steps": 28, "cfg_scale": 1.0, "negative_prompt": "", "flux_guidance": 3.5}


def sampling_settings(args: argparse.Namespace, lora_meta: dict[str, Any], model_meta: dict[str, Any],
                      model_defaults: dict[str, Any], family) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, where each came from) for `fdfo sample`: an explicit flag wins, then the LoRA's
    metadata (the config it was trained with), then the model folder's fdfo.json, then the
    model's own default size / the built-in defaults. --height without --width means a square.
    family: the model's family (or its name); the guidance value only for families with a guidance
    embedding."""
    from ..families import get_family

    uses_guidance = get_family(family).guidance is not None
    config = lora_meta.get("config") if isinstance(lora_meta.get("config"), dict) else {}
    extra = config.get("extra") if isinstance(config.get("extra"), dict) else {}
    lora_values = {
        "height": config.get("height"), "width": config.get("width"), "num_steps": config.get("num_steps"),
        "cfg_scale": config.get("cfg_scale", lora_meta.get("cfg_scale")),
        "negative_prompt": config.get("negative_prompt"),
        "flux_guidance": lora_meta.get("flux_guidance", extra.get("flux_guidance")),
        "max_sequence_length": lora_meta.get("max_sequence_length"),
    }
    flags = {"height": args.height, "width": args.width, "num_steps": args.num_steps, "cfg_scale": args.cfg,
             "negative_prompt": args.negative_prompt, "flux_guidance": args.flux_guidance,
             "max_sequence_length": args.max_sequence_length}
    flag_names = {"cfg_scale": "--cfg"}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, flag in flags.items():
        if key == "flux_guidance" and not uses_guidance:
            continue
        candidates = [
            (flag, flag_names.get(key, "--" + key.replace("_", "-"))),
            (lora_values.get(key), "LoRA metadata"),
            (model_meta.get(key), "model's fdfo.json"),
            (model_defaults.get(key), "model default"),
            (SAMPLE_DEFAULTS.get(key), "default"),
        ]
        for value, source in candidates:
            if value is not None:
                values[key], sources[key] = value, source
                break
        else:
            values[key], sources[key] = None, "model default"
    if args.width is None and args.height is not None:  # --height alone asks for a square image
        values["width"], sources["width"] = args.height, "--height (square)"
    return values, sources


def format_settings(values: dict[str, Any], sources: dict[str, str]) -> str:
    width = max(len(k) for k in values)
    return "\n".join(f"  {k:<{width}}  {values[k]!r:<10} ({sources[k]})" for k in values)


def cmd_sample(args: argparse.Namespace) -> int:
    from ..backends.diffusers_backend import (
        DiffusersBackend,
        load_lora_into_pipeline,
        load_pipeline,
        model_settings,
        pipeline_family,
    )
    from ..backends.generation import generate_images
    from ..flow.image_sizes import check_backend_size
    from ..files.drawing import image_grid, save_png, to_pil
    from ..backends.lora_files import read_lora_metadata
    from ..files.prompts import read_prompts

    from ..toy import TOY_MAX_SEQUENCE_LENGTH as TOY_SEQ

    model = args.model or default_model()
    if model is None:
        raise CLIError("--model is required")
    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += read_prompts(args.prompts)
    if not prompts:
        raise CLIError("give --prompt TEXT (repeatable) or --prompts FILE")
    prompts = [p for p in prompts for _ in range(args.per_prompt)]
    seeds = [args.seed + i for i in range(len(prompts))]
    device = device_for(args.device)
    out = Path(args.out)
    storage.check_writable(out, "output folder")  # before the model loads: fail fast
    lora_meta = read_lora_metadata(args.lora) if args.lora else {}
    pipe = load_pipeline(model)
    if args.lora:
        load_lora_into_pipeline(pipe, args.lora, scale=args.lora_scale)
    model_meta = model_settings(model) if Path(model).exists() else {}
    model_defaults: dict[str, Any] = {}
    default_size = getattr(pipe, "default_sample_size", None)
    if default_size:
        model_defaults["height"] = model_defaults["width"] = int(default_size) * int(pipe.vae_scale_factor)
    if is_toy_model(model):
        model_defaults["max_sequence_length"] = TOY_SEQ
    family = pipeline_family(pipe)
    values, sources = sampling_settings(args, lora_meta, model_meta, model_defaults, family)
    height, width = int(values["height"]), int(values["width"])
    cfg = FDFOConfig(height=height, width=width, lora_rank=1)
    kwargs = {"guidance": float(values["flux_guidance"])} if "flux_guidance" in values else {}
    backend = DiffusersBackend(pipe, cfg, device=device, max_sequence_length=values["max_sequence_length"],
                               add_adapter=False, **kwargs)
    values["max_sequence_length"] = backend.max_sequence_length
    check_backend_size(backend, height, width)  # before any sampling: the sizes that work, not a traceback
    where = f"the LoRA {args.lora}" if args.lora else "no LoRA"
    print(f"sampling {len(prompts)} image(s) with {where}; settings (a flag wins, then the LoRA's metadata, "
          f"then the model):\n{format_settings(values, sources)}")
    images = generate_images(backend, prompts, seeds, int(values["num_steps"]), height, width,
                             float(values["cfg_scale"]), values["negative_prompt"])
    grid = image_grid(images, ncol=min(8, len(images)), scale=max(1, 256 // width))
    warning = storage.space_warning(out, len(prompts) * height * width * 3 + grid.width * grid.height * 3,
                                    f"{len(prompts)} images and a grid")
    if warning:
        print(warning, file=sys.stderr)
    for i, im in enumerate(images):
        save_png(to_pil(im), out / f"{i:04d}.png", "sample image")
    save_png(grid, out / "grid.png", "sample grid")
    storage.write_json(out / "settings.json", {
        "model": str(model), "lora": args.lora, "lora_scale": args.lora_scale, "prompts": prompts, "seeds": seeds,
        "settings": values, "sources": sources,
    }, "sample settings")
    print(f"{len(images)} images in {out} (grid.png, settings.json)")
    return 0
