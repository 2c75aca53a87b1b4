"""Z-Image (Turbo and base): a single-stream DiT (text and image tokens in one sequence) with a
Qwen3-4B text encoder and the Flux.1 VAE.

diffusers: `ZImagePipeline` with `ZImageTransformer2DModel`. Latents [B, 16, H/8, W/8] (2x2
patches inside the transformer), which takes lists: one [C, 1, h, w] latent and one [L_i, D]
prompt embedding per image, where L_i is the prompt's own token count (the second-to-last hidden
state of the text encoder, padding removed). Its timestep is 1 - t and it predicts
x_0 - noise, the negative of our velocity. Time grid: linspace(1, 1/n, n) shifted by the
scheduler (a constant 3 for Turbo; mu from the image tokens when the scheduler shifts
dynamically). VAE: raw = latents / scaling_factor + shift_factor.
CFG: the pipeline's guidance_scale g means v = v_c + g (v_c - v_u), i.e. FDFO's cfg_scale = 1 + g
(Turbo samples with g = 0, cfg_scale 1; base with g = 3-5). The pipeline's cfg_truncation and
cfg_normalization are not applied.
ComfyUI (v0.8.0 and later; `comfy_since`): `supported_models.ZImage` (its model class is Lumina 2's
NextDiT), attention `qkv` fused and `out`, in the main layers and the noise / context refiners,
from ComfyUI's own diffusers converter (`comfy/utils.py: z_image_to_diffusers`). ComfyUI pads the
prompt's tokens to a multiple of 32 with the learnt pad token as diffusers does, but places those
pad tokens at increasing RoPE positions where diffusers puts them at position 0: the two agree
exactly for prompts of 32k tokens and differ slightly otherwise (each backend trains the model it
runs; the LoRA file is the same).
"""

from __future__ import annotations

import torch

from .base import DistilledCheckpoint, Family, FamilyOptions
from .common import pad_text_rows
from .lora_map import LoraMap, fused

#: Block groups with attention: the main layers and the refiners of the image and text tokens.
_GROUPS = ("layers", "noise_refiner", "context_refiner")


def _z_image_map() -> LoraMap:
    modules = []
    for group in _GROUPS:
        p = f"{group}.{{i}}.attention."
        modules += [fused(p + "qkv", p, ("to_q", "to_k", "to_v")), fused(p + "out", p, ("to_out.0",))]
    return LoraMap(tuple(modules))


class ZImage(Family):
    name = "z_image"
    title = "Z-Image (Turbo, base)"
    min_diffusers = ("0.36", "ZImagePipeline first shipped in diffusers 0.36")
    diffusers_pipelines = ("ZImagePipeline",)
    diffusers_transformers = ("ZImageTransformer2DModel",)
    diffusers_needs_input = {
        "ZImageImg2ImgPipeline": "an input image",
        "ZImageInpaintPipeline": "an input image and a mask",
        "ZImageControlNetPipeline": "a control image",
        "ZImageControlNetInpaintPipeline": "a control image and a mask",
        "ZImageOmniPipeline": "reference images (Z-Image-Omni, SigLIP-conditioned)",
    }
    comfy_models = ("ZImage",)  # ComfyUI's config class; its model class is Lumina2
    comfy_since = "0.8.0"
    latent_patch = 2  # the transformer's 2x2 patches (its config says all_patch_size)
    fingerprint_module = "cap_embedder.1"  # the text-feature projection (it has no proj_out)
    lora_map = _z_image_map()
    # Prompts are padded to this many tokens (so that batches concatenate) and unpadded per image
    # in the velocity call; longer prompts are cut.
    max_sequence_length = 512
    preset_name = "z-image"
    # Z-Image (base): 1024 px, 50 steps; FDFO trains without CFG (the published default; the pipeline samples
    # the base with guidance_scale 3-5, `--cfg-scale 4`-`6`). Z-Image-Turbo is recognised as distilled
    # (9 steps: 8 model evaluations with a nonzero step, no CFG).
    preset = {"height": 1024, "width": 1024, "num_steps": 50}
    distilled = (DistilledCheckpoint(
        title="Z-Image-Turbo", kind="step-distilled (Decoupled-DMD, 8 steps, no CFG)",
        base_model="Z-Image (Tongyi-MAI/Z-Image, the undistilled base)",
        settings={"num_steps": 9, "cfg_scale": 1.0},
        names=("z-image-turbo", "zimage-turbo")),)
    vram = ("6.2 B transformer (12 GB in bf16) plus Qwen3-4B (8 GB) while prompts are encoded: 24 GB at 1024 px with "
            "gradient checkpointing (tight), 32-48 GB comfortable (estimates from the parameter count, not measured)")

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        length = options.max_sequence_length
        # encode_prompt returns one [L_i, D] tensor per prompt (padding dropped); it rewrites the
        # list it is given, hence the copy.
        embs, _ = pipe.encode_prompt(prompt=list(prompts), device=device, do_classifier_free_guidance=False,
                                     max_sequence_length=length)
        out, mask = pad_text_rows(list(embs), length)
        return {"prompt_embeds": out, "prompt_mask": mask}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        lengths = cond["prompt_mask"].sum(dim=1).tolist()
        caps = [e[: int(n)] for e, n in zip(cond["prompt_embeds"], lengths)]
        # timestep 1 - t in float32, as the pipeline passes it
        out = pipe.transformer(list(x.unsqueeze(2).unbind(0)), (1 - t).float(), caps, return_dict=False)[0]
        return -torch.stack(out).squeeze(2)


FAMILY = ZImage()
