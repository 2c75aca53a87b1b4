"""SAI model-spec metadata and the preview image that LoRA managers and model sites read.

The Stability AI Model Metadata Standard ("SAI Model Spec", github.com/Stability-AI/ModelSpec,
version 1.0.0) puts `modelspec.*` keys in a .safetensors header: `sai_model_spec` (the spec
version), `architecture` (the base model class; an adapter adds `/lora`), `implementation` (the
codebase whose tensor key names the file uses), `title` (MUST); `description` (markdown),
`date` (ISO 8601), `hash_sha256` (of the tensor bytes, without the header), `resolution`
(`<width>x<height>`) (SHOULD); `usage_hint`, `thumbnail` (a small `data:image/...;base64` image)
(CAN). FDFO writes them beside its own `fdfo.*` keys (lora_files.py), and a
`<name>.preview.png` next to the LoRA file: ComfyUI LoRA managers and model browsers show that
image as the LoRA's card.

Architecture ids follow the spec's listing where it has one and the names trainers already write
for newer models (kohya's sd-scripts: `flux-1-dev`, `lumina-2`, `hunyuan-image-2.1`); a model whose
size matches none of its family's published variants gets the family's id without a variant.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
from typing import Any, Mapping, Sequence

import torch

from .memory import transformer_module

SPEC_VERSION = "1.0.0"
KEY_PREFIX = "modelspec."
#: FDFO LoRA files use ComfyUI's native key names (`diffusion_model.<module>.lora_up.weight`).
IMPLEMENTATION = "https://github.com/comfyanonymous/ComfyUI"
ADAPTER = "lora"
PREVIEW_SUFFIX = ".preview.png"
THUMBNAIL_SIZE = 256
#: A published variant matches a model within this size ratio.
VARIANT_SIZE_RATIO = 1.1

#: family name -> (published model key or None for the family itself) -> architecture id.
ARCHITECTURES: Mapping[str, Mapping[str | None, str]] = {
    "sd3": {"sd3-medium": "stable-diffusion-3-medium", "sd35-medium": "stable-diffusion-3.5-medium",
            "sd35-large": "stable-diffusion-3.5-large", None: "stable-diffusion-3"},
    "flux": {"flux-dev": "flux-1-dev", "flux-schnell": "flux-1-schnell", None: "flux-1"},
    "chroma": {None: "chroma"},
    "qwen_image": {None: "qwen-image"},
    "hidream": {None: "hidream-i1"},
    "flux2": {None: "flux-2-dev"},
    "flux2_klein": {None: "flux-2-klein"},
    "z_image": {None: "z-image"},
    "lumina2": {None: "lumina-2"},
    "wan": {None: "wan-2.1-t2v"},
    "hunyuan_image": {None: "hunyuan-image-2.1"},
    "krea2": {None: "krea-2"},
    "longcat_image": {None: "longcat-image"},
    "ernie_image": {None: "ernie-image"},
    "kandinsky5_image": {None: "kandinsky-5-image"},
    "qwen_image21": {None: "qwen-image-2.1"},
}


def base_architecture(family: str, variant: str | None = None) -> str:
    """The model-spec id of a base model (family name as in `fdfo_core.families`, published key); a
    family missing from ARCHITECTURES gets its name with hyphens."""
    table = ARCHITECTURES.get(family)
    if table is None:
        return family.replace("_", "-")
    return table.get(variant) or table[None]


def lora_architecture(family: str, variant: str | None = None) -> str:
    return f"{base_architecture(family, variant)}/{ADAPTER}"


def published_variant(family: Any, params: int, guidance: bool | None = None) -> str | None:
    """The key of the family's published model whose size matches `params` (within
    VARIANT_SIZE_RATIO); among equal sizes (Flux dev / schnell) the one whose guidance embedding
    matches `guidance`. None when none matches."""
    best: tuple[float, str] | None = None
    for m in getattr(family, "published_models", ()):
        size = m.published_params_b * 1e9
        ratio = max(params / size, size / params) if params > 0 else float("inf")
        if ratio > VARIANT_SIZE_RATIO:
            continue
        embeds = m.transformer_config.get("guidance_embeds")
        if guidance is not None and embeds is not None and bool(embeds) != guidance:
            continue
        if best is None or ratio < best[0]:
            best = (ratio, m.key)
    return best[1] if best else None


def backend_variant(backend: Any) -> str | None:
    """The published variant of the model a backend trains, from its size (and guidance embedding)."""
    family = getattr(backend, "model_family", None)
    module = transformer_module(backend)
    if family is None or module is None:
        return None
    params = sum(p.numel() for n, p in module.named_parameters() if "lora_" not in n)
    config = getattr(module, "config", None)
    guidance = None
    if isinstance(config, Mapping) and "guidance_embeds" in config:
        guidance = bool(config["guidance_embeds"])
    elif hasattr(module, "guidance_in"):  # ComfyUI's Flux
        guidance = module.guidance_in is not None and not isinstance(module.guidance_in, torch.nn.Identity)
    return published_variant(family, params, guidance)


def tensor_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """`hash_sha256`: SHA-256 of the tensor bytes of the safetensors file (everything after the
    header), as "0x<hex>". `tensors` exactly as they are written (dtype, contiguous, CPU)."""
    from safetensors.torch import save

    raw = save(dict(tensors))
    header = int.from_bytes(raw[:8], "little")
    return "0x" + hashlib.sha256(raw[8 + header:]).hexdigest()


def thumbnail(image: Any, size: int = THUMBNAIL_SIZE) -> str:
    """A small JPEG of a PIL image as a `data:` URL (the spec's `thumbnail`)."""
    img = image.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def prompts_summary(prompts: Sequence[str], shown: int = 3, width: int = 80) -> str:
    """"N prompts, e.g. "a", "b", "c"" (each cut to `width` characters)."""
    distinct = list(dict.fromkeys(p.strip() for p in prompts if p and p.strip()))
    cut = [p if len(p) <= width else p[: width - 1] + "…" for p in distinct[:shown]]
    more = f" and {len(distinct) - shown} more" if len(distinct) > shown else ""
    return f"{len(distinct)} prompt(s): " + "; ".join(json.dumps(p, ensure_ascii=False) for p in cut) + more


def modelspec_metadata(
    *,
    title: str,
    family: str,
    variant: str | None,
    family_title: str,
    reward: str,
    prompts: Sequence[str],
    config: Any,
    epochs: int,
    images_seen: int,
    tensors: Mapping[str, torch.Tensor],
    preview: Any = None,
    selected: str | None = None,
    date: datetime.datetime | None = None,
) -> dict[str, str]:
    """The `modelspec.*` keys of one LoRA file (values are strings, as safetensors metadata needs).

    config: the run's FDFOConfig (size, steps, cfg, learning rate, rank / alpha, churn); tensors:
    the file's tensors as written (for `hash_sha256`); preview: a PIL image for `thumbnail`;
    selected: how this LoRA was chosen when it is not the last epoch's (the best LoRA).
    """
    when = (date or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
    settings = (f"{config.num_steps} steps, CFG {config.cfg_scale:g}, {config.width}x{config.height}")
    description = "\n".join([
        f"FDFO LoRA (Finite Difference Flow Optimization, arXiv 2603.12893) for {family_title}, trained toward "
        f"the reward `{reward}`.",
        "",
        f"- Trained: {epochs} epoch(s), {images_seen} images scored, {config.pairs_per_epoch} pairs per epoch; "
        f"learning rate {config.lr:g}, LoRA rank {config.lora_rank} / alpha {config.lora_alpha:g}, churn "
        f"{config.churn} {config.churn_strength:g}.",
        f"- Prompts: {prompts_summary(prompts)}.",
        f"- Sample it as it was trained: {settings}.",
        *([f"- Chosen: {selected}."] if selected else []),
    ])
    meta = {
        "sai_model_spec": SPEC_VERSION,
        "architecture": lora_architecture(family, variant),
        "implementation": IMPLEMENTATION,
        "title": title,
        "description": description,
        "date": when.isoformat(),
        "resolution": f"{config.width}x{config.height}",
        "hash_sha256": tensor_hash(tensors),
        "usage_hint": f"LoRA strength 1.0; {settings} (trained with these)",
    }
    if preview is not None:
        meta["thumbnail"] = thumbnail(preview)
    return {KEY_PREFIX + k: v for k, v in meta.items()}


def preview_path(lora_path: Any) -> Any:
    """`<name>.preview.png` beside `<name>.safetensors` (the name LoRA managers look for)."""
    from pathlib import Path

    p = Path(lora_path)
    return p.with_name(p.name[: -len(p.suffix)] + PREVIEW_SUFFIX if p.suffix else p.name + PREVIEW_SUFFIX)


__all__ = ["ARCHITECTURES", "IMPLEMENTATION", "KEY_PREFIX", "SPEC_VERSION", "backend_variant", "base_architecture",
           "lora_architecture", "modelspec_metadata", "preview_path", "prompts_summary", "published_variant",
           "tensor_hash", "thumbnail"]
