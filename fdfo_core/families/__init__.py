"""The registry of model families FDFO trains (one module per family, see `base.Family`).

    from fdfo_core.families import get_family, family_for_pipeline, supported_families_text
    get_family("flux").lora_map            # the family of a LoRA file's `base_model_family`
    family_for_pipeline("FluxPipeline")    # what the diffusers backend loads
    family_for_comfy_model(model.model)    # what the ComfyUI backend trains

Adding a family: write `fdfo_core/families/<name>.py` with a `Family` subclass and
`FAMILY = <Subclass>()` (a module with variants that are families of their own, e.g. Flux.2 and
Flux.2 Klein, lists them all in `FAMILIES = (...)`), add the module name to `_FAMILY_MODULES` below, and add its tiny test
case to `tests/family_cases.py` (see docs/families.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import MMDIT_ATTENTION_TARGETS, DistilledCheckpoint, Family, FamilyError, FamilyOptions
from .lora_map import FusedPart, LoraMap, LoraMapError, LoraModule, PlannedPart, fused, same_names

#: Family modules, in the order they are listed to users.
_FAMILY_MODULES = ("sd3", "flux", "qwen_image", "chroma", "hidream", "flux2", "z_image", "lumina2", "wan", "hunyuan_image")
#: The 2026 families, part a (issue 26).
_FAMILY_MODULES += ("krea2", "longcat_image", "ernie_image", "kandinsky5", "qwen_image21")
#: The 2026 families, part b (issue 26).
_FAMILY_MODULES += ("sana", "cogview4", "ovis_image", "bria_fibo")

_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family; its name, pipelines and ComfyUI classes must not clash with another's."""
    for attr in ("name", "title", "lora_map"):
        if not hasattr(family, attr):
            raise TypeError(f"family {type(family).__name__} does not declare {attr!r}")
    if not (family.diffusers_pipelines or family.comfy_models):
        raise TypeError(f"family {family.name!r} declares neither diffusers_pipelines nor comfy_models")
    for other in _REGISTRY.values():
        if other.name == family.name:
            raise ValueError(f"family {family.name!r} is registered twice")
        clash = (set(other.diffusers_pipelines) & set(family.diffusers_pipelines)) | (
            set(other.comfy_models) & set(family.comfy_models))
        if clash:
            raise ValueError(f"families {other.name!r} and {family.name!r} both claim {sorted(clash)}")
    _REGISTRY[family.name] = family
    return family


def _load() -> None:
    if not _REGISTRY:
        for name in _FAMILY_MODULES:
            module = importlib.import_module(f"{__name__}.{name}")
            for family in getattr(module, "FAMILIES", None) or (module.FAMILY,):
                register(family)


def all_families() -> list[Family]:
    _load()
    return list(_REGISTRY.values())


def family_names() -> list[str]:
    return [f.name for f in all_families()]


def get_family(name: str | Family) -> Family:
    """The family called `name` (a Family passes through); FamilyError lists the known ones."""
    if isinstance(name, Family):
        return name
    _load()
    if name not in _REGISTRY:
        raise FamilyError(f"unknown model family {name!r}; supported: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def family_for_pipeline(class_name: str) -> Family | None:
    """The family that trains diffusers pipeline class `class_name`, or None."""
    return next((f for f in all_families() if class_name in f.diffusers_pipelines), None)


def needs_input(class_name: str) -> tuple[Family, str] | None:
    """(family, what it needs) for a known image-conditioned pipeline of a family, or None."""
    for f in all_families():
        if class_name in f.diffusers_needs_input:
            return f, f.diffusers_needs_input[class_name]
    return None


def _class_names(obj: Any) -> list[str]:
    """The names of obj's class and its base classes, nearest first."""
    return [c.__name__ for c in type(obj).__mro__ if c is not object]


def pipeline_refusal(class_name: str) -> str | None:
    """Why FDFO refuses diffusers pipeline class `class_name` (one no family covers: not a plain
    text-to-image flow, or no module yet; `refused.REFUSED_PIPELINES`), or None."""
    from .refused import REFUSED_PIPELINES

    return REFUSED_PIPELINES.get(class_name)


def family_for_comfy_model(base: Any) -> Family | None:
    """The family of a ComfyUI model (`MODEL.model`), matched by its class name or, for a class no
    family names, its nearest base class's: a variant class that a newer ComfyUI derives from a
    family's class (e.g. `QwenImage21(QwenImage)`) is handled as its parent. None when no class
    in its hierarchy is a family's. (Refusals are checked first: `comfy_refusal`.)"""
    for name in _class_names(base):
        family = next((f for f in all_families() if name in f.comfy_models), None)
        if family is not None:
            return family
    return None


def comfy_refusal(base: Any) -> tuple[Family, str] | None:
    """(family, why) when a ComfyUI model (`MODEL.model`) is a family's model that the ComfyUI
    backend refuses (`Family.comfy_refused`), matched by the class name of its `model_config` or
    of the model itself, or of a base class of either that is nearer than any supported class:
    a subclass of a refused class (ZImagePixelSpace(ZImage)) is refused as its parent, a subclass
    of a supported class is not refused for a refused ancestor further up. Else None."""
    config = getattr(base, "model_config", None)
    for obj in ([config] if config is not None else []) + [base]:
        for name in _class_names(obj):
            for f in all_families():
                if name in f.comfy_refused:
                    return f, f.comfy_refused[name]
            if any(name in f.comfy_models for f in all_families()):
                break  # a supported class is nearer than any refused one
    return None


def supported_families_text(backend: str | None = None) -> str:
    """One line per supported family, for error messages: "SD3 / SD3.5 [sd3]: StableDiffusion3Pipeline".

    backend: "diffusers" lists pipeline classes, "comfyui" ComfyUI model classes, None both.
    """
    lines = []
    for f in all_families():
        kinds = []
        if backend in (None, "diffusers") and f.diffusers_pipelines:
            kinds.append("diffusers " + " / ".join(f.diffusers_pipelines))
        if backend in (None, "comfyui") and f.comfy_models:
            kinds.append("ComfyUI " + " / ".join(f.comfy_models))
        if kinds:
            lines.append(f"{f.describe()}: {'; '.join(kinds)}")
    return "; ".join(lines)


def family_presets() -> dict[str, dict[str, Any]]:
    """{preset name: config changes} with one preset per family."""
    return {(f.preset_name or f.name): dict(f.preset) for f in all_families()}


__all__ = [
    "DistilledCheckpoint", "Family", "FamilyError", "FamilyOptions", "FusedPart", "LoraMap", "LoraMapError", "LoraModule",
    "MMDIT_ATTENTION_TARGETS", "PlannedPart", "all_families", "comfy_refusal", "family_for_comfy_model", "family_for_pipeline",
    "family_names", "family_presets", "fused", "get_family", "needs_input", "pipeline_refusal", "register", "same_names",
    "supported_families_text",
]
