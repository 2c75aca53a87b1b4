"""Import this repository as a ComfyUI node pack (a package, as ComfyUI imports custom nodes) and
the workflow builder, without ComfyUI. Shared by the node and workflow tests."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "comfyui_fdfo_nodepack"


def import_nodepack():
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return module


def submodule(name: str):
    """e.g. submodule("nodes.trainer_nodes")"""
    import_nodepack()
    return importlib.import_module(f"{PACKAGE}.{name}")


def import_builder():
    name = "fdfo_build_workflows"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "workflows" / "build_workflows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # it imports the node pack under the same package name
    return module
