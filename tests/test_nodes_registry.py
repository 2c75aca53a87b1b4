"""The node classes as ComfyUI sees them: registered, documented, published defaults, no ComfyUI
import at package import time."""

import subprocess
import sys

import pytest

from comfy_scripts.nodepack import REPO, import_nodepack, submodule

EXPECTED = {
    "FDFOToyModelLoader", "FDFOToyPrompts", "FDFOPromptList", "FDFOSimpleReward", "FDFOToyAlignmentReward",
    "FDFOPickScoreReward", "FDFOHPSv2Reward", "FDFOAestheticReward", "FDFOClipScoreReward", "FDFOVLMReward",
    "FDFORemoteReward", "FDFOCombineRewards", "FDFOScoreImages", "FDFOPairedSampler", "FDFOTrainer",
    "FDFOReferenceStyleReward", "FDFOPreferenceReward", "FDFOHumanPicksReward",
}
WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN")


@pytest.fixture(scope="module")
def pack():
    return import_nodepack()


def test_importing_the_pack_imports_no_comfyui_module():
    code = (
        "import sys; sys.path.insert(0, 'tests'); from comfy_scripts.nodepack import import_nodepack; "
        "import_nodepack(); bad = sorted(m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') "
        "or m in ('folder_paths', 'server', 'nodes', 'execution')); print(bad); assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_node_is_registered_with_an_fdfo_title(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == EXPECTED
    for key, title in pack.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert title.startswith("FDFO "), key


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_node_schema_is_complete(pack, key):
    cls = pack.NODE_CLASS_MAPPINGS[key]
    assert cls.CATEGORY.split("/")[0] == "FDFO"
    assert callable(getattr(cls, cls.FUNCTION))
    assert getattr(cls, "DESCRIPTION", "").strip()
    n = len(cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == n and len(cls.OUTPUT_TOOLTIPS) == n
    assert all(t.strip() for t in cls.OUTPUT_TOOLTIPS)
    if hasattr(cls, "OUTPUT_IS_LIST"):
        assert len(cls.OUTPUT_IS_LIST) == n
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, (typ, *rest) in spec.get(section, {}).items():
            opts = rest[0] if rest else {}
            assert opts.get("tooltip", "").strip(), f"{key}.{name} has no tooltip"
            if typ in ("INT", "FLOAT"):
                assert {"default", "min", "max"} <= set(opts), f"{key}.{name} needs default/min/max"
                assert opts["min"] <= opts["default"] <= opts["max"], f"{key}.{name} default out of range"
            if isinstance(typ, list):
                assert opts.get("default", typ[0]) in typ, f"{key}.{name} default not among the choices"


def test_seed_inputs_never_randomise(pack):
    # The frontend adds a 'randomize after queue' widget to INTs named seed unless told not to; a
    # changing seed would break resuming a training run.
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        for section in ("required", "optional"):
            for name, (typ, *rest) in cls.INPUT_TYPES().get(section, {}).items():
                if name in ("seed", "noise_seed"):
                    assert rest[0].get("control_after_generate") is False, key


def test_trainer_and_sampler_defaults_are_the_published_recipe(pack):
    from fdfo_core.config import FDFOConfig

    d = FDFOConfig()
    spec = pack.NODE_CLASS_MAPPINGS["FDFOTrainer"].INPUT_TYPES()
    req = {k: v[1]["default"] for k, v in spec["required"].items() if len(v) > 1 and "default" in v[1]}
    opt = {k: v[1]["default"] for k, v in spec["optional"].items() if len(v) > 1 and "default" in v[1]}
    assert (req["epochs"], req["pairs_per_epoch"], req["steps"], req["cfg"], req["churn"], req["churn_strength"]) == (
        100, 432, 40, 1.0, "raw", 0.0025)
    assert (req["learning_rate"], req["lora_rank"], req["lora_alpha"], req["clip_range"]) == (3e-5, 32, 64.0, 0.03)
    assert (req["optimizer_steps_per_epoch"], req["checkpoint_every"], req["width"], req["height"]) == (4, 5, 512, 512)
    assert (opt["kl_weight"], opt["reward_normalization"]) == (d.kl_weight, "none")
    values = {**req, **opt}
    cfg = submodule("nodes.trainer_nodes").config_from_inputs(values)
    for field in ("epochs", "pairs_per_epoch", "num_steps", "cfg_scale", "churn", "churn_strength", "lr", "lora_rank",
                  "lora_alpha", "clip_range", "optimizer_steps_per_epoch", "checkpoint_every", "height", "width",
                  "seed", "kl_weight", "sample_batch_size", "train_batch_size", "decode_batch_size", "precision",
                  "storage_device", "gradient_checkpointing", "steps_per_sample", "lora_targets"):
        assert getattr(cfg, field) == getattr(d, field), field


def test_object_info_matches_comfyui_layout(pack):
    info = submodule("nodes.object_info").object_info()
    trainer = info["FDFOTrainer"]
    assert trainer["output"] == ["MODEL", "LORA_MODEL", "IMAGE", "IMAGE", "STRING"]
    assert trainer["output_node"] is True
    assert trainer["input_order"]["required"][:5] == ["model", "clip", "vae", "reward", "prompts"]
    assert info["FDFOScoreImages"]["output_is_list"] == [True, False, False, False]
