"""ComfyUI model classes are recognised along their class hierarchy, not by exact name alone.

Newer ComfyUI derives variant classes from a family's class (read in its comfy/model_base.py and
comfy/supported_models.py: `QwenImage21(QwenImage)`, `ZImagePixelSpace(ZImage)`,
`MingImage(Lumina2)`, `LongCatImage(Flux)`). A class a family names trains; a named refused class
(or a subclass of one) is refused with its reason; a subclass of a supported class that no family
names is refused by name as a variant (tests/test_family_registry.py has the per-family cases). The classes below are duck-typed stand-ins with those
shapes of hierarchy (no ComfyUI needed); a refused family is a stand-in too, so the test does not
depend on which real families are refused today.
"""

from __future__ import annotations

import types

import pytest

import fdfo_core.families as families


def model(config_bases: tuple[type, ...], base_bases: tuple[type, ...], config_name="Variant", base_name="VariantModel"):
    config = type(config_name, config_bases, {})()
    return type(base_name, base_bases, {"model_config": config})()


QwenImage = type("QwenImage", (), {})  # model_base.QwenImage: the qwen_image family's class
Lumina2Config = type("Lumina2", (), {})


@pytest.fixture
def refused_family(monkeypatch):
    standin = types.SimpleNamespace(name="standin_refused", comfy_models=(), comfy_refused={"StandInRefused": "refused, because."})
    real = families.all_families()
    monkeypatch.setattr(families, "all_families", lambda: [*real, standin])
    return standin


def test_a_subclass_of_a_supported_class_is_refused_by_name_as_a_variant():
    """A class no family names whose parent a family trains is refused by name (a variant may take
    other inputs), never trained as its parent; QwenImage21 itself is refused by its own name
    (fdfo_core/families/newer_comfy.py)."""
    variant = model((), (QwenImage,), config_name="QwenImageFuture", base_name="QwenImageFuture")
    assert families.family_for_comfy_model(variant) is None
    family, why = families.comfy_refusal(variant)
    assert family.name == "qwen_image" and "a subclass of ComfyUI's QwenImage" in why
    qwen21 = model((), (QwenImage,), config_name="QwenImage21", base_name="QwenImage21")
    assert families.family_for_comfy_model(qwen21) is None
    assert "Qwen-Image 2.1" in families.comfy_refusal(qwen21)[1]


def test_exact_names_still_match_and_unknown_hierarchies_do_not():
    assert families.family_for_comfy_model(type("QwenImage", (), {})()).name == "qwen_image"
    assert families.family_for_comfy_model(model((), (), base_name="SomethingNew")) is None


def test_a_subclass_of_a_refused_class_is_refused_as_its_parent(refused_family):
    Refused = type("StandInRefused", (Lumina2Config,), {})
    pixel_space = model((Refused,), (), config_name="StandInRefusedPixelSpace", base_name="Lumina2")
    refused = families.comfy_refusal(pixel_space)
    assert refused is not None and refused[0] is refused_family and refused[1].endswith("refused, because.")
    assert "StandInRefused" in refused[1]


def test_a_supported_class_nearer_than_a_refused_ancestor_wins(refused_family):
    """The nearest named ancestor decides: a child of a supported class that derives from a refused
    one is a variant of the supported family (refused by name as such, not with the refused
    ancestor's reason)."""
    Refused = type("StandInRefused", (), {})
    Supported = type("QwenImage", (Refused,), {})  # a supported class derived from a refused one
    child = model((), (Supported,), config_name="Child", base_name="ChildModel")
    family, why = families.comfy_refusal(child)
    assert family.name == "qwen_image" and "refused, because." not in why
    assert families.comfy_refusal(model((), (), config_name="QwenImage", base_name="QwenImage")) is None
