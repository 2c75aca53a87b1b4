"""The family registry and the LoRA map, without any model framework."""

from types import SimpleNamespace

import pytest
import torch

from fdfo_core.families import (
    Family,
    all_families,
    LoraMap,
    fused,
    get_family,
    register,
    supported_families_text,
)
from fdfo_core.families.base import FamilyError
from fdfo_core.backends.lora_files import LoraFileError, diffusers_to_comfy_module


def sd3_linears(blocks=3, hidden=64, dual=(0,)):
    """ComfyUI SD3 linears: the last joint block's context stream has no projection after attention."""
    out = {}
    for i in range(blocks):
        out[f"joint_blocks.{i}.x_block.attn.qkv"] = (hidden, 3 * hidden)
        out[f"joint_blocks.{i}.x_block.attn.proj"] = (hidden, hidden)
        out[f"joint_blocks.{i}.context_block.attn.qkv"] = (hidden, 3 * hidden)
        if i < blocks - 1:
            out[f"joint_blocks.{i}.context_block.attn.proj"] = (hidden, hidden)
        if i in dual:
            out[f"joint_blocks.{i}.x_block.attn2.qkv"] = (hidden, 3 * hidden)
            out[f"joint_blocks.{i}.x_block.attn2.proj"] = (hidden, hidden)
        out[f"joint_blocks.{i}.x_block.mlp.fc1"] = (hidden, 4 * hidden)
    return out


def flux_linears(double=2, single=2, hidden=32, mlp=128):
    out = {}
    for i in range(double):
        for s in ("img", "txt"):
            out[f"double_blocks.{i}.{s}_attn.qkv"] = (hidden, 3 * hidden)
            out[f"double_blocks.{i}.{s}_attn.proj"] = (hidden, hidden)
    for i in range(single):
        out[f"single_blocks.{i}.linear1"] = (hidden, 3 * hidden + mlp)
        out[f"single_blocks.{i}.linear2"] = (hidden + mlp, hidden)
    return out


def old_plan_order(family, linears, targets, groups):
    """The ComfyUI backend's adapter order before families existed (checkpoints keep their
    optimizer state in this order): per block, per attention ("attn.", "attn2.", ""), per target."""
    plan = {}
    fam = get_family(family)
    for prefix, n in groups:
        for i in range(n):
            for sub in ("attn.", "attn2.", ""):
                for t in targets:
                    name = f"{prefix}.{i}.{sub}{t}"
                    try:
                        part = fam.lora_map.to_comfy(name, lambda d: 1)
                    except ValueError:
                        continue
                    if part.comfy_module in linears:
                        plan.setdefault(part.comfy_module, []).append(name)
    return [(c, n) for c, names in plan.items() for n in names]


@pytest.mark.parametrize("targets", [
    ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
    ("to_out.0", "to_q", "proj_mlp", "add_k_proj"),
])
def test_comfy_plan_keeps_the_adapter_order_of_existing_checkpoints(targets):
    for family, linears, groups in (
        ("sd3", sd3_linears(), [("transformer_blocks", 3)]),
        ("flux", flux_linears(), [("transformer_blocks", 2), ("single_transformer_blocks", 2)]),
    ):
        plan = get_family(family).comfy_lora_plan(linears, targets)
        got = [(p.comfy_module, p.name) for p in plan]
        # Parts of one module are listed in row order; the old plan listed them in target order.
        want = old_plan_order(family, linears, targets, groups)
        assert [c for c, _ in got] == [c for c, _ in want]
        assert sorted(got) == sorted(want)


def test_comfy_plan_rows():
    plan = get_family("flux").comfy_lora_plan(flux_linears(hidden=32, mlp=128), ("to_q", "to_k", "to_v", "proj_mlp"))
    single = [(p.name, p.offset, p.rows) for p in plan if p.comfy_module == "single_blocks.0.linear1"]
    assert single == [("single_transformer_blocks.0.attn.to_q", 0, 32), ("single_transformer_blocks.0.attn.to_k", 32, 32),
                      ("single_transformer_blocks.0.attn.to_v", 64, 32), ("single_transformer_blocks.0.proj_mlp", 96, 128)]


