"""The node classes as ComfyUI sees them: registered, documented, published defaults, no ComfyUI
import at package import time."""

import subprocess
import sys

import pytest

from comfy_scripts.nodepack import REPO, import_nodepack, submodule

EXPECTED = {
    "FDFOToyModelLoader", "FDFOToyPrompts", "FDFOPromptList", "FDFOSimpleReward", "FDFOToyAlignmentReward",
    "FDFOPickScoreReward", "FDFOHPSv2Reward", "FDFOAestheticReward", "FDFOClipScoreReward", "FDFOVLMReward",
    "FDFORemoteReward", "FDFOCombineRewards", "FDFOScoreImages", "FDFOPairedSampler", "FDFOTrainerV2",
    "FDFOTrainingOptions", "FDFOTrainer",
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
    opts = submodule("nodes.training_options")
    trainer = pack.NODE_CLASS_MAPPINGS["FDFOTrainerV2"].INPUT_TYPES()
    options = pack.NODE_CLASS_MAPPINGS["FDFOTrainingOptions"].INPUT_TYPES()
    req = {k: v[1]["default"] for k, v in trainer["required"].items() if len(v) > 1 and "default" in v[1]}
    opt = {k: v[1]["default"] for k, v in options["optional"].items() if len(v) > 1 and "default" in v[1]}
    assert (req["epochs"], req["pairs_per_epoch"], req["steps"], req["cfg"], opt["churn"], opt["churn_strength"]) == (
        100, 432, 40, 1.0, "raw", 0.0025)
    assert (req["learning_rate"], req["lora_rank"], req["lora_alpha"], opt["clip_range"]) == (3e-5, 32, 64.0, 0.03)
    assert (opt["optimizer_steps_per_epoch"], opt["checkpoint_every"], req["width"], req["height"]) == (4, 5, 512, 512)
    assert (opt["kl_weight"], opt["reward_normalization"]) == (d.kl_weight, "none")
    # No options node at all, or an options node left at its defaults: the published recipe.
    for cfg in (opts.config_from_settings(opts.resolve_settings(req)),
                opts.config_from_settings(opts.resolve_settings(req, pack.NODE_CLASS_MAPPINGS["FDFOTrainingOptions"]().build()[0]))):
        for field in ("epochs", "pairs_per_epoch", "num_steps", "cfg_scale", "churn", "churn_strength", "lr", "lora_rank",
                      "lora_alpha", "clip_range", "optimizer_steps_per_epoch", "checkpoint_every", "height", "width",
                      "seed", "kl_weight", "sample_batch_size", "train_batch_size", "decode_batch_size", "precision",
                      "storage_device", "gradient_checkpointing", "steps_per_sample", "lora_targets", "interval_mean",
                      "interval_std", "interval_width", "negative_prompt", "reward_normalization"):
            assert getattr(cfg, field) == getattr(d, field), field


def test_the_trainer_shows_at_most_16_settings(pack):
    spec = pack.NODE_CLASS_MAPPINGS["FDFOTrainerV2"].INPUT_TYPES()
    widgets = [k for s in ("required", "optional") for k, v in spec.get(s, {}).items()
               if isinstance(v[0], list) or v[0] in WIDGETS]
    sockets = [k for s in ("required", "optional") for k, v in spec.get(s, {}).items() if k not in widgets]
    assert widgets == ["epochs", "pairs_per_epoch", "steps", "cfg", "width", "height", "learning_rate", "lora_rank",
                       "lora_alpha", "lora_name", "resume"]
    assert sockets == ["model", "clip", "vae", "reward", "prompts", "options"]
    assert len(widgets) + len(sockets) <= 17 and len(widgets) <= 16


def test_every_option_is_declared_once_and_optional(pack):
    opts = submodule("nodes.training_options")
    spec = pack.NODE_CLASS_MAPPINGS["FDFOTrainingOptions"].INPUT_TYPES()
    assert spec["required"] == {}
    assert list(spec["optional"]) == [o.name for o in opts.OPTIONS]
    trainer = pack.NODE_CLASS_MAPPINGS["FDFOTrainerV2"].INPUT_TYPES()
    assert not set(spec["optional"]) & set(trainer["required"])
    import dataclasses

    from fdfo_core.config import FDFOConfig

    fields = {f.name for f in dataclasses.fields(FDFOConfig)}
    for o in opts.ALL_SETTINGS:
        assert o.config is None or o.config in fields, o.name
    # Everything the old one-node Trainer had is still settable, on the Trainer or the options node.
    legacy = pack.NODE_CLASS_MAPPINGS["FDFOTrainer"].INPUT_TYPES()
    old = [k for s in ("required", "optional") for k in legacy[s]]
    assert set(old) <= set(spec["optional"]) | set(trainer["required"])


def test_adding_an_option_is_one_declaration(pack, monkeypatch):
    """A new Option appended to OPTIONS reaches the options node, the settings and (with config=)
    the FDFOConfig, with nothing else changed."""
    opts = submodule("nodes.training_options")
    new = opts.Option("max_grad_norm", ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "tooltip": "clip"}), "update",
                      "max_grad_norm")
    monkeypatch.setattr(opts, "OPTIONS", opts.OPTIONS + (new,))
    monkeypatch.setattr(opts, "ALL_SETTINGS", opts.TRAINER_SETTINGS + opts.OPTIONS)
    monkeypatch.setattr(opts, "_BY_NAME", {o.name: o for o in opts.ALL_SETTINGS})
    node = pack.NODE_CLASS_MAPPINGS["FDFOTrainingOptions"]
    assert list(node.INPUT_TYPES()["optional"])[-1] == "max_grad_norm"
    built = node().build(max_grad_norm=0.5)[0]
    assert opts.config_from_settings(opts.resolve_settings({}, built)).max_grad_norm == 0.5
    assert opts.config_from_settings(opts.resolve_settings({}, node().build()[0])).max_grad_norm == 1.0


