"""What the 2026 families of part b do differently, pinned (issue 26 item 2; the shared checks are
tests/test_families.py on the cases of tests/family_cases_2026b.py), and the pipelines refused by
class with their reason."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import family_harness as H
from family_cases import CASES_BY_ID
from fdfo_core.families import FamilyOptions, all_families, get_family

CPU = torch.device("cpu")


# --- refusals ------------------------------------------------------------------------------------------


def test_refused_pipelines_are_real_classes_no_family_claims():
    import diffusers

    from fdfo_core.families.refused import REFUSED_PIPELINES

    claimed = {p for f in all_families() for p in (*f.diffusers_pipelines, *f.diffusers_needs_input)}
    known = set(dir(diffusers))  # the lazy module's names (importing every pipeline takes half a minute)
    for cls_name in REFUSED_PIPELINES:
        assert cls_name in known, cls_name
        assert cls_name not in claimed, cls_name


@pytest.mark.parametrize("cls_name, reason", [
    ("GlmImagePipeline", "autoregressive"),
    ("Ideogram4Pipeline", "unconditional transformer"),
    ("SanaSprintPipeline", "SanaPipeline"),
    ("PRXPixelPipeline", "x-prediction"),
    ("Kandinsky6TI2VAPipeline", "video"),
    ("DiffusionGemmaPipeline", "not an image model"),
])
def test_refused_pipelines_name_the_reason(cls_name, reason, tmp_path):
    from fdfo_core.backends.interface import BackendError
    from fdfo_core.backends.diffusers_backend import check_supported

    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": cls_name, "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    with pytest.raises(BackendError) as e:
        check_supported(tmp_path)
    assert cls_name in str(e.value) and reason in str(e.value) and "Supported families" in str(e.value)


# --- Sana --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sana(tmp_path_factory):
    return H.make_backend(CASES_BY_ID["sana"], tmp_path_factory.mktemp("sana"), add_adapter=False)


def test_sana_prompts_carry_the_complex_human_instruction_and_the_empty_prompt_does_not(sana):
    """The pipeline prepends its instruction to prompts (not to its negative prompt): FDFO's rows are
    the pipeline's, and the instruction changes them (a trainer that drops it trains another model)."""
    from fdfo_core.families.sana import complex_human_instruction

    pipe, length = sana.pipe, CASES_BY_ID["sana"].max_sequence_length
    instruction = complex_human_instruction(pipe)
    assert instruction and len(pipe.tokenizer.encode("\n".join(instruction))) > 10 * length
    cond = sana.encode_prompts(["a red circle", ""])
    with torch.no_grad():
        with_it = pipe.encode_prompt(["a red circle"], False, device=CPU, max_sequence_length=length,
                                     complex_human_instruction=instruction)
        without = pipe.encode_prompt(["a red circle"], False, device=CPU, max_sequence_length=length,
                                     complex_human_instruction=None)
        negative = pipe._get_gemma_prompt_embeds([""], CPU, torch.float32, max_sequence_length=length,
                                                 complex_human_instruction=False)
    assert torch.equal(cond["prompt_embeds"][:1], with_it[0]) and torch.equal(cond["prompt_mask"][:1], with_it[1])
    assert (with_it[0] - without[0]).abs().max() > 1e-2
    assert torch.equal(cond["prompt_embeds"][1:], negative[0]) and torch.equal(cond["prompt_mask"][1:], negative[1])


def test_sana_grid_is_the_dpm_solvers_and_the_model_sees_integer_steps(sana):
    """The time grid is DPM-Solver's flow grid (Sana ships order 2; FDFO integrates the grid with its
    own solver); the transformer gets floor(1000 t), as the scheduler's int64 timesteps give it."""
    from types import SimpleNamespace

    from diffusers import DPMSolverMultistepScheduler

    shipped = DPMSolverMultistepScheduler.from_config(sana.pipe.scheduler.config, solver_order=2)
    sigmas = sana.model_family.diffusers_sigmas(SimpleNamespace(scheduler=shipped), 6, 128, 128)
    fresh = DPMSolverMultistepScheduler.from_config(shipped.config)
    fresh.set_timesteps(6)
    assert torch.allclose(sigmas, fresh.sigmas.float()) and 0.99 < float(sigmas[0]) < 1.0 and float(sigmas[-1]) == 0
    assert fresh.timesteps.dtype == torch.int64 and torch.equal(fresh.timesteps, (fresh.sigmas[:-1] * 1000).long())
    x = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = sana.encode_prompts(["a red circle"])
    with torch.no_grad():
        v = [sana.velocity(x, torch.tensor([t]), cond) for t in (0.5004, 0.5009, 0.5011)]
        direct = sana.transformer(x, encoder_hidden_states=cond["prompt_embeds"], timestep=torch.tensor([500.0]),
                                  encoder_attention_mask=cond["prompt_mask"], return_dict=False)[0]
    assert torch.equal(v[0], v[1]) and torch.allclose(v[0], direct, atol=1e-6) and (v[2] - v[0]).abs().max() > 1e-4