def test_unmapped_modules_and_unknown_families_raise():
    with pytest.raises(LoraFileError, match="no ComfyUI equivalent.*to_q"):
        diffusers_to_comfy_module("sd3", "transformer_blocks.0.ff.net.0.proj", lambda n: 64)
    with pytest.raises(LoraFileError, match="unknown model family 'nope'.*sd3.*flux"):
        diffusers_to_comfy_module("nope", "transformer_blocks.0.attn.to_q", lambda n: 64)
    with pytest.raises(FamilyError, match="unknown model family"):
        get_family("nope")


def test_register_refuses_clashes_and_incomplete_families():
    class Copy(Family):
        name = "copy_of_flux"
        title = "copy"
        diffusers_pipelines = ("FluxPipeline",)
        lora_map = LoraMap((fused("a.{i}.qkv", "b.{i}.", ("to_q",)),))

    with pytest.raises(ValueError, match="both claim"):
        register(Copy())

    class Empty(Family):
        name = "empty"
        title = "empty"
        lora_map = LoraMap(())

    with pytest.raises(TypeError, match="neither"):
        register(Empty())


def test_supported_text_names_every_family():
    text = supported_families_text()
    for name in ("sd3", "flux"):
        f = get_family(name)
        assert f.title in text and all(p in text for p in f.diffusers_pipelines) and all(c in text for c in f.comfy_models)


def test_every_family_is_in_the_support_table():
    from pathlib import Path

    from fdfo_core.families import all_families

    doc = (Path(__file__).resolve().parents[1] / "docs" / "families.md").read_text()
    for f in all_families():
        assert f"(`{f.name}`)" in doc, f"docs/families.md has no row for {f.name}"
        assert all(f"`{p}`" in doc for p in f.diffusers_pipelines)
    training = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    for f in all_families():  # the `--model` list of docs/training.md names every family's pipelines and preset
        assert all(f"`{p}`" in training for p in f.diffusers_pipelines), f"docs/training.md does not name {f.name}'s pipelines"
        assert f"`{f.preset_name or f.name}`" in training, f"docs/training.md does not name the {f.name} preset"


# --- ComfyUI recognition by class, along the class hierarchy (duck-typed stand-ins) ---------------
#
# The classes below are STAND-INS named like ComfyUI's (comfy.supported_models configs and
# comfy.model_base models, with ComfyUI's inheritance), not ComfyUI's own: the recognition works on
# class names and their hierarchy only. tests/comfy_scripts (with COMFYUI_ROOT) runs the real ones.


def _comfy_model(config_class, base_class, guidance_embed=None):
    """A duck-typed `MODEL.model` of class `base_class` whose `model_config` is a `config_class`
    (class objects, or names for a class without ComfyUI parents); `guidance_embed` sets Flux's
    `diffusion_model.params.guidance_embed`."""
    as_class = lambda c: type(c, (), {}) if isinstance(c, str) else c  # noqa: E731
    model = as_class(base_class)()
    model.model_config = as_class(config_class)()
    if guidance_embed is not None:
        model.diffusion_model = SimpleNamespace(params=SimpleNamespace(guidance_embed=guidance_embed))
    return model


class _Config:  # comfy.supported_models_base.BASE
    pass


class _Base:  # comfy.model_base.BaseModel
    pass


def _named(name, parent):
    return type(name, (parent,), {})


# Stand-ins for ComfyUI v0.8.0's hierarchy: supported_models.Flux2(Flux), ZImage(Lumina2),
# ChromaRadiance(Chroma); model_base.Flux2(Flux), Chroma(Flux), ChromaRadiance(Chroma), WAN22(WAN21),
# WAN21_Vace(WAN21).
C_FLUX, M_FLUX = _named("Flux", _Config), _named("Flux", _Base)
C_FLUX2, M_FLUX2 = _named("Flux2", C_FLUX), _named("Flux2", M_FLUX)
C_SCHNELL = _named("FluxSchnell", C_FLUX)
C_LUMINA2, M_LUMINA2 = _named("Lumina2", _Config), _named("Lumina2", _Base)
C_ZIMAGE = _named("ZImage", C_LUMINA2)
C_CHROMA, M_CHROMA = _named("Chroma", _Config), _named("Chroma", M_FLUX)
C_RADIANCE, M_RADIANCE = _named("ChromaRadiance", C_CHROMA), _named("ChromaRadiance", M_CHROMA)
C_WAN21, M_WAN21 = _named("WAN21_T2V", _Config), _named("WAN21", _Base)
M_VACE = _named("WAN21_Vace", M_WAN21)


