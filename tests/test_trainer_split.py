"""The trainer split of issue 24: the methods stand on the run loop's protected API, and phases
pass state as return values (checked on the source, so a new method is held to it too)."""

import ast
from pathlib import Path

import fdfo_core

CORE = Path(fdfo_core.__file__).parent
LOOP = CORE / "run" / "trainer.py"
METHODS = sorted((CORE / "methods").glob("*.py"))


def _classes(path: Path) -> list[ast.ClassDef]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]


def _self_targets(fn: ast.AST) -> set[str]:
    """Attributes of `self` assigned in a function (plain, augmented or annotated assignment)."""
    out = set()
    for n in ast.walk(fn):
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, (ast.AugAssign, ast.AnnAssign)) else []
        for t in targets:
            for e in ast.walk(t):
                if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
                    out.add(e.attr)
    return out


def _loop_private_members() -> set[str]:
    (loop,) = [c for c in _classes(LOOP) if c.name == "RunLoop"]
    names = {f.name for f in loop.body if isinstance(f, ast.FunctionDef)}
    for f in loop.body:
        if isinstance(f, ast.FunctionDef):
            names |= _self_targets(f)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_methods_use_no_private_member_of_the_loop():
    private = _loop_private_members()
    assert "_reward_worked" in private and "_started" in private  # the scan sees the loop's privates
    used = []
    for path in METHODS:
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Attribute) and n.attr in private:
                used.append(f"{path.name}:{n.lineno} .{n.attr}")
    assert used == []


def test_every_attribute_is_introduced_in_init_and_no_getattr_default_on_self():
    init_of: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    classes = []
    for path in [LOOP, *METHODS]:
        for c in _classes(path):
            classes.append((path, c))
            bases[c.name] = [b.id for b in c.bases if isinstance(b, ast.Name)]
            init = [f for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
            init_of[c.name] = _self_targets(init[0]) if init else set()

    def introduced(name: str) -> set[str]:
        return init_of.get(name, set()).union(*(introduced(b) for b in bases.get(name, [])))

    stray, getattrs = [], []
    for path, c in classes:
        known = introduced(c.name)
        for f in c.body:
            if isinstance(f, ast.FunctionDef) and f.name != "__init__":
                stray += [f"{path.name}: {c.name}.{f.name} sets self.{a}" for a in _self_targets(f) - known]
        for n in ast.walk(c):
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr" and n.args
                    and isinstance(n.args[0], ast.Name) and n.args[0].id == "self"):
                getattrs.append(f"{path.name}:{n.lineno}")
    assert stray == [] and getattrs == []