def test_sana_never_bins_the_requested_size(sana):
    """The pipeline's resolution binning would replace 128 x 128 by a bin of its table; FDFO samples
    the size it is asked for (32 px multiples, the DC-AE's 32x)."""
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_1024_BIN

    assert sana.pipe.image_processor.classify_height_width_bin(128, 128, ratios=ASPECT_RATIO_1024_BIN) != (128, 128)
    assert sana.latent_shape(128, 96) == (32, 4, 3) and sana.image_size_rule().multiple == 32


# --- CogView4 ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cogview4(tmp_path_factory):
    return H.make_backend(CASES_BY_ID["cogview4"], tmp_path_factory.mktemp("cogview4"), add_adapter=False)


def test_cogview4_prompt_padding_does_not_depend_on_the_batch(cogview4):
    """The pipeline left-pads a batch to its longest prompt, unmasked, so a short prompt's image
    changes with its batch-mates; FDFO encodes each prompt alone, and a mixed batch's velocities are
    each prompt's own."""
    pipe, long = cogview4.pipe, "a green triangle above two blue squares beside a red circle"
    cond = cogview4.encode_prompts(["a red circle", long])
    alone = cogview4.encode_prompts(["a red circle"])
    assert cond["prompt_mask"].sum(dim=1).tolist() == [16, 32]  # multiples of 16 (GLM's own padding)
    with torch.no_grad():
        batch, _ = pipe.encode_prompt(["a red circle", long], do_classifier_free_guidance=False, device=CPU)
        single, _ = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False, device=CPU)
    assert torch.allclose(cond["prompt_embeds"][0, :16], single[0], atol=1e-6)
    assert batch.shape[1] == 32 and (batch[0, -16:] - single[0]).abs().max() > 1e-3  # the batch changes it
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        mixed = cogview4.velocity(x, t, cond)
        first = cogview4.velocity(x[:1], t[:1], alone)
    assert torch.allclose(mixed[:1], first, atol=1e-5)


def test_cogview4_model_time_is_the_unshifted_integer_step(cogview4):
    """The pipeline's transformer sees int(linspace(1000, 1, n)) while the solver moves on the shifted
    sigmas; FDFO inverts the shift at any t (not only on the grid)."""
    pipe, family = cogview4.pipe, cogview4.model_family
    for size, steps in ((64, 4), (128, 7)):
        h = size // 8
        sigmas = family.diffusers_sigmas(pipe, steps, size, size)
        expected = torch.linspace(1000, 1, steps).double().floor()  # the pipeline's int64 cast
        model_t = family.model_time(pipe, sigmas[:-1], h, h)
        assert torch.allclose(model_t, expected, atol=1e-3), (model_t, expected)
        assert abs(float(sigmas[1]) - float(expected[1]) / 1000) > 1e-2  # the grid itself is shifted


def test_cogview4_size_micro_conditions_are_the_sampled_size(cogview4):
    x = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.6])
    cond = cogview4.encode_prompts(["a red circle"])
    emb = cond["prompt_embeds"][:, :16]
    timestep = cogview4.model_family.model_time(cogview4.pipe, t, 8, 12).float()

    def call(size):
        s = torch.tensor([size], dtype=torch.float32)
        return cogview4.transformer(hidden_states=x, encoder_hidden_states=emb, timestep=timestep, original_size=s,
                                    target_size=s, crop_coords=torch.zeros(1, 2), return_dict=False)[0]

    with torch.no_grad():
        ours = cogview4.velocity(x, t, cond)
        right, wrong = call([64, 96]), call([96, 64])
    assert torch.allclose(ours, right, atol=1e-6) and (ours - wrong).abs().max() > 1e-3


