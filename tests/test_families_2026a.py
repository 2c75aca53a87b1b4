"""What the 2026 families of part a (issue 26) do differently, pinned where a trainer gets it wrong.

The shared checks (tests/test_families.py over tests/family_cases_2026a.py) compare each family with
its diffusers pipeline on the harness's prompts and settings; these tests pin what those cannot
see: neutral guidance, prompt rewriting / enhancers that must stay off, CFG renormalisation,
batches of prompts of different lengths, fixed text lengths, time conventions, decoding, size lists,
the authors' step grids, distilled checkpoints. CPU, tiny random models (tests/tiny_pipelines_2026a.py).
Qwen-Image 2.1's tests need torchvision (its Qwen3VLProcessor) and are skipped without it.
"""

from __future__ import annotations

import pytest
import torch

import family_harness as H
from family_cases import CASES_BY_ID
from fdfo_core.families import FamilyError, FamilyOptions, get_family

PROMPTS = ["a red circle", "two blue squares in a row", "x"]  # 3, 7 and 1 word tokens


def seeds_kwargs(seeds):
    return dict(generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """VAE images in [-1, 1] -> [0, 1], as the backend's `decode` returns them."""
    return (images / 2 + 0.5).clamp(0, 1)


def alone_vs_batch(backend, prompts=PROMPTS):
    """Velocities of a batch of prompts of different lengths, and of each prompt alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(prompts), *backend.latent_shape(64, 64), generator=g)
    t = torch.tensor([0.9, 0.5, 0.2][: len(prompts)])
    with torch.no_grad():
        v = backend.velocity(x, t, backend.encode_prompts(prompts))
        alone = torch.cat([backend.velocity(x[i:i + 1], t[i:i + 1], backend.encode_prompts([p]))
                           for i, p in enumerate(prompts)])
    return v, alone


# --- Krea 2 ------------------------------------------------------------------------------------------


def test_krea2_guides_whenever_its_scale_is_above_zero(tmp_path, one_thread):
    """Krea 2's neutral guidance is g = 0: its pipeline at g = 1 already guides (v_c + 1 (v_c - v_u)),
    which is FDFO's cfg_scale 2, not "no CFG"."""
    case = CASES_BY_ID["krea2"]
    backend = H.make_backend(case, tmp_path, add_adapter=False)
    pipe, prompts = backend.pipe, H.PROMPTS[:2]
    kwargs = dict(prompt=prompts, num_inference_steps=3, height=64, width=64, max_sequence_length=8)
    with torch.no_grad():
        at_one = pipe(guidance_scale=1.0, **kwargs, **seeds_kwargs([11, 12])).images
        at_zero = pipe(guidance_scale=0.0, **kwargs, **seeds_kwargs([11, 12])).images
    plain = H.generate_images(backend, prompts, [11, 12], 3, 64, 64)
    doubled = H.generate_images(backend, prompts, [11, 12], 3, 64, 64, cfg_scale=2.0)
    assert (plain - at_zero).abs().max() < 1e-4
    assert (doubled - at_one).abs().max() < 1e-4 and (at_one - at_zero).abs().max() > 1e-2


def test_krea2_text_is_4d_padded_inside_the_template_and_masked(tmp_path, one_thread):
    """Stacked per-layer text features [B, L, layers, D] at exactly max_sequence_length tokens; the
    padding sits between the prompt and the template's suffix and is masked, so a prompt's velocity
    does not depend on the other prompts of its batch."""
    backend = H.make_backend(CASES_BY_ID["krea2"], tmp_path, add_adapter=False, max_sequence_length=12)
    cond = backend.encode_prompts(PROMPTS)
    config = backend.transformer.config
    assert tuple(cond["prompt_embeds"].shape) == (3, 12, config.num_text_layers, config.text_hidden_dim)
    # prompt tokens + the 5 suffix tokens are real; the padding before the suffix is not
    assert cond["prompt_mask"].sum(dim=1).tolist() == [3 + 5, 7 + 5, 1 + 5]
    assert cond["prompt_mask"][0].tolist() == [1, 1, 1] + [0] * 4 + [1] * 5
    v, alone = alone_vs_batch(backend)
    assert (v - alone).abs().max() < 1e-5 * alone.abs().max()


def test_krea2_turbo_uses_its_fixed_shift_and_is_flagged_distilled(tmp_path):
    """The distilled Turbo checkpoint (is_distilled) samples with mu = 1.15 whatever the size; the base
    model's mu follows the image tokens. The family names Turbo as distilled (issue 26 item 4)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from tiny_pipelines_2026a import tiny_krea2_pipeline

    family = get_family("krea2")
    base = tiny_krea2_pipeline(tmp_path, 0)
    turbo = tiny_krea2_pipeline(tmp_path, 0, is_distilled=True)
    assert family.diffusers_distilled(base) is None and "Turbo" in family.diffusers_distilled(turbo)

    def grid(mu):
        s = FlowMatchEulerDiscreteScheduler.from_config(base.scheduler.config)
        s.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=mu)
        return s.sigmas

    assert torch.allclose(family.diffusers_sigmas(turbo, 4, 64, 64), grid(1.15))
    assert torch.allclose(family.diffusers_sigmas(turbo, 4, 1024, 1024), grid(1.15))
    assert not torch.allclose(family.diffusers_sigmas(base, 4, 64, 64), grid(1.15))


# --- ERNIE-Image -------------------------------------------------------------------------------------


def test_ernie_image_never_runs_the_prompt_enhancer(tmp_path, one_thread, monkeypatch):
    """With a prompt enhancer loaded, ErnieImagePipeline rewrites every prompt by default (use_pe=True);
    FDFO's sampling never calls it."""
    backend = H.make_backend(CASES_BY_ID["ernie-image"], tmp_path, add_adapter=False)
    pipe = backend.pipe
    pipe.pe, pipe.pe_tokenizer = pipe.text_encoder, pipe.tokenizer  # stand-ins: "an enhancer is loaded"

    def enhancer(*args, **kwargs):
        raise RuntimeError("prompt enhancer called")

    monkeypatch.setattr(pipe, "_enhance_prompt_with_pe", enhancer)
    with pytest.raises(RuntimeError, match="prompt enhancer called"):
        pipe(prompt=H.PROMPTS[:1], num_inference_steps=1, height=64, width=64, guidance_scale=1.0, output_type="pt")
    images = H.generate_images(backend, H.PROMPTS[:2], [11, 12], 2, 64, 64)
    assert images.shape == (2, 3, 64, 64)


def test_ernie_image_time_text_lengths_and_latent_normalisation(tmp_path, one_thread):
    """Timestep 1000 t; rows of different prompt lengths give what each gives alone (the transformer
    masks by `text_lens`); decoding uses the pipeline's hard-coded batch-norm eps 1e-5, not the VAE's."""
    backend = H.make_backend(CASES_BY_ID["ernie-image"], tmp_path, add_adapter=False, max_sequence_length=16)
    pipe = backend.pipe
    v, alone = alone_vs_batch(backend)
    assert (v - alone).abs().max() < 1e-5 * alone.abs().max()
    x = torch.randn(1, *backend.latent_shape(64, 64), generator=torch.Generator().manual_seed(1))
    cond = backend.encode_prompts(["a red circle"])
    with torch.no_grad():
        ours = backend.velocity(x, torch.tensor([0.25]), cond)
        lens = cond["prompt_mask"].sum(dim=1)
        at_1000t = pipe.transformer(hidden_states=x, timestep=torch.tensor([250.0]), text_bth=cond["prompt_embeds"][:, :3],
                                    text_lens=lens, return_dict=False)[0]
        at_t = pipe.transformer(hidden_states=x, timestep=torch.tensor([0.25]), text_bth=cond["prompt_embeds"][:, :3],
                                text_lens=lens, return_dict=False)[0]
    assert (ours - at_1000t).abs().max() < 1e-5 and (ours - at_t).abs().max() > 1e-2
    assert pipe.vae.config.batch_norm_eps != 1e-5  # the case would not see a wrong eps otherwise
    with torch.no_grad():
        images = backend.decode(x)
        raw = pipe.vae.bn.running_var.view(1, -1, 1, 1)
        z = x * torch.sqrt(raw + 1e-5) + pipe.vae.bn.running_mean.view(1, -1, 1, 1)
        theirs = pipe.vae.decode(pipe._unpatchify_latents(z), return_dict=False)[0]
    assert (images - to_unit(theirs)).abs().max() < 1e-5


# --- LongCat-Image -----------------------------------------------------------------------------------


def test_longcat_never_rewrites_prompts_and_keeps_its_512_text_tokens(tmp_path, one_thread, monkeypatch):
    """LongCatImagePipeline rewrites prompts with its text encoder by default (enable_prompt_rewrite);
    FDFO never does. Its text is always the pipeline's 512 tokens (the image RoPE starts there),
    whatever max_sequence_length says."""
    backend = H.make_backend(CASES_BY_ID["longcat-image"], tmp_path, add_adapter=False, max_sequence_length=8)
    pipe = backend.pipe

    def rewrite(*args, **kwargs):
        raise RuntimeError("prompt rewriting called")

    monkeypatch.setattr(pipe, "rewire_prompt", rewrite)
    with pytest.raises(RuntimeError, match="prompt rewriting called"):
        pipe(prompt=H.PROMPTS[:1], num_inference_steps=1, height=64, width=64, guidance_scale=1.0, output_type="pt")
    cond = backend.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].shape[1] == 512 == pipe.tokenizer_max_length
    v, alone = alone_vs_batch(backend)
    assert (v - alone).abs().max() < 1e-5 * alone.abs().max()


