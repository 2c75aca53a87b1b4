"""The diffusers floor (issue 27 item 9): pyproject.toml states the oldest release the backend
runs on, and the backend refuses an older one, or one too old for a family, naming the feature.

The floors were read from the diffusers releases themselves: `enable_gradient_checkpointing`
takes a function and `diffusers.hooks.apply_layerwise_casting` exists from 0.33; ChromaPipeline
and HiDreamImagePipeline ship in 0.34; ZImagePipeline, HunyuanImagePipeline, Flux2Pipeline,
Kandinsky5T2IPipeline, BriaFiboPipeline and OvisImagePipeline in 0.36; Flux2KleinPipeline and
LongCatImagePipeline in 0.37; ErnieImagePipeline in 0.38, Krea2Pipeline in 0.39,
QwenImage21Pipeline in 0.41; the Qwen-Image transformer builds its joint attention mask from the
text mask from 0.37 (read from the release wheels' `diffusers/__init__.py` and transformer code).
"""

from __future__ import annotations

import re
from pathlib import Path

import diffusers
import pytest
from packaging.version import Version

from fdfo_core.backends.diffusers_backend import DIFFUSERS_FLOOR, BackendError, DiffusersBackend, check_diffusers_version
from fdfo_core.config import load_config
from fdfo_core.families import all_families, get_family

from tiny_pipelines import tiny_sd3_pipeline

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_states_the_floor_the_backend_checks():
    text = (REPO / "pyproject.toml").read_text()
    (declared,) = re.findall(r'"diffusers>=([0-9.]+)"', text)
    assert declared == DIFFUSERS_FLOOR[0]
    assert Version(diffusers.__version__) >= Version(declared)  # the installed one passes


def test_every_family_runs_on_the_installed_diffusers():
    for family in all_families():
        check_diffusers_version(family)
        if family.min_diffusers:
            assert Version(family.min_diffusers[0]) > Version(DIFFUSERS_FLOOR[0]), family.name


@pytest.mark.parametrize("version, family, needle", [
    ("0.31.0", "sd3", "apply_layerwise_casting"),
    ("0.32.2", "flux", "enable_gradient_checkpointing"),
    ("0.36.0", "qwen_image", "text mask"),
    ("0.35.2", "z_image", "ZImagePipeline"),
    ("0.33.1", "hidream", "HiDreamImagePipeline"),
])
def test_a_too_old_diffusers_is_refused_naming_the_feature(version, family, needle):
    with pytest.raises(BackendError) as e:
        check_diffusers_version(get_family(family), version)
    msg = str(e.value)
    assert needle in msg and f"diffusers {version}" in msg and "pip install -U 'diffusers>=" in msg
    check_diffusers_version(get_family("sd3"), DIFFUSERS_FLOOR[0])  # the floor itself is fine


def test_the_backend_checks_when_a_model_loads(tmp_path, monkeypatch, one_thread):
    pipe = tiny_sd3_pipeline(tmp_path)
    monkeypatch.setattr(diffusers, "__version__", "0.32.2")
    with pytest.raises(BackendError, match=r"diffusers >= 0\.33 is needed"):
        DiffusersBackend(pipe, load_config("toy"), max_sequence_length=8)
