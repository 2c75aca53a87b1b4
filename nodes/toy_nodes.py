"""The FDFO Toy Model Loader node: the bundled tiny SD3-architecture model as MODEL, CLIP, VAE."""

from __future__ import annotations

from .common import CATEGORY


class FDFOToyModelLoader:
    CATEGORY = f"{CATEGORY}/toy"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("model", "clip", "vae")
    OUTPUT_TOOLTIPS = (
        "The toy diffusion model (an SD3-architecture MMDiT, 64x64 images), loaded by ComfyUI's own code: use it with KSampler, LoRA loaders and the FDFO nodes.",
        "The toy's text encoder as a standard CLIP: CLIP Text Encode works with it.",
        "The toy's VAE (a 16-channel TAESD): VAE Decode works with it.",
    )
    FUNCTION = "load"
    DESCRIPTION = (
        "Loads the bundled toy text-to-image model (coloured shapes, 64x64 px, a few MB). It runs on a CPU in seconds, "
        "so an FDFO training run finishes in minutes: the place to learn the nodes before training SD3.5 or Flux. "
        "Sample it at 64x64 with about 20 steps."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        from .toy_model import load_toy_model

        return load_toy_model()


NODES = {"FDFOToyModelLoader": (FDFOToyModelLoader, "FDFO Toy Model Loader")}
