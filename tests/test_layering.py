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


# --- the package order (docs/architecture.md) -----------------------------------------------------

#: fdfo_core's layers, bottom to top: a module may import its own layer and the layers below it,
#: never one above. `fdfo_core/__init__.py` itself sits below them all (it imports nothing).
LAYERS = (
    "errors",    # ConfigError: the one error several layers raise
    "files",     # storage, text files, prompt lists, image files, drawing, crash injection
    "flow",      # schedules, paired sampler, conditioning, image sizes, seeds, the FDFO objective
    "families",  # one module per model family
    "toy",       # the bundled toy model, its grammar and prompts
    "config",    # FDFOConfig, presets, TOML
    "backends",  # the FlowBackend interface, generation, diffusers backend, LoRA files, memory
    "rewards",   # pointwise and pairwise rewards, the failure policy, picks
    "run",       # the loop around any method: trainer, definition, checkpoints, evaluation, guardrails
    "methods",   # the training methods beside FDFO: Flow-GRPO, DiffusionNFT, reward-gradient
    "cli",       # front ends on the command line: fdfo, the demo, the toy's pretraining
)
#: Front ends: nothing in fdfo_core below them imports them, and nodes/ (another front end) never does.
FRONT_ENDS = ("cli",)


def module_name(path: Path, core: Path = CORE) -> str:
    """fdfo_core/files/storage.py -> "fdfo_core.files.storage"; a package's __init__.py -> the package."""
    parts = list(path.relative_to(core.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges(path: Path, root: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every import in `path` at any depth, relative ones resolved against
    its package (`root` is the folder that holds fdfo_core and nodes/: the node pack, which ComfyUI
    imports as a package, so `from ..fdfo_core.x import y` in nodes/ is "fdfo_core.x"). `from pkg
    import sub` where `sub` is a module file gives module "pkg.sub" (names ()); `import_module("x")`
    gives "x"."""
    rel = path.relative_to(root.parent).with_suffix("")
    package = list(rel.parts[:-1])  # starts with the pack's folder name
    pack = root.name + "."
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def is_module(name: str) -> bool:
        p = root.joinpath(*(name[len(pack):] if name.startswith(pack) else name).split("."))
        return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            elif node.level - 1 >= len(package):
                base = "<outside>." + (node.module or "")
            else:
                base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            names = []
            for a in node.names:
                if is_module(f"{base}.{a.name}"):
                    found.append((node.lineno, f"{base}.{a.name}", ()))
                else:
                    names.append(a.name)
            if names:
                found.append((node.lineno, base, tuple(names)))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value, ()))
    # Names inside the pack lose the pack's folder name ("ComfyUI-FDFO.fdfo_core.x" -> "fdfo_core.x").
    return [(line, m[len(pack):] if m.startswith(pack) else m, names) for line, m, names in found]


def layer_of(module: str, layers: tuple[str, ...] = LAYERS) -> int:
    """Index of `module`'s layer in `layers` (-1 for the fdfo_core package itself)."""
    parts = module.split(".")
    if parts == ["fdfo_core"]:
        return -1
    if parts[1] not in layers:
        raise AssertionError(f"{module}: fdfo_core.{parts[1]} has no layer; add it to LAYERS in tests/test_layering.py "
                             "and to docs/architecture.md")
    return layers.index(parts[1])


def core_graph(core: Path = CORE) -> dict[str, list[tuple[int, str, tuple[str, ...]]]]:
    """module -> its imports of other fdfo_core modules (line, module, names)."""
    graph = {}
    for path in sorted(core.rglob("*.py")):
        mod = module_name(path, core)
        graph[mod] = [(line, m, names) for line, m, names in import_edges(path, core.parent)
                      if (m == "fdfo_core" or m.startswith("fdfo_core.")) and m != mod]
    return graph


def upward_imports(graph, layers: tuple[str, ...] = LAYERS) -> list[str]:
    out = []
    for mod, edges in graph.items():
        for line, target, _ in edges:
            if layer_of(target, layers) > layer_of(mod, layers):
                out.append(f"{mod}:{line} imports {target}, a higher layer")
    return out


def import_cycles(graph) -> list[list[str]]:
    """Every strongly connected group of two or more modules (lazy imports count: each is a cycle)."""
    succ = {m: sorted({t for _, t, _ in edges if t in graph}) for m, edges in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return out


def private_imports(paths: list[Path], root: Path, ours: tuple[str, ...] = ("fdfo_core", "nodes")) -> list[str]:
    """`from x import _name` where x is one of our modules (dunders such as __version__ are fine)."""
    out = []
    for path in paths:
        for line, mod, names in import_edges(path, root):
            if mod.split(".")[0] not in ours:
                continue
            bad = [n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
            if bad:
                out.append(f"{path.relative_to(root)}:{line} imports private {', '.join(bad)} from {mod}")
    return out


def imported_names(path: Path) -> dict[str, str]:
    """Names a module binds at its top level by importing them (name -> the line's import text)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = {}
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.If, ast.Try)):  # guarded imports are still top-level bindings
            stack += node.body + node.orelse + getattr(node, "finalbody", []) \
                + [s for h in getattr(node, "handlers", []) for s in h.body]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                out[(a.asname or a.name).split(".")[0]] = ast.unparse(node)
    return out


def reexported_imports(paths: list[Path], root: Path, ours: tuple[str, ...] = ("fdfo_core", "nodes")) -> list[str]:
    """`from x import name` where x is one of our modules (not a package: an __init__.py gathers
    its package's public names) that itself imports `name`: import it from where it is defined."""
    out, cache = [], {}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        for line, mod, names in import_edges(path, root):
            if not names or mod.split(".")[0] not in ours:
                continue
            source = root.joinpath(*mod.split(".")).with_suffix(".py")
            if not source.is_file():
                continue
            bound = cache.setdefault(source, imported_names(source))
            for n in names:
                if n in bound:
                    out.append(f"{rel}:{line} imports {n} from {mod}, which has it from `{bound[n]}`")
    return out


def front_end_imports(node_paths: list[Path], root: Path, front_ends: tuple[str, ...] = FRONT_ENDS) -> list[str]:
    """nodes/ modules importing a command-line front end of fdfo_core."""
    out = []
    for path in node_paths:
        for line, mod, _ in import_edges(path, root):
            parts = mod.split(".")
            if len(parts) > 1 and parts[0] == "fdfo_core" and parts[1] in front_ends:
                out.append(f"{path.relative_to(root)}:{line} imports {mod}: a front end must not import another")
    return out


def test_layers_only_import_downward():
    graph = core_graph()
    assert len(graph) > 50, "the scan found too few modules: is CORE right?"
    assert not upward_imports(graph), "an fdfo_core module imports a layer above its own (order: " \
        + " < ".join(LAYERS) + "):\n" + "\n".join(upward_imports(graph))


def test_no_import_cycles():
    cycles = import_cycles(core_graph())
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_imports_across_modules():
    root = CORE.parent
    paths = core_modules() + sorted((root / "nodes").rglob("*.py"))
    bad = private_imports(paths, root)
    assert not bad, "private names imported across modules (make them public where they live):\n" + "\n".join(bad)


def test_front_ends_are_imported_by_no_other_layer():
    root = CORE.parent
    graph = core_graph()
    below = [f"{m}:{line} imports {t}" for m, edges in graph.items() for line, t, _ in edges
             if t.split(".")[1:2] and t.split(".")[1] in FRONT_ENDS and m.split(".")[1:2] != [t.split(".")[1]]]
    bad = below + front_end_imports(sorted((root / "nodes").rglob("*.py")), root)
    assert not bad, "\n".join(bad)


def test_names_are_imported_from_the_module_that_defines_them():
    root = CORE.parent
    paths = core_modules() + sorted((root / "nodes").rglob("*.py"))
    bad = reexported_imports(paths, root)
    assert not bad, "names imported through a module that imports them itself (no re-exports; import each from " \
        "the module that defines it):\n" + "\n".join(bad)


#: No module under these folders grows past MAX_MODULE_LINES lines: a module that does is split
#: along a seam (issue 24), not allowed to become the next 1000-line file.
SIZE_CHECKED = ("fdfo_core", "nodes", "workflows")
MAX_MODULE_LINES = 650


def long_modules(root: Path, folders: tuple[str, ...] = SIZE_CHECKED, limit: int = MAX_MODULE_LINES) -> list[str]:
    """"path: N lines" for every .py file under `root`/`folders` longer than `limit` lines."""
    out = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > limit:
                out.append(f"{path.relative_to(root)}: {lines} lines")
    return out


def test_no_module_is_longer_than_650_lines():
    root = CORE.parent
    assert sum(1 for f in SIZE_CHECKED for _ in (root / f).rglob("*.py")) > 80, "the scan found too few modules"
    bad = long_modules(root)
    assert not bad, (f"modules over {MAX_MODULE_LINES} lines: split each along a seam (a part with a name of its own), "
                     "and list the new module in docs/architecture.md:\n" + "\n".join(bad))


def test_every_check_can_fail(tmp_path):
    """A synthetic tree with one fault of each kind: each check reports it (and only where it is)."""
    core = tmp_path / "fdfo_core"
    for pkg in ("files", "flow", "run", "cli"):
        (core / pkg).mkdir(parents=True)
        (core / pkg / "__init__.py").write_text("", encoding="utf-8")
    (core / "__init__.py").write_text("", encoding="utf-8")
    (core / "errors.py").write_text("class ConfigError(ValueError):\n    pass\n", encoding="utf-8")
    (core / "files" / "store.py").write_text(
        "from ..errors import ConfigError\n"
        "def f():\n    from ..run import loop\n", encoding="utf-8")  # (a) upward, lazily
    (core / "flow" / "a.py").write_text("from . import b\n", encoding="utf-8")
    (core / "flow" / "b.py").write_text("def g():\n    from .a import h\n", encoding="utf-8")  # (b) a <-> b
    (core / "flow" / "d.py").write_text("from ..errors import ConfigError\n", encoding="utf-8")
    (core / "run" / "loop.py").write_text("from ..errors import _hidden\nfrom ..flow.d import ConfigError\n",
                                          encoding="utf-8")  # (c) private; (e) re-exported
    (core / "cli" / "main.py").write_text("from ..run.loop import x\n", encoding="utf-8")
    (core / "flow" / "c.py").write_text("from ..cli import main\n", encoding="utf-8")  # (d) below a front end
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    (nodes / "n.py").write_text("from ..fdfo_core.cli.main import x\nfrom ..fdfo_core.run.loop import y\n",
                                encoding="utf-8")  # (d) nodes importing the CLI

    graph = core_graph(core)
    up = upward_imports(graph)
    assert any(u.startswith("fdfo_core.files.store:3 imports fdfo_core.run.loop") for u in up), up
    assert any(u.startswith("fdfo_core.flow.c:1 imports fdfo_core.cli.main") for u in up), up
    assert not any("fdfo_core.cli.main:" in u for u in up), up  # the CLI may import the run
    assert import_cycles(graph) == [["fdfo_core.flow.a", "fdfo_core.flow.b"]]
    priv = private_imports(sorted(core.rglob("*.py")), tmp_path)
    assert len(priv) == 1 and "_hidden from fdfo_core.errors" in priv[0] and "run/loop.py:1" in priv[0], priv
    fe = front_end_imports([nodes / "n.py"], tmp_path)
    assert len(fe) == 1 and "fdfo_core.cli.main" in fe[0], fe
    re = reexported_imports(sorted(core.rglob("*.py")), tmp_path)
    assert len(re) == 1 and re[0].startswith("fdfo_core/run/loop.py:2 imports ConfigError from fdfo_core.flow.d"), re
    (nodes / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1), encoding="utf-8")  # (f) too long
    (nodes / "fits.py").write_text("x = 1\n" * MAX_MODULE_LINES, encoding="utf-8")
    assert long_modules(tmp_path) == [f"nodes/long.py: {MAX_MODULE_LINES + 1} lines"]
