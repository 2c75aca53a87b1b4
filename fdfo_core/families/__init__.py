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


def pipeline_refusal(class_name: str) -> str | None:
    """Why FDFO refuses diffusers pipeline class `class_name` (one no family covers: not a plain
    text-to-image flow, or no module yet; `refused.REFUSED_PIPELINES`), or None."""
    from .refused import REFUSED_PIPELINES

    return REFUSED_PIPELINES.get(class_name)


def _comfy_classes(base: Any) -> list[list[str]]:
    """The class names of a ComfyUI model's `model_config` (when it has one) and of the model itself
    (`MODEL.model`), config first, each with its base classes' names, nearest first."""
    config = getattr(base, "model_config", None)
    objects = ([config] if config is not None else []) + [base]
    return [[k.__name__ for k in type(o).__mro__ if k is not object] for o in objects]


def _claimed(name: str) -> Family | None:
    return next((f for f in all_families() if name in f.comfy_models), None)


def _refused(name: str) -> tuple[Family | None, str] | None:
    from .newer_comfy import NEWER_COMFY_MODELS

    for f in all_families():
        if name in f.comfy_refused:
            return f, f.comfy_refused[name]
    if name in NEWER_COMFY_MODELS:
        return None, NEWER_COMFY_MODELS[name].refusal(name)
    return None


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).lstrip("v").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def family_for_comfy_model(base: Any) -> Family | None:
    """The family of a ComfyUI model (`MODEL.model`): the family that names the exact class of its
    `model_config` (`comfy.supported_models`) or, failing that, of the model (`comfy.model_base`)
    in `comfy_models`, then that family's `comfy_variant`. None for a model no family names (a
    subclass of a family's class included) and for one `comfy_refusal` refuses whatever the ComfyUI
    version (e.g. a config derived from another family's class on a model class a family names)."""
    if comfy_refusal(base) is not None:
        return None
    for names in _comfy_classes(base):
        family = _claimed(names[0])
        if family is not None:
            return family.comfy_variant(base)
    return None


def _as_variant(parent: str) -> tuple[Family | None, str] | None:
    """The refusal of a class derived from ComfyUI's `parent` that no family or table names, or
    None when `parent` is not named either."""
    refused = _refused(parent)
    if refused is not None:
        return refused[0], f"a subclass of ComfyUI's {parent}, which FDFO refuses: {refused[1]}"
    family = _claimed(parent)
    if family is None:
        return None
    return family, (
        f"a subclass of ComfyUI's {parent} ({family.title}), a variant that FDFO's {family.name} family was not "
        "written or tested for (variants often take inputs, such as reference images, that FDFO does not give), so "
        "FDFO does not train it in ComfyUI. Load the family's own model, or train it with `fdfo train` on the "
        "diffusers folder" + (f" ({' / '.join(family.diffusers_pipelines)})." if family.diffusers_pipelines else ".")
    )


def comfy_refusal(base: Any, comfyui_version: str | None = None) -> tuple[Family | None, str] | None:
    """(family or None, why) when the ComfyUI backend refuses a ComfyUI model (`MODEL.model`),
    else None. Recognition goes by class, along the class hierarchy, the `model_config` class
    (`comfy.supported_models`) before the model's (`comfy.model_base`):

    - an exact class named in a family's `comfy_refused` or in `newer_comfy.NEWER_COMFY_MODELS`
      (families only newer ComfyUI loads) is refused with that reason;
    - an exact class a family trains is refused only when `comfyui_version` (ComfyUI's
      `comfyui_version.__version__`; None: unknown, not checked) is older than the family's
      `comfy_since` ("this ComfyUI (v0.3.64) predates Flux.2 ..."), or when the family comes from
      the model class while the config class derives from a refused class or from another family's
      (a config `ZImageFuture(ZImage)` on ComfyUI's plain `Lumina2` model is a Z-Image variant, not
      Lumina 2; `FluxSchnell(Flux)` on `Flux` is Flux);
    - a class no family or table names, but whose base class one does (a subclass of a supported or
      refused class: a variant that may take other inputs), is refused by name, with its parent's
      reason when the parent is refused;
    - anything else (a flow model no family knows) is not refused here.
    """
    chains = _comfy_classes(base)
    for i, names in enumerate(chains):
        refused = _refused(names[0])
        if refused is not None:
            return refused
        family = _claimed(names[0])
        if family is None:
            continue
        if i > 0:  # named by its model class: the config's nearest named ancestor must agree
            parent = next((n for n in chains[0][1:] if _refused(n) is not None or _claimed(n) is not None), None)
            if parent is not None and (_refused(parent) is not None or _claimed(parent).name != family.name):
                return _as_variant(parent)
        family = family.comfy_variant(base)
        since = family.comfy_since
        if since and comfyui_version and _version(comfyui_version) < _version(since):
            return family, (
                f"this ComfyUI (v{str(comfyui_version).lstrip('v')}) predates {family.title} as FDFO's nodes "
                f"train it: FDFO trains {family.title} in ComfyUI v{since} and later. Update ComfyUI, or train "
                "it with `fdfo train` on the diffusers folder (" + " / ".join(family.diffusers_pipelines) + ")."
            )
        return None
    for names in chains:
        for parent in names[1:]:
            refused = _as_variant(parent)
            if refused is not None:
                return refused
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
