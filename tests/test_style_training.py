"""Training with the reference reward, from the command line, on the shipped toy model: held-out
images move toward the references."""

from __future__ import annotations

import json

import pytest
import torch

import reward_fixtures as rf
from fdfo_core.cli.main import main
from fdfo_core.files.drawing import to_pil

pytestmark = pytest.mark.usefixtures("one_thread")

#: The style: the toy's own scenes multiplied by a warm orange (as in the toy style workflow).
TINT = torch.tensor([1.0, 0.8, 0.55]).view(1, 3, 1, 1)
PROMPTS = 4
EPOCHS = 8


@pytest.fixture(autouse=True)
def _isolated_lookup(monkeypatch, tmp_path):
    monkeypatch.delenv("FDFO_REWARDS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))


def toy_generator():
    from fdfo_core.backends.diffusers_backend import DiffusersBackend, load_pipeline
    from fdfo_core.config import load_config
    from fdfo_core.backends.generation import generate_images
    from fdfo_core.toy import TOY_MAX_SEQUENCE_LENGTH, default_toy_model_path

    cfg = load_config("toy")
    pipe = load_pipeline(default_toy_model_path())

    def generate(prompts, seeds, lora=None):
        if lora is not None:
            from fdfo_core.backends.diffusers_backend import load_lora_into_pipeline

            load_lora_into_pipeline(pipe, lora)
        backend = DiffusersBackend(pipe, cfg.replace(lora_rank=1), max_sequence_length=TOY_MAX_SEQUENCE_LENGTH,
                                   add_adapter=False)
        return generate_images(backend, prompts, seeds, cfg.num_steps, cfg.height, cfg.width, cfg.cfg_scale, batch_size=64)

    return generate


@pytest.mark.slow
def test_toy_training_moves_held_out_images_toward_the_references(tmp_path, capsys):
    from fdfo_core.rewards import build_reward
    from fdfo_core.toy import toy_prompt_sets

    prompts = toy_prompt_sets()[0][:PROMPTS]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    generate = toy_generator()
    # References: 4 scenes of each prompt in the warm style (seeds the training never uses).
    refs = tmp_path / "refs"
    refs.mkdir()
    ref_prompts = [p for p in prompts for _ in range(4)]
    ref_images = generate(ref_prompts, range(50_000, 50_000 + len(ref_prompts))) * TINT
    for i, im in enumerate(ref_images):
        to_pil(im).save(refs / f"{i:02d}.png")
    encoder = rf.write_dinov2_folder(tmp_path / "dinov2", seed=0)

    run = tmp_path / "run"
    opts = [f"reference.images={refs}", f"reference.path={encoder}", "reference.aggregation=mean_embedding"]
    rc = main(["train", "--prompts", str(tmp_path / "prompts.txt"), "--reward", "reference",
               *[a for o in opts for a in ("--reward-opt", o)], "--run-dir", str(run), "--epochs", str(EPOCHS),
               "--pairs-per-epoch", "16", "--lr", "1e-3", "--preview-every", "0", "--checkpoint-every", "0",
               "--no-progress", "--threads", "1"])
    assert rc == 0
    recorded = json.loads((run / "run.json").read_text())["definition"]["reward_options"]["reference"]
    assert recorded["aggregation"] == "mean_embedding"
    assert recorded["images"]["source"] == str(refs) and recorded["images"]["count"] == 16

    # Held-out images: the same prompts with seeds never used in training, base model vs LoRA.
    held_prompts = [p for p in prompts for _ in range(16)]
    seeds = list(range(900_000, 900_000 + len(held_prompts)))
    base = generate(held_prompts, seeds)
    trained = generate(held_prompts, seeds, lora=run / "lora.safetensors")
    reward = build_reward("reference", {"reference": {"images": str(refs), "path": str(encoder),
                                                      "aggregation": "mean_embedding"}})
    scores_base, scores_trained = reward(base, held_prompts), reward(trained, held_prompts)
    gain = scores_trained - scores_base
    mean, se = float(gain.mean()), float(gain.std() / len(gain) ** 0.5)
    before, after = float(scores_base.mean()), float(scores_trained.mean())

    def blue_red(x):  # the tint's own measure, for the record: the encoder's closeness is not only colour
        return float((x[:, 2].mean((1, 2)) / x[:, 0].mean((1, 2)).clamp_min(1e-3)).mean())

    with capsys.disabled():
        print(f"\nreference reward on {len(gain)} held-out images: {before:.2f} -> {after:.2f}, paired gain "
              f"{mean:+.3f} +- {se:.3f} (s.e.) after {EPOCHS} epochs of 16 pairs; blue/red ratio "
              f"{blue_red(base):.3f} -> {blue_red(trained):.3f} (references {blue_red(ref_images):.3f})")
    assert mean > 2 * se


def test_cli_trains_with_the_reference_reward_on_a_tiny_model(tmp_path):
    """`--reward reference --reward-opt reference.images=DIR` end to end on a tiny SD3 (one epoch)."""
    from tiny_pipelines import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "sd3")
    (tmp_path / "sd3" / "fdfo.json").write_text(json.dumps({"max_sequence_length": 8, "height": 64}))
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, im in enumerate(rf.palette_images(3, [0.6, 0.3, 0.05], size=48)):
        to_pil(im).save(refs / f"{i}.png")
    clip = rf.write_clip_folder(tmp_path / "clip", pad_token="<|endoftext|>")
    (tmp_path / "prompts.txt").write_text("a red circle\ntwo blue squares\n")
    run = tmp_path / "run"
    rc = main(["train", "--model", str(tmp_path / "sd3"), "--prompts", str(tmp_path / "prompts.txt"),
               "--reward", "reference", "--reward-opt", f"reference.images={refs}", "--reward-opt",
               f"reference.path={clip}", "--reward-opt", "reference.prompt_weight=0.5", "--run-dir", str(run),
               "--preset", "toy", "--epochs", "1", "--pairs-per-epoch", "2", "--num-steps", "4", "--lora-rank", "2",
               "--sample-batch-size", "4", "--preview-every", "0", "--no-progress", "--threads", "1"])
    assert rc == 0
    from fdfo_core.backends.lora_files import load_lora

    _, meta = load_lora(run / "lora.safetensors")
    assert meta["reward"].startswith("reference(clip:clip, 3 images, top3, +0.5*prompt")
    # A missing folder is a clear error, not a traceback.
    assert main(["train", "--model", str(tmp_path / "sd3"), "--prompts", str(tmp_path / "prompts.txt"), "--reward",
                 "reference", "--reward-opt", f"reference.images={tmp_path / 'nope'}", "--reward-opt",
                 f"reference.path={clip}", "--run-dir", str(tmp_path / "run2"), "--epochs", "1"]) == 2
