import json

import pytest
import torch
from safetensors import safe_open

from fdfo_core.backends.interface import BackendError
from fdfo_core.backends.diffusers_backend import (
    DiffusersBackend,
    build_backend,
    load_lora_into_pipeline,
    load_pipeline,
)
from fdfo_core.config import load_config
from fdfo_core.backends.lora_files import LoraFileError, load_lora
from fdfo_core.rewards import build_reward
from fdfo_core.run.hooks import Callbacks
from fdfo_core.methods import FDFOTrainer

from tiny_pipelines import tiny_flux_pipeline, tiny_sd3_pipeline

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


def tiny_config(**over):
    values = dict(epochs=1, pairs_per_epoch=4, num_steps=4, sample_batch_size=4, train_batch_size=32,
                  lora_rank=4, lora_alpha=8.0, checkpoint_every=0, lr=1e-2)
    values.update(over)
    return load_config("toy", overrides=values)


def make_backend(family, tmp_path, **over):
    pipe = tiny_sd3_pipeline(tmp_path) if family == "sd3" else tiny_flux_pipeline(tmp_path)
    torch.manual_seed(0)
    return DiffusersBackend(pipe, tiny_config(**over), max_sequence_length=8)


def perturb_lora(backend, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backend.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_lora_file_reloads_into_a_fresh_pipeline_with_identical_velocities(family, tmp_path):
    backend = make_backend(family, tmp_path)
    perturb_lora(backend)
    reward = build_reward("brightness")
    trainer = FDFOTrainer(backend, reward, PROMPTS, backend.config, callbacks=Callbacks(log=None))
    path = trainer.save_lora(tmp_path / "lora.safetensors")

    tensors, meta = load_lora(path)
    assert meta["base_model_family"] == family and meta["reward"] == "brightness"
    assert meta["lora_rank"] == 4 and meta["cfg_scale"] == 1.0 and "config" in meta
    assert all(k.startswith("diffusion_model.") for k in tensors)
    alphas = [k for k in tensors if k.endswith(".alpha")]
    assert alphas and len(alphas) * 2 == len(tensors) - len(alphas)
    if family == "sd3":
        assert "diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_up.weight" in tensors
    else:
        assert "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight" in tensors
        assert "diffusion_model.single_blocks.0.linear1.lora_down.weight" in tensors
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["fdfo.config"])["lora_rank"] == 4

    fresh = tiny_sd3_pipeline(tmp_path) if family == "sd3" else tiny_flux_pipeline(tmp_path)
    load_lora_into_pipeline(fresh, path)
    plain = DiffusersBackend(fresh, backend.config, max_sequence_length=8, add_adapter=False)  # no new adapter

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, *backend.latent_shape(64, 64), generator=g)
    t = torch.tensor([0.9, 0.5, 0.1])
    cond = backend.encode_prompts(PROMPTS)
    with torch.no_grad():
        v_trained = backend.velocity(x, t, cond)
        v_loaded = plain.velocity(x, t, cond)
        with backend.adapter_disabled():
            v_base = backend.velocity(x, t, cond)
    assert (v_trained - v_base).abs().max() > 1e-2  # the LoRA matters
    torch.testing.assert_close(v_loaded, v_trained, atol=2e-5, rtol=1e-5)


def test_a_lora_for_another_architecture_is_refused(tmp_path):
    backend = make_backend("sd3", tmp_path)
    trainer = FDFOTrainer(backend, build_reward("brightness"), PROMPTS, backend.config, callbacks=Callbacks(log=None))
    path = trainer.save_lora(tmp_path / "sd3.safetensors")
    with pytest.raises(LoraFileError, match="LoRA for a sd3 model"):
        load_lora_into_pipeline(tiny_flux_pipeline(tmp_path), path)


