"""Harness cases of the 2026 families, part b (issue 26: Sana, CogView4, Ovis-Image, Bria FIBO).

Registered into `family_cases.CASES` by one line there. No ComfyUI builders: ComfyUI up to v0.8.0
has none of these models as its own class (Ovis-Image runs as a Flux variant there, see
docs/families.md). Only torch at module level (ComfyUI's python imports family_cases).
"""

from __future__ import annotations

from family_cases import FamilyCase


def _sana(tmp, seed):
    from tiny_pipelines_2026b import tiny_sana_pipeline

    return tiny_sana_pipeline(tmp, seed)


CASES = [
    # 128 px: 4x4 latents of the 32x DC-AE. The pipeline's resolution binning is off (it would replace
    # the size); its default complex human instruction is on, on both sides.
    FamilyCase("sana", "sana", _sana, pipeline_kwargs=lambda options: {"guidance_scale": 1.0,
                                                                       "use_resolution_binning": False},
               cfg_kwargs=lambda cfg: {"guidance_scale": cfg, "use_resolution_binning": False},
               max_sequence_length=24, size=128, latent_cell=32, size_multiple=32,
               train=True,
               train_overrides={"epochs": 4, "churn_strength": 0.1, "height": 64, "width": 64}),
]


def _cogview4(tmp, seed):
    from tiny_pipelines_2026b import tiny_cogview4_pipeline

    return tiny_cogview4_pipeline(tmp, seed)


CASES += [
    # Both prompts are 16 tokens after GLM's left padding, so the pipeline's batch padding equals
    # FDFO's per-prompt padding here (test_cogview4_* pins the difference for unequal prompts).
    FamilyCase("cogview4", "cogview4", _cogview4, cfg_kwargs=lambda cfg: {"guidance_scale": cfg},
               max_sequence_length=32, train=True, train_overrides={"epochs": 8, "churn_strength": 0.1}),
]


def _ovis_image(tmp, seed):
    from tiny_pipelines_2026b import tiny_ovis_image_pipeline

    return tiny_ovis_image_pipeline(tmp, seed)


CASES += [
    FamilyCase("ovis-image", "ovis_image", _ovis_image, cfg_kwargs=lambda cfg: {"guidance_scale": cfg},
               max_sequence_length=24,
               # (its builder sets the number of template tokens dropped for the byte tokenizer; not saved)
               folder_round_trip=False, train=True, train_overrides={"epochs": 4, "churn_strength": 0.1}),
]


def _bria_fibo(tmp, seed):
    from tiny_pipelines_2026b import tiny_bria_fibo_pipeline

    return tiny_bria_fibo_pipeline(tmp, seed)


CASES += [
    # (plain-text prompts: the JSON-caption warning is expected; its own test checks it)
    FamilyCase("bria-fibo", "bria_fibo", _bria_fibo, cfg_kwargs=lambda cfg: {"guidance_scale": cfg},
               max_sequence_length=24, latent_cell=16, size_multiple=16,
               train=True, train_overrides={"epochs": 4, "churn_strength": 0.1}),
]
