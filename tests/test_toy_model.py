"""The shipped toy pipeline: loads in diffusers, generates 64x64 images, and its prompt encoding,
weights and ComfyUI export follow the documented conventions."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import torch  # noqa: E402

from fdfo_core.toy.model import (  # noqa: E402
    SD3_SCALING_FACTOR,
    SD3_SHIFT_FACTOR,
    TOY_MAX_SEQUENCE_LENGTH,
    default_toy_model_path,
    encode_toy_prompts,
    load_toy_pipeline,
)

# FDFO_TOY_MODEL points the tests at another pipeline folder (e.g. a fresh pretraining output).
MODEL = Path(os.environ.get("FDFO_TOY_MODEL") or default_toy_model_path())
PROMPTS = ["two red circles above a blue square on a yellow background", "three green triangles on a white background"]


@pytest.fixture(scope="module")
def pipe():
    return load_toy_pipeline(MODEL)


def test_loads_in_diffusers_and_generates_64px(pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.transformer.dtype == torch.float32
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = pipe(PROMPTS, num_inference_steps=4, guidance_scale=4.0, generator=gens, max_sequence_length=TOY_MAX_SEQUENCE_LENGTH, output_type="pt")
    assert out.images.shape == (2, 3, 64, 64)
    assert out.images.min() >= 0 and out.images.max() <= 1
    latents = pipe(PROMPTS[:1], num_inference_steps=2, max_sequence_length=TOY_MAX_SEQUENCE_LENGTH, output_type="latent").images
    assert latents.shape == (1, 16, 8, 8)


def test_encode_toy_prompts_equals_pipeline(pipe):
    encoders, tokenizers = [pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2]
    dim = pipe.transformer.config.joint_attention_dim
    for msl in (TOY_MAX_SEQUENCE_LENGTH, 16):
        ref, _, ref_pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=msl)
        emb, pooled = encode_toy_prompts(encoders, tokenizers, PROMPTS, max_sequence_length=msl, joint_attention_dim=dim)
        assert emb.shape == ref.shape == (2, 16 + msl, dim)
        assert pooled.shape == ref_pooled.shape == (2, pipe.transformer.config.pooled_projection_dim)
        assert torch.equal(emb, ref) and torch.equal(pooled, ref_pooled)


def test_the_backends_encode_the_toy_with_no_t5_tokens(pipe):
    """max_sequence_length 0 is a length, not "unset": the family's default (256 zero tokens the toy
    never saw: other images, about 7x slower) must not replace it, in the diffusers backend or the
    memory estimate."""
    from fdfo_core.backends.diffusers_backend import DiffusersBackend
    from fdfo_core.config import load_config
    from fdfo_core.families import get_family
    from fdfo_core.families.base import FamilyOptions

    assert get_family("sd3").options(FamilyOptions(max_sequence_length=0)).max_sequence_length == 0
    assert get_family("sd3").options(FamilyOptions()).max_sequence_length == 256
    backend = DiffusersBackend(pipe, load_config("toy"), add_adapter=False, max_sequence_length=TOY_MAX_SEQUENCE_LENGTH)
    cond = backend.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].shape == (2, 16 + TOY_MAX_SEQUENCE_LENGTH, pipe.transformer.config.joint_attention_dim)


def test_weights_conventions_and_size():
    import json

    from safetensors import safe_open

    total = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert total <= 25 * 2**20, f"toy model folder is {total / 2**20:.1f} MB"
    for part in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        (file,) = (MODEL / part).glob("*.safetensors")
        with safe_open(str(file), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}, part
    vae_cfg = json.loads((MODEL / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] == SD3_SCALING_FACTOR and vae_cfg["shift_factor"] == SD3_SHIFT_FACTOR
    assert vae_cfg["latent_channels"] == 16
    tr_cfg = json.loads((MODEL / "transformer" / "config.json").read_text())
    depth = tr_cfg["num_layers"]
    # The only tiny MMDiT shapes ComfyUI's model detection accepts.
    assert tr_cfg["num_attention_heads"] == depth and tr_cfg["attention_head_dim"] == 64
    assert tr_cfg["caption_projection_dim"] == 64 * depth and tr_cfg["in_channels"] == 16
    for tok in ("tokenizer", "tokenizer_2"):
        assert (MODEL / tok / "vocab.json").is_file() and (MODEL / tok / "merges.txt").is_file()


def test_comfyui_export_keys(tmp_path):
    from safetensors.torch import load_file

    from fdfo_core.toy.comfy_export import export_comfyui_files

    files = export_comfyui_files(tmp_path, MODEL)
    assert files.diffusion_model == tmp_path / "diffusion_models" / "fdfo_toy_sd3.safetensors"
    mmdit = load_file(str(files.diffusion_model))
    assert mmdit.keys() == load_file(str(MODEL / "transformer" / "diffusion_pytorch_model.safetensors")).keys()
    vae = load_file(str(files.vae))
    src = load_file(str(MODEL / "vae" / "diffusion_pytorch_model.safetensors"))
    assert len(vae) == len(src) + 2
    assert float(vae["vae_scale"]) == 1.0 and float(vae["vae_shift"]) == 0.0
    assert torch.equal(vae["taesd_decoder.1.weight"], src["decoder.layers.0.weight"])  # Clamp is ComfyUI's layer 0
    assert torch.equal(vae["taesd_encoder.0.weight"], src["encoder.layers.0.weight"])
    assert vae["taesd_decoder.1.weight"].shape[1] == 16  # how ComfyUI reads the latent channels