def test_longcat_cfg_is_plain_cfg_not_the_pipelines_renormalised_one(tmp_path, one_thread):
    """FDFO's CFG is v_u + w (v_c - v_u): the pipeline's with enable_cfg_renorm=False. Its default
    renormalisation gives other images (documented, not applied)."""
    case = CASES_BY_ID["longcat-image"]
    backend = H.make_backend(case, tmp_path, add_adapter=False)
    pipe, prompts = backend.pipe, H.PROMPTS[:2]
    kwargs = dict(prompt=prompts, num_inference_steps=3, height=64, width=64, guidance_scale=4.0,
                  enable_prompt_rewrite=False)
    with torch.no_grad():
        renorm = pipe(**kwargs, **seeds_kwargs([11, 12])).images
        plain = pipe(enable_cfg_renorm=False, **kwargs, **seeds_kwargs([11, 12])).images
    ours = H.generate_images(backend, prompts, [11, 12], 3, 64, 64, cfg_scale=4.0)
    assert (ours - plain).abs().max() < 1e-4 and (renorm - plain).abs().max() > 1e-3


def test_longcat_image_edit_pipeline_is_refused_with_what_it_needs(tmp_path):
    import json

    from fdfo_core.backends.interface import BackendError
    from fdfo_core.backends.diffusers_backend import check_supported

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "LongCatImageEditPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    with pytest.raises(BackendError, match="LongCatImageEditPipeline.*input image to edit"):
        check_supported(folder)


