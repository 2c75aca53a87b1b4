"""fdfo_core is the library: it must run without ComfyUI, so no module under it may import
ComfyUI (comfy, comfy_extras, folder_paths, server, ...) or this package's own ComfyUI layer
(nodes/). ComfyUI-side code lives in nodes/ and tests/comfy_scripts/."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "fdfo_core"

#: Top-level modules that exist only inside a ComfyUI installation (or are our ComfyUI layer).
COMFY_MODULES = frozenset({
    "comfy", "comfy_extras", "comfy_api", "comfy_api_nodes", "comfy_execution", "comfy_config",
    "folder_paths", "server", "execution", "nodes", "node_helpers", "latent_preview", "app",
    "cuda_malloc", "main", "utils",
})


def imported_modules(path: Path, core: Path = CORE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, at any depth (inside functions
    too), including `importlib.import_module("...")` and `__import__("...")` with a literal name.
    Relative imports are resolved against the module's package; one that climbs out of fdfo_core
    is reported as '<outside fdfo_core>.<name>'."""
    rel = path.relative_to(core.parent).with_suffix("")
    package = list(rel.parts[:-1])  # e.g. ["fdfo_core", "rewards"] (also for an __init__.py)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append((node.lineno, node.module or ""))
                continue
            if node.level - 1 >= len(package):  # climbs above fdfo_core itself
                found.append((node.lineno, "<outside fdfo_core>." + (node.module or ",".join(a.name for a in node.names))))
                continue
            base = package[: len(package) - (node.level - 1)]
            found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_scan_finds_every_kind_of_import(tmp_path):
    """The scanner itself: each forbidden form is seen (so the real test cannot pass vacuously)."""
    fake_core = tmp_path / "fdfo_core"
    (fake_core / "sub").mkdir(parents=True)
    bad = fake_core / "sub" / "bad.py"
    bad.write_text(
        "import comfy.sd\n"
        "def f():\n    from comfy.model_management import get_torch_device\n"
        "    import folder_paths\n    from server import PromptServer\n"
        "    import importlib; importlib.import_module('comfy_extras.nodes_train')\n"
        "from ...nodes import common\n"
        "from ..rewards import base\n",
        encoding="utf-8",
    )
    names = [m for _, m in imported_modules(bad, core=fake_core)]
    tops = [m.split(".")[0] for m in names]
    assert tops.count("comfy") == 2 and "folder_paths" in tops and "server" in tops and "comfy_extras" in tops
    assert any(m.startswith("<outside fdfo_core>") for m in names)
    assert "fdfo_core.rewards" in names  # a relative import inside the core is fine


def test_fdfo_core_never_imports_comfyui():
    modules = core_modules()
    assert len(modules) > 20, "the scan found too few modules: is CORE right?"
    offenders = []
    for path in modules:
        for line, name in imported_modules(path):
            top = name.split(".")[0]
            if top in COMFY_MODULES or name.startswith("<outside fdfo_core>"):
                offenders.append(f"{path.relative_to(CORE.parent)}:{line}: imports {name}")
    assert not offenders, (
        "fdfo_core must not import ComfyUI or the nodes/ layer (put ComfyUI-side code in nodes/ or "
        "tests/comfy_scripts/):\n" + "\n".join(offenders)
    )


def test_no_module_under_fdfo_core_is_a_comfyui_script():
    """The toy's ComfyUI check moved to tests/comfy_scripts/toy_check.py (issue 10)."""
    assert not (CORE / "toy" / "comfyui_check.py").exists()
    assert (CORE.parent / "tests" / "comfy_scripts" / "toy_check.py").is_file()