def test_flux_backend_trains_an_epoch(tmp_path):
    backend = make_backend("flux", tmp_path)
    assert backend.family == "flux" and backend.latent_shape(64, 64) == (16, 8, 8)
    sig = backend.sigmas(4, 64, 64)
    assert sig.shape == (5,) and sig[0] == 1 and sig[-1] == 0
    trainer = FDFOTrainer(backend, build_reward("brightness"), PROMPTS, backend.config, callbacks=Callbacks(log=None))
    before = [p.detach().clone() for p in backend.trainable_parameters()]
    m = trainer.train_epoch()
    assert m["items"] == 2 * 4 * 4
    assert any(not torch.equal(a, b) for a, b in zip(before, backend.trainable_parameters()))


def test_saved_pipeline_folder_loads_through_build_backend(tmp_path):
    pipe = tiny_sd3_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "fdfo.json").write_text(json.dumps({"max_sequence_length": 8}))
    backend = build_backend(tmp_path / "model", tiny_config())
    assert backend.family == "sd3" and backend.max_sequence_length == 8
    cond = backend.encode_prompts(["a red circle"])
    assert cond["prompt_embeds"].shape[1] == 16 + 8  # CLIP tokens + zero "T5" tokens


def test_unsupported_and_missing_models_get_clear_errors(tmp_path):
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(BackendError, match="StableDiffusionXLPipeline.*SDXL.*diffusion model.*StableDiffusion3Pipeline.*FluxPipeline"):
        load_pipeline(sdxl)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackendError, match="no model_index.json"):
        load_pipeline(empty)
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"x")
    with pytest.raises(BackendError, match="single file"):
        load_pipeline(single)
    with pytest.raises(BackendError, match="cannot find model"):
        load_pipeline("no-such-org/no-such-model-xyz")


def test_a_2d_conv_vae_decodes_channels_last_on_the_cpu_with_the_same_images(tmp_path):
    """The CPU backend stores a 2-D convolutional VAE channels-last (oneDNN's faster layout); the
    images are those of the usual layout up to float rounding, and come back contiguous."""
    from fdfo_core.backends.diffusers_backend import use_channels_last

    be = make_backend("sd3", tmp_path)
    conv = next(m for m in be.pipe.vae.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    latents = torch.randn(3, *be.latent_shape(32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = be.decode(latents)
        be.pipe.vae.to(memory_format=torch.contiguous_format)
        plain = be.decode(latents)
    assert fast.is_contiguous() and fast.shape == plain.shape
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)

    # what is left alone: no convolution, or any 3-D / 1-D convolution (video VAEs)
    assert not use_channels_last(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    video = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv3d(4, 4, 3))
    assert not use_channels_last(video)
    assert video[0].weight.is_contiguous()
    assert use_channels_last(torch.nn.Sequential(torch.nn.ConvTranspose2d(3, 4, 3)))


def test_held_out_images_are_sampled_like_training_and_decoded_in_decode_batches(tmp_path):
    """The held-out evaluation samples 2 x sample_batch_size images a time (training's sampling
    batch) and decodes decode_batch_size a time; the images do not depend on the decode batch."""
    from fdfo_core.run.evaluation import HeldOutSet, sample_heldout

    be = make_backend("sd3", tmp_path)
    held = HeldOutSet(("a red circle", "two blue squares", "a green triangle"), (1, 2))
    sampled, decoded = [], []
    velocity, decode = be.velocity, be.decode
    be.velocity = lambda x, t, c: (sampled.append(x.shape[0]), velocity(x, t, c))[1]
    be.decode = lambda z: (decoded.append(z.shape[0]), decode(z))[1]
    cfg = tiny_config(sample_batch_size=2, decode_batch_size=3, num_steps=2, height=32, width=32)
    images = sample_heldout(be, held, cfg)
    assert images.shape[0] == 6 and set(sampled) == {4, 2} and decoded == [3, 1, 2]
    decoded.clear()
    whole = sample_heldout(be, held, tiny_config(sample_batch_size=2, decode_batch_size=64, num_steps=2,
                                                 height=32, width=32))
    assert decoded == [4, 2]
    assert (images - whole).abs().max() <= 1 / 255 + 1e-6  # 8-bit images: at most one level apart