# --- Kandinsky 5 -------------------------------------------------------------------------------------


def test_kandinsky5_rows_are_their_prompt_alone_not_the_pipelines_padded_batch(tmp_path, one_thread):
    """The pipeline pads a batch to its longest prompt and masks nothing, so a short prompt's image
    changes with its batch; FDFO gives each row what the pipeline gives the prompt alone."""
    case = CASES_BY_ID["kandinsky5-image"]
    backend = H.make_backend(case, tmp_path, add_adapter=False, max_sequence_length=16)
    pipe, prompts = backend.pipe, ["a red circle", "two blue squares in a row"]
    v, alone = alone_vs_batch(backend, prompts)
    assert (v - alone).abs().max() < 1e-5 * alone.abs().max()
    kwargs = dict(num_inference_steps=3, height=64, width=64, guidance_scale=1.0, max_sequence_length=16)
    with torch.no_grad():
        batch = pipe(prompt=prompts, **kwargs, **seeds_kwargs([11, 12])).image
        single = torch.cat([pipe(prompt=[p], **kwargs, **seeds_kwargs([s])).image for p, s in zip(prompts, [11, 12])])
    ours = H.generate_images(backend, prompts, [11, 12], 3, 64, 64)
    assert (ours - single).abs().max() < 1e-4
    assert (batch[0] - single[0]).abs().max() > 1e-3  # the padded batch changes the short prompt's image