@pytest.mark.parametrize("config, model, guidance, family", [
    (C_FLUX2, M_FLUX2, True, "flux2"),  # Flux.2 dev: a guidance embedding
    (C_FLUX2, M_FLUX2, False, "flux2_klein"),  # Klein: the same ComfyUI class, no guidance embedding
    (C_ZIMAGE, M_LUMINA2, None, "z_image"),  # ZImage's model class is Lumina 2's: the config decides
    (C_LUMINA2, M_LUMINA2, None, "lumina2"),
    (C_SCHNELL, M_FLUX, True, "flux"),  # a config subclass whose model class is Flux itself
    (C_CHROMA, M_CHROMA, None, "chroma"),  # model_base.Chroma subclasses Flux: its own family, not Flux's
    (_named("WAN22_T2V", C_WAN21), _named("WAN22", M_WAN21), None, "wan"),
])
def test_comfy_recognises_families_by_class(config, model, guidance, family):
    from fdfo_core.families import comfy_refusal, family_for_comfy_model

    base = _comfy_model(config, model, guidance)
    assert family_for_comfy_model(base).name == family
    for version in ("0.8.0", "0.47.1", None):
        assert comfy_refusal(base, version) is None


@pytest.mark.parametrize("config, model, guidance, title", [
    (C_FLUX2, M_FLUX2, True, "Flux.2 (dev)"),
    (C_FLUX2, M_FLUX2, False, "Flux.2 Klein"),
    (C_ZIMAGE, M_LUMINA2, None, "Z-Image"),
])
def test_comfy_refuses_flux2_and_z_image_in_a_comfyui_that_predates_them(config, model, guidance, title):
    """In a ComfyUI older than the family's `comfy_since` (v0.8.0) the model is refused by name,
    with the version, the family and what to do; Lumina 2 itself is not refused there."""
    from fdfo_core.families import comfy_refusal

    family, why = comfy_refusal(_comfy_model(config, model, guidance), "0.3.64")
    assert family.comfy_since == "0.8.0" and title in family.title
    assert "this ComfyUI (v0.3.64) predates" in why and title in why and "v0.8.0" in why and "fdfo train" in why
    assert comfy_refusal(_comfy_model(C_LUMINA2, M_LUMINA2), "0.3.64") is None
    assert comfy_refusal(type("Flux", (), {})(), "0.3.64") is None  # a model without model_config


def _newer_names():
    from fdfo_core.families.newer_comfy import NEWER_COMFY_MODELS

    return sorted(NEWER_COMFY_MODELS)


@pytest.mark.parametrize("name", _newer_names())
def test_families_only_newer_comfyui_loads_are_refused_by_name(name):
    """Stand-ins named as newer ComfyUI's classes (Qwen-Image 2.1, Krea 2, ERNIE-Image, HiDream-O1,
    Anima, LongCat-Image, ...), as a config class and as a model class, and a subclass of each: refused
    with the model's name and what to do, never left to the generic fallback."""
    from fdfo_core.families import comfy_refusal, family_for_comfy_model
    from fdfo_core.families.newer_comfy import NEWER_COMFY_MODELS

    entry = NEWER_COMFY_MODELS[name]
    as_config = _comfy_model(_named(name, _Config), "SomeModel")
    as_model = _comfy_model("SomeConfig", _named(name, _Base))
    subclass = _comfy_model("FutureConfig", _named(name + "Future", _named(name, _Base)))
    for base in (as_config, as_model, subclass):
        assert family_for_comfy_model(base) is None
        refused = comfy_refusal(base, "0.47.1")
        assert refused is not None, base
        why = refused[1]
        assert name in why and entry.title in why and "FDFO's nodes do not train" in why
        if entry.pipelines:
            assert "Train it with `fdfo train` on the diffusers folder" in why and entry.pipelines[0] in why
        else:
            assert "No diffusers pipeline" in why
    assert "subclass of ComfyUI's " + name in comfy_refusal(subclass)[1]


