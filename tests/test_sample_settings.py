"""`fdfo sample` after training (issue 10, kind 3): with --lora, size, steps, CFG and Flux
guidance default to the LoRA's training settings, each value's source is printed, an explicit
flag wins; a size the model cannot make gets the nearest sizes that work, never a traceback
(also in `fdfo train`, the demo and every generation path)."""

from __future__ import annotations

import argparse
import json

import pytest
from PIL import Image

from fdfo_core.cli.main import main
from fdfo_core.cli.sample import sampling_settings
from fdfo_core.errors import ConfigError
from fdfo_core.config import FDFOConfig
from fdfo_core.flow.image_sizes import ImageSizeError, SizeRule, check_image_size, nearest_sizes

from tiny_pipelines import tiny_flux_pipeline, tiny_sd3_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["--preset", "toy", "--pairs-per-epoch", "2", "--lora-rank", "2", "--sample-batch-size", "2",
         "--checkpoint-every", "0", "--no-progress", "--preview-every", "0", "--epochs", "1",
         "--optimizer-steps-per-epoch", "1", "--reward", "brightness"]


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd3")
    tiny_sd3_pipeline(tmp).save_pretrained(tmp / "sd3")
    (tmp / "sd3" / "fdfo.json").write_text(json.dumps({"max_sequence_length": 8, "height": 64}))
    return tmp / "sd3"


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux")
    tiny_flux_pipeline(tmp).save_pretrained(tmp / "flux")
    return tmp / "flux"


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a red circle\ntwo blue squares\n")
    return p