def test_kandinsky5_refuses_sizes_its_pipeline_would_replace(tmp_path):
    """Kandinsky5T2IPipeline replaces a size outside its list by the nearest listed aspect ratio
    (silently); FDFO refuses it and names the list. Latents are channel-last for the model and the
    VAE shift factor is not applied."""
    backend = H.make_backend(CASES_BY_ID["kandinsky5-image"], tmp_path, add_adapter=False)
    assert backend.sigmas(4, 64, 64).shape == (5,)
    with pytest.raises(FamilyError, match=r"64x96.*silently replaces 128x128"):
        backend.sigmas(4, 128, 128)
    pipe = backend.pipe
    pipe.resolutions = [(1024, 1024)]
    with pytest.raises(FamilyError, match="1024x1024"):
        backend.sigmas(4, 512, 512)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backend.decode(x)
        theirs = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
        with_shift = pipe.vae.decode(x / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
    assert (ours - to_unit(theirs)).abs().max() < 1e-5 and (ours - to_unit(with_shift)).abs().max() > 1e-3


# --- Qwen-Image 2.1 ----------------------------------------------------------------------------------


def test_qwen_image21_rows_are_their_prompt_alone_and_the_pipelines_batch_is_not(tmp_path, one_thread):
    """The image's RoPE frame position follows the padded text: the pipeline's batch of prompts of
    different lengths gives a short prompt another image than it gets alone. FDFO gives the alone one;
    the KV cache the pipeline uses is only a shortcut (same images with and without it)."""
    case = CASES_BY_ID["qwen-image21"]
    backend = H.make_backend(case, tmp_path, add_adapter=False, max_sequence_length=48)
    pipe, prompts = backend.pipe, ["a red circle", "two blue squares in a row"]
    v, alone = alone_vs_batch(backend, prompts)
    assert (v - alone).abs().max() < 1e-5 * alone.abs().max()
    kwargs = dict(num_inference_steps=3, height=64, width=64)
    with torch.no_grad():
        batch = pipe(prompt=prompts, **kwargs, **seeds_kwargs([11, 12])).images
        single = torch.cat([pipe(prompt=[p], **kwargs, **seeds_kwargs([s])).images for p, s in zip(prompts, [11, 12])])
        uncached = torch.cat([pipe(prompt=[p], use_kv_cache=False, **kwargs, **seeds_kwargs([s])).images
                              for p, s in zip(prompts, [11, 12])])
    ours = H.generate_images(backend, prompts, [11, 12], 3, 64, 64)
    assert (ours - case.pipeline_images(type("Out", (), {"images": single}))).abs().max() < 1e-4
    assert (single - uncached).abs().max() < 1e-4
    assert (batch[0] - single[0]).abs().max() > 1e-3


def test_qwen_image21_rgba_is_composited_over_white(tmp_path, one_thread):
    """The VAE decodes RGBA: the reward sees rgb * alpha + white * (1 - alpha); a transparent latent
    decodes to white, whatever its colour."""
    from fdfo_core.families.qwen_image21 import composite_over_white

    backend = H.make_backend(CASES_BY_ID["qwen-image21"], tmp_path, add_adapter=False)
    vae = backend.pipe.vae
    rgba = torch.tensor([[[[0.2]], [[-0.4]], [[0.6]], [[-1.0]]], [[[0.2]], [[-0.4]], [[0.6]], [[1.0]]]])
    out = composite_over_white(rgba)
    assert torch.allclose(out[0].flatten(), torch.ones(3)) and torch.allclose(out[1].flatten(), rgba[1, :3].flatten())
    x = torch.randn(1, *backend.latent_shape(64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = backend.decode(x)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        z = x.unsqueeze(2) * torch.tensor(vae.config.latents_std).view(shape) + torch.tensor(vae.config.latents_mean).view(shape)
        raw = vae.decode(z).sample[:, :, 0]
    assert raw.shape[1] == 4 and images.shape[1] == 3
    assert (images - to_unit(composite_over_white(raw))).abs().max() < 1e-6
    assert (images - to_unit(raw[:, :3])).abs().max() > 1e-3


def test_qwen_image21_follows_the_authors_grid_and_refuses_another_step_count(tmp_path):
    """A pipeline config with `sample_sigmas` samples that grid whatever num_inference_steps says:
    FDFO uses it at its own length and refuses other step counts; a grid of <= 8 steps is Turbo."""
    backend = H.make_backend(CASES_BY_ID["qwen-image21"], tmp_path, add_adapter=False)
    pipe, family = backend.pipe, get_family("qwen_image21")
    assert family.diffusers_distilled(pipe) is None
    pipe.register_to_config(sample_sigmas=[1.0, 0.9, 0.6, 0.3])
    grid = backend.sigmas(4, 64, 64)
    with torch.no_grad():
        pipe(prompt=["x"], num_inference_steps=20, height=64, width=64, output_type="latent")
    assert torch.allclose(grid, pipe.scheduler.sigmas.float()) and len(grid) == 5
    with pytest.raises(FamilyError, match="--num-steps 4"):
        backend.sigmas(6, 64, 64)
    assert "Turbo" in family.diffusers_distilled(pipe)


# --- all five ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["krea2", "ernie_image", "longcat_image", "kandinsky5_image", "qwen_image21"])
def test_presets_and_cli_recognition(name, tmp_path):
    """Each family has a preset of its pipeline's defaults, `fdfo train --model` accepts its folder
    (model_index.json), and its conditioning shapes stand in for the text encoders."""
    import json

    from fdfo_core.backends.diffusers_backend import check_supported
    from fdfo_core.config import load_config

    family = get_family(name)
    config = load_config(family.preset_name)
    assert (config.height, config.width) == (1024, 1024) and config.num_steps == family.preset["num_steps"]
    for cls in family.diffusers_pipelines:
        folder = tmp_path / cls
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps(
            {"_class_name": cls, "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
        assert check_supported(folder) == name
    assert callable(getattr(family, "diffusers_distilled", None))
    assert family.options(FamilyOptions()).max_sequence_length == family.max_sequence_length