def test_qwen_image_2_1_is_not_trained_as_qwen_image():
    """model_base.QwenImage21 subclasses QwenImage (a supported class): its own name wins over the
    parent's family."""
    from fdfo_core.families import comfy_refusal, family_for_comfy_model

    base = _comfy_model(_named("QwenImage21", _named("QwenImage", _Config)), _named("QwenImage21", _named("QwenImage", _Base)))
    assert family_for_comfy_model(base) is None
    assert "Qwen-Image 2.1" in comfy_refusal(base)[1] and "QwenImage21Pipeline" in comfy_refusal(base)[1]


@pytest.mark.parametrize("config, model, parent, family", [
    ("FluxFutureVariant", _named("FluxFutureVariant", M_FLUX), "Flux", "flux"),  # an unknown Flux subclass
    (_named("LuminaNext2", C_LUMINA2), _named("LuminaNext2", M_LUMINA2), "Lumina2", "lumina2"),
    ("WAN21_Vace", M_VACE, "WAN21", "wan"),  # ComfyUI's VACE model: a WAN21 subclass
    (_named("ZImageFuture", C_ZIMAGE), _named("ZImageFuture", M_LUMINA2), "ZImage", "z_image"),
    # a config derived from ZImage on ComfyUI's plain Lumina2 model: a Z-Image variant, not Lumina 2
    (_named("ZImageFuture", C_ZIMAGE), M_LUMINA2, "ZImage", "z_image"),
])
def test_subclass_of_a_supported_class_is_refused_by_name(config, model, parent, family):
    """A class no family names whose parent a family trains: refused by name (the model, its parent
    and the family), not trained as the parent and not left to the generic fallback."""
    from fdfo_core.families import comfy_refusal, family_for_comfy_model

    base = _comfy_model(config, model)
    assert family_for_comfy_model(base) is None
    refused_family, why = comfy_refusal(base, "0.8.0")
    assert refused_family.name == family and f"a subclass of ComfyUI's {parent}" in why and "fdfo train" in why


def test_chroma_radiance_and_its_subclasses_are_refused_with_the_reason():
    from fdfo_core.families import comfy_refusal, family_for_comfy_model

    for base in (_comfy_model(C_RADIANCE, M_RADIANCE),
                 _comfy_model(_named("ChromaRadianceX0", C_RADIANCE), _named("ChromaRadianceX0", M_RADIANCE))):
        assert family_for_comfy_model(base) is None
        family, why = comfy_refusal(base, "0.8.0")
        assert family.name == "chroma" and "Chroma Radiance" in why and "pixel-space" in why


def test_ovis_image_loaded_as_flux_is_refused():
    """ComfyUI v0.8.0 loads Ovis-Image as a Flux model with a gated MLP (`yak_mlp`) and a text norm."""
    family = get_family("flux")
    params = SimpleNamespace(yak_mlp=True, txt_norm=True)
    dm = SimpleNamespace(params=params, patch_size=2, img_in=SimpleNamespace(weight=torch.zeros(8, 64)), out_channels=64)
    with pytest.raises(FamilyError, match="Ovis-Image.*OvisImagePipeline"):
        family.comfy_check(SimpleNamespace(diffusion_model=dm))
    params.yak_mlp = params.txt_norm = False
    family.comfy_check(SimpleNamespace(diffusion_model=dm))