# --- Ovis-Image ------------------------------------------------------------------------------------------------


def test_ovis_image_drops_the_template_and_system_prompt_tokens(tmp_path):
    """The pipeline drops a fixed number of leading tokens (28 for Qwen's tokenizer: the chat header
    and its system prompt); what is left starts at the prompt's first token and its padding is zero."""
    backend = H.make_backend(CASES_BY_ID["ovis-image"], tmp_path, add_adapter=False)
    pipe, length = backend.pipe, 64
    assert pipe.system_prompt.startswith("Describe the image") and pipe.user_prompt_begin_id > len(pipe.system_prompt)
    text = pipe._get_messages(["a red circle"])[0]
    ids = pipe.tokenizer(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        full = pipe.text_encoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
    options = backend.model_family.options(FamilyOptions(max_sequence_length=length))
    with torch.no_grad():
        cond = backend.model_family.diffusers_encode_prompts(pipe, ["a red circle"], CPU, options)
    n = len(ids) - pipe.user_prompt_begin_id
    assert n < length
    assert pipe.tokenizer.decode(ids[pipe.user_prompt_begin_id:pipe.user_prompt_begin_id + 12]) == "a red circle"
    assert cond["prompt_embeds"].shape[1] == length
    assert torch.allclose(cond["prompt_embeds"][0, :n], full[pipe.user_prompt_begin_id:], atol=1e-5)
    assert float(cond["prompt_embeds"][0, n:].abs().max()) == 0.0  # zeroed, not masked


def test_ovis_image_in_comfyui_is_refused_by_the_flux_family():
    """ComfyUI v0.8.0 loads Ovis-Image as its Flux model (text norm, yak MLPs): the Flux family must
    not train it as Flux.1; the refusal says to use `fdfo train`. (Duck-typed ComfyUI model.)"""
    from types import SimpleNamespace

    from fdfo_core.families import FamilyError

    def base(txt_norm):
        dm = SimpleNamespace(patch_size=2, img_in=SimpleNamespace(weight=torch.zeros(8, 64)), out_channels=64,
                             txt_norm=txt_norm)
        return SimpleNamespace(diffusion_model=dm)

    flux = get_family("flux")
    flux.comfy_check(base(None))  # Flux.1 itself
    with pytest.raises(FamilyError, match="Ovis-Image.*fdfo train"):
        flux.comfy_check(base(torch.nn.Identity()))


# --- Bria FIBO ----------------------------------------------------------------------------------------------------


def test_bria_fibo_feeds_one_text_layer_per_block():
    from fdfo_core.families.bria_fibo import block_layers

    # FIBO: SmolLM3-3B (36 layers: 37 hidden states) for 8 + 38 blocks: the last one repeated
    assert block_layers(37, 46) == list(range(37)) + [36] * 9
    assert block_layers(5, 3) == [2, 3, 4]


def test_bria_fibo_conditioning_layers_mask_and_json_warning(tmp_path):
    backend = H.make_backend(CASES_BY_ID["bria-fibo"], tmp_path, add_adapter=False)
    pipe = backend.pipe
    caption = json.dumps({"short_description": "a red circle", "objects": []})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cond = backend.encode_prompts([caption, ""])
    assert not caught  # JSON captions and the empty prompt: no warning
    with pytest.warns(UserWarning, match="JSON captions"):
        backend.encode_prompts(["a red circle"])
    blocks = pipe.transformer.config.num_layers + pipe.transformer.config.num_single_layers
    assert cond["prompt_layers"].shape[:2] == (2, blocks) and cond["prompt_mask"][1].sum() == 1  # "" is BOS alone
    with torch.no_grad():
        _, layers, _ = pipe.get_prompt_embeds([caption], max_sequence_length=24, device=CPU)
    n = int(cond["prompt_mask"][0].sum())
    assert torch.equal(cond["prompt_layers"][0, -1, :n], layers[-1][0]) and torch.equal(
        cond["prompt_layers"][0, -2, :n], layers[-1][0])  # the last hidden state repeated for the third block
    assert torch.equal(cond["prompt_layers"][0, 0, :n], layers[0][0])
