"""The family registry and the LoRA map, without any model framework."""

import pytest

from fdfo_core.families import (
    Family,
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
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for f in all_families():  # "Train your own" names every family's pipelines and preset
        assert all(f"`{p}`" in readme for p in f.diffusers_pipelines), f"README does not name {f.name}'s pipelines"
        assert f"`{f.preset_name or f.name}`" in readme, f"README does not name the {f.name} preset"


# --- Flux.2 / Z-Image in ComfyUI: refused by name (ComfyUI v0.3.64 predates them) ----------------


def _comfy_model(config_class: str, base_class: str):
    """A duck-typed `MODEL.model` with the class names a newer ComfyUI gives these models."""
    config = type(config_class, (), {})()
    return type(base_class, (), {"model_config": config})()


@pytest.mark.parametrize("config_class, base_class, family", [
    ("Flux2", "Flux2", "flux2"),  # comfy.supported_models.Flux2 (dev and Klein) -> model_base.Flux2
    ("ZImage", "Lumina2", "z_image"),  # comfy.supported_models.ZImage(Lumina2) -> model_base.Lumina2
])
def test_comfy_refuses_flux2_and_z_image_by_their_config_class(config_class, base_class, family):
    from fdfo_core.families import comfy_refusal, family_for_comfy_model

    base = _comfy_model(config_class, base_class)
    refused = comfy_refusal(base)
    assert refused is not None and refused[0].name == family
    assert "v0.3.64" in refused[1] and "fdfo train" in refused[1]
    # The refused family never claims it (Z-Image runs as ComfyUI's Lumina2 class, which the lumina2
    # family trains: the ComfyUI backend asks comfy_refusal first).
    claimed = family_for_comfy_model(base)
    assert claimed is None or claimed.name != family


def test_lumina2_itself_is_not_refused():
    from fdfo_core.families import comfy_refusal

    assert comfy_refusal(_comfy_model("Lumina2", "Lumina2")) is None
    assert comfy_refusal(type("Flux", (), {})()) is None  # a model without model_config


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