def test_unknown_settings_are_refused(pack):
    opts = submodule("nodes.training_options")
    with pytest.raises(KeyError, match="learnig_rate"):
        opts.resolve_settings({"learnig_rate": 1e-3})


def test_legacy_trainer_keeps_its_old_inputs_and_is_deprecated(pack):
    legacy = pack.NODE_CLASS_MAPPINGS["FDFOTrainer"]
    assert legacy.DEPRECATED is True
    spec = legacy.INPUT_TYPES()
    tn = submodule("nodes.trainer_nodes")
    assert list(spec["required"]) == ["model", "clip", "vae", "reward", "prompts", *tn.LEGACY_REQUIRED]
    assert list(spec["optional"]) == list(tn.LEGACY_OPTIONAL)
    assert "deprecated" in pack.NODE_DISPLAY_NAME_MAPPINGS["FDFOTrainer"]


def test_object_info_matches_comfyui_layout(pack):
    info = submodule("nodes.object_info").object_info()
    trainer = info["FDFOTrainerV2"]
    assert trainer["output"] == ["MODEL", "LORA_MODEL", "IMAGE", "IMAGE", "STRING"]
    assert trainer["output_node"] is True
    assert trainer["input_order"]["required"][:5] == ["model", "clip", "vae", "reward", "prompts"]
    assert info["FDFOScoreImages"]["output_is_list"] == [True, False, False, False]


def test_every_trainer_setting_is_documented():
    opts = submodule("nodes.training_options")
    docs = (REPO / "docs" / "comfyui.md").read_text()
    section = docs[docs.index("### FDFO Trainer inputs"):docs.index("### Using the LoRA")]
    for o in opts.ALL_SETTINGS:
        assert o.name in section, f"{o.name} is not described in docs/comfyui.md (FDFO Trainer inputs)"
