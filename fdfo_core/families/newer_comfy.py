"""ComfyUI model classes that FDFO's nodes refuse by name: families only newer ComfyUI versions load.

Newer ComfyUI versions (after v0.8.0, the newest FDFO is tested against) add image models whose
ComfyUI side no FDFO family module covers yet. Without a name they would train through the
untested generic path (`generic.UnregisteredComfyFamily`), so each is refused by its ComfyUI class
name (the `comfy.supported_models` class of `MODEL.model.model_config` or the `comfy.model_base`
class of `MODEL.model`), saying why and what to do. Where diffusers ships the model, the answer is
the diffusers backend (`fdfo train` on the model's diffusers folder); its LoRA files use ComfyUI's
key names.

Read (never run here) from Comfy-Org/ComfyUI's `comfy/model_base.py` and
`comfy/supported_models.py` of 2026 (see /work/shared/COMFYUI_NEWER.md, section 3); the class names
are ComfyUI's. A family module that learns to train one of them in ComfyUI takes it out of here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class NewerComfyModel:
    """A ComfyUI model class FDFO's nodes refuse.

    title: the model's name for people ("Qwen-Image 2.1").
    pipelines: the diffusers pipelines of the model that `fdfo train` loads ((): none).
    why: what makes it differ from the families FDFO trains in ComfyUI (half a sentence).
    """

    title: str
    pipelines: tuple[str, ...]
    why: str

    def refusal(self, comfy_class: str) -> str:
        """The refusal message for a model of ComfyUI class `comfy_class` (whole sentences)."""
        head = f"FDFO's nodes do not train {self.title} (ComfyUI's {comfy_class}) yet: {self.why}."
        if self.pipelines:
            return f"{head} Train it with `fdfo train` on the diffusers folder ({' / '.join(self.pipelines)})."
        return f"{head} No diffusers pipeline of it exists that `fdfo train` loads, so FDFO cannot train it yet."


#: ComfyUI class name -> the refused model. Config and model classes of one model share the name
#: in ComfyUI unless listed twice.
NEWER_COMFY_MODELS: Mapping[str, NewerComfyModel] = {
    "QwenImage21": NewerComfyModel(
        "Qwen-Image 2.1", ("QwenImage21Pipeline",),
        "a subclass of Qwen-Image with 64-channel 16x latents, a prompt-prefix K/V cache kept between calls and "
        "fused kernels that newer ComfyUI runs unless it is training; FDFO's Qwen-Image family does not cover it"),
    "Krea2": NewerComfyModel(
        "Krea 2", ("Krea2Pipeline",),
        "a single-stream DiT of its own (guided whenever its guidance scale is above 0) that FDFO has not tested "
        "in ComfyUI"),
    "ErnieImage": NewerComfyModel(
        "ERNIE-Image", ("ErnieImagePipeline",),
        "a DiT on Flux.2 latents with 1x1 patches and fused kernels that newer ComfyUI runs unless it is training"),
    "LongCatImage": NewerComfyModel(
        "LongCat-Image", ("LongCatImagePipeline",),
        "a Flux-shaped model whose RoPE positions and guidance differ from Flux.1's (ComfyUI runs it through its "
        "own apply-model), so FDFO's Flux family does not cover it"),
    "Kandinsky5Image": NewerComfyModel(
        "Kandinsky 5 Image", ("Kandinsky5T2IPipeline",),
        "its ComfyUI model (a text and a visual transformer, Qwen2.5-VL text plus a pooled CLIP vector) has no FDFO "
        "family module or ComfyUI test yet"),
    "HiDreamO1": NewerComfyModel(
        "HiDream-O1", (),
        "a pixel-space model whose noise is scaled by 8 (FDFO's flow needs unit Gaussian noise at t = 1) and whose "
        "prompt K/V cache persists across calls"),
    "Anima": NewerComfyModel(
        "Anima", (),
        "a Cosmos Predict2 DiT on 3-D latents whose LLM adapter takes a separate training path"),
    "ZImagePixelSpace": NewerComfyModel(
        "Z-Image (pixel space)", (),
        "a pixel-space Z-Image (no VAE latents), a variant FDFO's Z-Image family does not cover"),
    "MingImage": NewerComfyModel(
        "Ming-Image", (),
        "a Lumina 2 variant with direct context and reference frames that FDFO's Lumina 2 / Z-Image families do "
        "not cover"),
    "Ideogram4": NewerComfyModel(
        "Ideogram 4", (),
        "a DiT that takes 1 - t and returns the negated output, guided asymmetrically with a second, unconditional "
        "transformer (FDFO's diffusers backend refuses its pipeline for that)"),
    "JoyImage": NewerComfyModel(
        "JoyImage Edit", (),
        "an editing model that needs reference images (FDFO trains text-to-image)"),
    "MageFlow": NewerComfyModel(
        "MageFlow", (), "a Qwen-Image variant on Flux.2 latents that FDFO's Qwen-Image family does not cover"),
    "Lens": NewerComfyModel("Lens", (), "a model on Flux.2 latents that FDFO has not read or tested"),
    "Boogu": NewerComfyModel("Boogu", (), "an OmniGen 2 variant that FDFO has not read or tested"),
    "PixelDiTT2I": NewerComfyModel("PixelDiT", (), "a pixel-space model (no VAE latents) FDFO has not tested"),
    "PiD": NewerComfyModel("PiD", (), "a pixel-space model (no VAE latents) FDFO has not tested"),
    "SenseNovaU15": NewerComfyModel(
        "SenseNova U1.5", (), "it samples with its own model sampling, not ComfyUI's flow (CONST) sampling"),
}