def test_flux2_and_z_image_lora_keys_are_comfyuis():
    """Keys as ComfyUI's own diffusers converters name them (comfy/utils.py flux_to_diffusers /
    z_image_to_diffusers): q, k, v fused in that order, Flux.2's single blocks one to one."""
    sizes = {"to_q": 8, "to_k": 8, "to_v": 8}
    out = lambda n: sizes.get(n.rsplit(".", 1)[-1], 8)  # noqa: E731
    flux2 = get_family("flux2").lora_map
    assert flux2.to_comfy("transformer_blocks.1.attn.to_k", out) == \
        type(flux2.to_comfy("transformer_blocks.1.attn.to_k", out))("double_blocks.1.img_attn.qkv", 8, 8, 24)
    assert flux2.to_comfy("transformer_blocks.0.attn.add_v_proj", out).comfy_module == "double_blocks.0.txt_attn.qkv"
    assert flux2.to_comfy("single_transformer_blocks.3.attn.to_qkv_mlp_proj", out).comfy_module == "single_blocks.3.linear1"
    assert get_family("flux2_klein").lora_map is flux2
    z = get_family("z_image").lora_map
    for group in ("layers", "noise_refiner", "context_refiner"):
        part = z.to_comfy(f"{group}.0.attention.to_v", out)
        assert (part.comfy_module, part.offset, part.rows) == (f"{group}.0.attention.qkv", 16, 8)
        assert z.to_comfy(f"{group}.1.attention.to_out.0", out).comfy_module == f"{group}.1.attention.out"


@pytest.mark.parametrize("family, transformer, config", [
    ("flux2", "Flux2Transformer2DModel", {}),  # the class defaults are FLUX.2-dev's config
    ("flux2_klein", "Flux2Transformer2DModel", dict(num_layers=5, num_single_layers=20, num_attention_heads=24,
                                                    joint_attention_dim=7680, guidance_embeds=False)),  # 4B
    ("flux2_klein", "Flux2Transformer2DModel", dict(num_layers=8, num_single_layers=24, num_attention_heads=32,
                                                    joint_attention_dim=12288, guidance_embeds=False)),  # 9B
    ("z_image", "ZImageTransformer2DModel", {}),  # the class defaults are Z-Image-Turbo's config
    ("chroma", "ChromaTransformer2DModel", {}),  # the class defaults are Chroma1's config
    ("hidream", "HiDreamImageTransformer2DModel", dict(  # HiDream-I1's config (the defaults leave these open)
        patch_size=2, in_channels=16, out_channels=16, caption_channels=[4096, 4096], text_emb_dim=2048,
        axes_dims_rope=(64, 32, 32), llama_layers=list(range(32)) + [31] * 16)),
])
def test_vram_guidance_states_the_real_parameter_count(family, transformer, config):
    """The VRAM line's parameter count is the real model's (built on the meta device from its config)."""
    import diffusers
    import torch

    with torch.device("meta"):
        model = getattr(diffusers, transformer)(**config)
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    assert f"{billions:.1f} B" in get_family(family).vram, (billions, get_family(family).vram)


@pytest.mark.parametrize("name", [f.name for f in all_families() if f.diffusers_flow_schedulers])
def test_a_declared_flow_scheduler_outside_flow_mode_is_refused(name):
    """Every family that samples with a non-FlowMatch scheduler (Wan, HiDream: UniPC; Sana: DPM-Solver)
    refuses it unless it runs in flow mode (flow sigmas and flow prediction), and accepts it in flow mode."""
    family = get_family(name)
    transformer_class = family.diffusers_transformers[0] if family.diffusers_transformers else "Transformer"
    transformer = type(transformer_class, (), {"config": {}})()

    def pipe(**scheduler_config):
        scheduler = type(family.diffusers_flow_schedulers[0], (), {"config": scheduler_config})()
        return SimpleNamespace(transformer=transformer, scheduler=scheduler, config={})

    family.diffusers_check(pipe(use_flow_sigmas=True, prediction_type="flow_prediction"))
    for config in ({}, {"use_flow_sigmas": True, "prediction_type": "epsilon"}, {"prediction_type": "flow_prediction"}):
        with pytest.raises(FamilyError, match="not in flow mode"):
            family.diffusers_check(pipe(**config))
