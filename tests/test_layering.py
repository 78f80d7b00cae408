"""The package's layers import downwards only (ops <- modules <- sharding <- the package
root and its re-export shims), and no module imports, at import time, a module that
imports it back. Function-level imports count for the layering, not for cycles."""

import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "torchrec_ext")
LAYERS = {"ops": 0, "modules": 1, "sharding": 2}
ROOT = 3  # torchrec_ext/__init__.py and the shims beside it


def module_files():
    for dirpath, _, files in os.walk(PKG):
        if "_build" in dirpath or "csrc" in dirpath:
            continue
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                yield (rel[: -len(".__init__")] if rel.endswith(".__init__") else rel), path


MODULES = dict(module_files())


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], ROOT) if len(parts) > 1 else ROOT


def imports(path: str, top_level_only: bool):
    """The torchrec_ext modules a file imports (a `from a import b` names a.b if that is a module)."""
    tree = ast.parse(open(path).read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            if name == "torchrec_ext" or name.startswith("torchrec_ext."):
                yield node.lineno, name


def test_the_walk_sees_every_layer():
    assert {layer(m) for m in MODULES} == {0, 1, 2, ROOT}
    assert len(MODULES) > 30


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downwards_only(module):
    up = [(line, name) for line, name in imports(MODULES[module], top_level_only=False)
          if layer(name) > layer(module)]
    assert not up, f"{module} imports from a higher layer: {up}"


def find_cycle(graph):
    """A list of modules that import each other in a ring, or None."""
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n, stack + [n])
                if found:
                    return found
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [m])
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = {m: {n for _, n in imports(p, top_level_only=True) if n in MODULES} for m, p in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_can_fail(tmp_path):
    """A planted upward import and a planted cycle are reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from torchrec_ext.sharding import get_sharders\n")
    assert [n for _, n in imports(str(bad), False)] == ["torchrec_ext.sharding"]
    assert layer("torchrec_ext.sharding") > layer("torchrec_ext.modules.bad")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
