"""Chroma (Chroma1-Base / HD, the unlocked v* checkpoints): Flux.1 schnell's layout without CLIP and
without modulation linears; one T5 encoder; per-block modulations from a small "approximator" MLP.

diffusers: `ChromaPipeline` with `ChromaTransformer2DModel`. Latents [B, 16, h, w] are packed into
2x2 patch tokens (as Flux); the transformer takes timestep = t (it scales by 1000 inside), the
Flux RoPE ids and the T5 tokens. The time grid is linspace(1, 1/n, n) shifted by the
resolution-dependent mu (the pipeline's own computation).
Text: Chroma was trained with T5 padding masked out except for one padding token (lodestones'
model card). The pipeline's mask marks exactly those tokens, but it hands the transformer a float
0/1 mask that scaled-dot-product attention adds as a bias, so padding is not masked at all
(diffusers issues #12116, #13619): the result depends on max_sequence_length. We run the
transformer on the kept tokens only (rows of equal length together), which is Chroma's intended
masking and what ComfyUI computes (its T5 conditioning has no padding); a velocity never depends
on how far prompts are padded. (So the pipeline's own output differs from ours whenever a prompt
is shorter than max_sequence_length, e.g. its CFG's empty negative prompt.)
ComfyUI: `comfy.model_base.Chroma` (module names of Flux: double blocks with fused `qkv`, single
blocks `linear1` = [q, k, v, mlp_in], `linear2`); the distilled-guidance input is 0 by default.
"""

from __future__ import annotations

import torch

from .base import Family, FamilyOptions
from .common import image_position_ids, pack_2x2, unpack_2x2
from .flux import flux_lora_map


class Chroma(Family):
    name = "chroma"
    title = "Chroma (Chroma1-Base, Chroma1-HD)"
    min_diffusers = ("0.34", "ChromaPipeline first shipped in diffusers 0.34")
    diffusers_pipelines = ("ChromaPipeline",)
    diffusers_transformers = ("ChromaTransformer2DModel",)
    comfy_models = ("Chroma",)
    comfy_refused = {"ChromaRadiance": (
        "FDFO's nodes do not train Chroma Radiance: it is a pixel-space model (16 x 16 pixel patches decoded by a "
        "NeRF-style head, no VAE latents; some checkpoints predict x0 instead of a velocity), a different model "
        "from the latent Chroma FDFO trains and checks against diffusers, and no diffusers pipeline of it exists "
        "to check it against. Train Chroma1-Base / HD instead."
    )}
    diffusers_needs_input = {
        "ChromaImg2ImgPipeline": "an input image",
        "ChromaInpaintPipeline": "an input image and a mask",
    }
    latent_patch = 2  # 2x2 latent packing (the diffusers config says patch_size 1)
    lora_map = flux_lora_map()
    max_sequence_length = 512
    preset_name = "chroma"
    # Native 1024 px. Chroma is not guidance-distilled (its pipeline samples with CFG 5.0); like the
    # published SD3.5 recipe, FDFO trains without CFG unless cfg_scale says otherwise.
    preset = {"height": 1024, "width": 1024, "num_steps": 26}
    vram = ("8.9 B: ~18 GB in bf16, ~9 GB in fp8. 24 GB: fp8 at 512-1024 px with storage_device cpu and gradient "
            "checkpointing; 48 GB: bf16 at 1024 px with gradient checkpointing (estimates from the parameter count)")

    def diffusers_latent_shape(self, pipe, height, width):
        f = pipe.vae_scale_factor
        return (pipe.transformer.config.in_channels // 4, 2 * (height // (f * 2)), 2 * (width // (f * 2)))

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        emb, _, mask, _, _, _ = pipe.encode_prompt(
            prompt=prompts, device=device, do_classifier_free_guidance=False,
            max_sequence_length=options.max_sequence_length,
        )
        # mask: the prompt's tokens plus one padding token (Chroma's training), padded to the length.
        return {"prompt_embeds": emb, "prompt_mask": mask.long()}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        lengths = cond["prompt_mask"].sum(dim=1).tolist()
        if len(set(lengths)) == 1:
            return self._velocity(pipe, x, t, cond["prompt_embeds"][:, : int(lengths[0])])
        # Rows whose prompts keep different numbers of tokens run in groups of equal length: exact
        # masking without an attention mask (the transformer cannot take a boolean one).
        out = torch.empty_like(x)
        for n in sorted(set(lengths)):
            rows = torch.tensor([i for i, m in enumerate(lengths) if m == n], device=x.device)
            out = out.index_copy(0, rows, self._velocity(pipe, x[rows], t[rows], cond["prompt_embeds"][rows, : int(n)]).to(out.dtype))
        return out

    @staticmethod
    def _velocity(pipe, x, t, emb):
        b, c, h, w = x.shape
        dtype, device = x.dtype, x.device
        img_ids = image_position_ids(h // 2, w // 2, device, dtype)
        txt_ids = torch.zeros(emb.shape[1], 3, device=device, dtype=dtype)
        out = pipe.transformer(
            hidden_states=pack_2x2(x), timestep=t.to(dtype), encoder_hidden_states=emb.to(dtype),
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]
        return unpack_2x2(out, h, w)


FAMILY = Chroma()
