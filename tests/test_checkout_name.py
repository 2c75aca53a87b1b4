"""A checkout whose folder name is not a Python identifier (a clone named ComfyUI-FDFO) must
still run the tests: pytest then imports the root __init__.py as a plain module, not a package."""

import importlib.util

from conftest import ROOT


def test_root_init_imports_as_a_plain_module():
    spec = importlib.util.spec_from_file_location("__init__", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # raised "attempted relative import with no known parent package"
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")