def sources(out: str) -> dict[str, tuple[str, str]]:
    """{setting: (value, source)} from the table `fdfo sample` prints."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) >= 3 and line.rstrip().endswith(")"):
            rows[parts[0]] = (parts[1], line[line.index("(") + 1 : -1])
    return rows


def test_sample_takes_the_loras_training_settings_and_says_so(sd3_dir, prompts, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", str(sd3_dir), "--prompts", str(prompts), "--run-dir", str(run),
                 "--height", "32", "--width", "48", "--num-steps", "3", "--cfg-scale", "1.5",
                 "--negative-prompt", "blurry", *TRAIN]) == 0
    capsys.readouterr()
    out = tmp_path / "s1"
    assert main(["sample", "--model", str(sd3_dir), "--lora", str(run / "lora.safetensors"), "--prompt", "a red circle",
                 "--out", str(out)]) == 0
    table = sources(capsys.readouterr().out)
    assert table["height"] == ("32", "LoRA metadata") and table["width"] == ("48", "LoRA metadata")
    assert table["num_steps"] == ("3", "LoRA metadata") and table["cfg_scale"] == ("1.5", "LoRA metadata")
    assert table["negative_prompt"] == ("'blurry'", "LoRA metadata")
    assert table["max_sequence_length"][1] == "LoRA metadata"
    assert "flux_guidance" not in table  # an SD3 model has no guidance embedding
    assert Image.open(out / "0000.png").size == (48, 32)  # (width, height)
    recorded = json.loads((out / "settings.json").read_text())
    assert recorded["settings"]["num_steps"] == 3 and recorded["sources"]["height"] == "LoRA metadata"

    # an explicit flag still wins; --height alone asks for a square image
    out2 = tmp_path / "s2"
    assert main(["sample", "--model", str(sd3_dir), "--lora", str(run / "lora.safetensors"), "--prompt", "x",
                 "--height", "64", "--num-steps", "2", "--cfg", "1", "--out", str(out2)]) == 0
    table = sources(capsys.readouterr().out)
    assert table["height"] == ("64", "--height") and table["width"] == ("64", "--height (square)")
    assert table["num_steps"] == ("2", "--num-steps") and table["cfg_scale"] == ("1.0", "--cfg")
    assert Image.open(out2 / "0000.png").size == (64, 64)


def test_sample_without_a_lora_uses_the_model_settings(sd3_dir, tmp_path, capsys):
    assert main(["sample", "--model", str(sd3_dir), "--prompt", "x", "--num-steps", "2", "--out", str(tmp_path / "o")]) == 0
    table = sources(capsys.readouterr().out)
    assert table["height"] == ("64", "model's fdfo.json") and table["num_steps"] == ("2", "--num-steps")
    assert table["cfg_scale"] == ("1.0", "default") and table["max_sequence_length"] == ("8", "model's fdfo.json")


@pytest.mark.parametrize("flags, shown", [
    (["--height", "40", "--width", "72"], "40x72 (height x width) is not a size"),
    (["--height", "8"], "8x8"),
    (["--height", "512"], "512x512"),  # the tiny model stores 16 x 16 patch positions: at most 256 px
])
def test_impossible_sizes_get_the_sizes_that_work(sd3_dir, tmp_path, capsys, flags, shown):
    rc = main(["sample", "--model", str(sd3_dir), "--prompt", "x", "--num-steps", "1", "--out", str(tmp_path / "o"),
               *flags])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "ValueError" not in err
    assert shown in err and "multiples of 16" in err and "from 16 to 256 px" in err and "Nearest sizes that work" in err
    assert not (tmp_path / "o" / "0000.png").exists()


def test_flux_guidance_comes_from_the_lora(flux_dir, prompts, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", str(flux_dir), "--prompts", str(prompts), "--run-dir", str(run),
                 "--height", "32", "--width", "32", "--num-steps", "2", "--flux-guidance", "5.0",
                 "--max-sequence-length", "8", *TRAIN]) == 0
    capsys.readouterr()
    assert main(["sample", "--model", str(flux_dir), "--lora", str(run / "lora.safetensors"), "--prompt", "x",
                 "--out", str(tmp_path / "o")]) == 0
    table = sources(capsys.readouterr().out)
    assert table["flux_guidance"] == ("5.0", "LoRA metadata") and table["height"] == ("32", "LoRA metadata")
    assert table["max_sequence_length"] == ("8", "LoRA metadata")
    assert main(["sample", "--model", str(flux_dir), "--lora", str(run / "lora.safetensors"), "--prompt", "x",
                 "--flux-guidance", "2.5", "--out", str(tmp_path / "o2")]) == 0
    assert sources(capsys.readouterr().out)["flux_guidance"] == ("2.5", "--flux-guidance")


def test_precedence_rules_without_models():
    def args(**kw):
        base = dict(height=None, width=None, num_steps=None, cfg=None, negative_prompt=None, flux_guidance=None,
                    max_sequence_length=None)
        return argparse.Namespace(**{**base, **kw})

    comfy_lora = {"config": {"height": 768, "width": 512, "num_steps": 30, "cfg_scale": 1.0,
                             "extra": {"flux_guidance": 4.0}}}  # trained in ComfyUI: guidance in config.extra
    values, src = sampling_settings(args(), comfy_lora, {"height": 64}, {"height": 1024, "width": 1024}, "flux")
    assert (values["height"], values["width"], values["flux_guidance"]) == (768, 512, 4.0)
    assert src["flux_guidance"] == "LoRA metadata"
    values, src = sampling_settings(args(), {}, {}, {"height": 1024, "width": 1024}, "flux")
    assert (values["height"], values["num_steps"], values["flux_guidance"]) == (1024, 28, 3.5)
    assert src["height"] == "model default" and src["num_steps"] == "default"
    values, src = sampling_settings(args(width=320), comfy_lora, {}, {}, "sd3")
    assert (values["height"], values["width"]) == (768, 320) and "flux_guidance" not in values


# --- the size rule itself, train and demo ----------------------------------------------------------


def test_size_rule_and_nearest_sizes():
    rule = SizeRule(16, 16, 256, "VAE 8 x patch 2")
    assert rule.allows(64) and not rule.allows(72) and not rule.allows(8) and not rule.allows(272)
    assert nearest_sizes(72, 40, rule) == [(64, 32), (64, 48), (80, 32), (80, 48)]
    assert nearest_sizes(1000, 20, rule)[0] == (256, 16)
    with pytest.raises(ImageSizeError, match=r"multiples of 16 \(VAE 8 x patch 2\), from 16 to 256 px"):
        check_image_size(72, 64, rule)
    check_image_size(256, 16, rule)
    assert issubclass(ImageSizeError, ConfigError)


def test_config_validation_lists_nearest_sizes():
    with pytest.raises(ConfigError, match=r"multiples of 16.*50x70.*nearest sizes: 48x64, 48x80, 64x64"):
        FDFOConfig(height=50, width=70).validate()
    with pytest.raises(ConfigError, match="at least 16"):
        FDFOConfig(height=0, width=64).validate()


def test_train_refuses_a_size_the_model_cannot_make(sd3_dir, prompts, tmp_path, capsys):
    rc = main(["train", "--model", str(sd3_dir), "--prompts", str(prompts), "--run-dir", str(tmp_path / "r"),
               "--height", "512", "--width", "512", *TRAIN])
    err = capsys.readouterr().err
    assert rc == 2 and "512x512" in err and "from 16 to 256 px" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "lora.safetensors").exists()


def test_demo_refuses_a_size_the_toy_cannot_make(tmp_path):
    from fdfo_core.cli.demo import run_demo

    with pytest.raises(ImageSizeError, match="1024x1024.*Nearest sizes that work: 256x256"):
        run_demo(tmp_path, epochs=1, pairs_per_epoch=2, heldout_prompts=1, log=lambda m: None,
                 overrides={"height": 1024, "width": 1024})
