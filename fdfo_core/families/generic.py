"""ComfyUI flow models that no family module covers yet (AuraFlow, HiDream, Lumina 2, ...).

ComfyUI runs such a model itself, so the ComfyUI backend can still train it: rank r on every
linear layer inside an attention module, named as ComfyUI names it (the file loads through
LoraLoaderModelOnly). There is no diffusers counterpart, no key mapping and no test of the
family's own: a family module replaces this as soon as one is written. Image latents only.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from .base import Family
from .lora_map import LoraMap, PlannedPart

_ATTENTION = re.compile(r"(^|\.)[^.]*(attn|attention)[^.]*\.")


class UnregisteredComfyFamily(Family):
    lora_map = LoraMap(())

    def __init__(self, model_class: str):
        self.comfy_models = (model_class,)
        # The name written into LoRA metadata and fingerprints: the model class, lower-cased.
        self.name = re.sub(r"[^a-z0-9]+", "_", model_class.lower()).strip("_") or "flow"
        self.title = f"{model_class} (no family module; ComfyUI only, untested)"

    def comfy_lora_plan(self, linears: Mapping[str, tuple[int, int]], targets: Sequence[str]) -> list[PlannedPart]:
        return [PlannedPart(name, name, 0, fan_out) for name, (_, fan_out) in linears.items() if _ATTENTION.search(name)]
