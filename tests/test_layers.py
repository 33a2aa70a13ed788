"""The package's layers only look down, and its modules import no cycle.

Reads every module's imports with ``ast`` (module-level and inside functions alike: an import
deferred into a function to dodge a cycle is still a dependency) and checks them against
:data:`purerigl.LAYERS`, the one place the layer order is written. Also checks that every package
folder is listed in pyproject.toml, so a non-editable install has all of them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import purerigl

ROOT = Path(__file__).resolve().parents[1]
#: package folder -> dotted package name (cli/ installs as purerigl.cli)
SOURCES = {ROOT / "purerigl": "purerigl", ROOT / "cli": "purerigl.cli"}


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module (a package is its __init__.py)."""
    found = {}
    for folder, dotted in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((dotted, *parts))] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The purerigl modules ``name`` imports (``from p import m`` counts as m when m is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        else:
            continue
        out.update(t for t in targets if t == "purerigl" or t.startswith("purerigl."))
    out.discard(name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer_of(name: str) -> tuple[int, str] | None:
    """(layer index, top-level part) of a module; None for the package itself."""
    parts = name.split(".")
    if len(parts) == 1:
        return None
    top = parts[1]
    for i, layer in enumerate(purerigl.LAYERS):
        if top in layer:
            return i, top
    raise AssertionError(f"{name}: {top!r} is in no layer of purerigl.LAYERS; add it there")


def test_every_module_is_in_a_layer():
    for name in MODULES:
        _layer_of(name)


def test_imports_only_look_down():
    bad = []
    for name, targets in GRAPH.items():
        here = _layer_of(name)
        for target in targets:
            there = _layer_of(target)
            if here is None or there is None:
                continue  # the package's own __init__ (its public names) and imports of it
            if there[0] > here[0] or (there[0] == here[0] and there[1] != here[1]):
                bad.append(f"{name} imports {target} ({there[1]} is not below {here[1]})")
    assert not bad, "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _without_package_reexports(graph):
    """Drop the edges from a package's __init__ to its own submodules: the package exports them, and
    a submodule importing a sibling through the package is the import that would close a cycle, so the
    edge submodule -> package is kept and checked."""
    return {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}


def test_no_import_cycles():
    cycle = _cycle(_without_package_reexports(GRAPH))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) in (["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"])
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("source, target, allowed", [
    ("purerigl.kernels.host_arrays", "purerigl.nn.layers", False),  # upward
    ("purerigl.formats.budget", "purerigl.data.idx", False),  # a peer of the same layer
    ("purerigl.dst.rigl", "purerigl.kernels.reference", True),
    ("purerigl.cli.train", "purerigl.training.loop", True),
])
def test_the_layer_rule(source, target, allowed):
    here, there = _layer_of(source), _layer_of(target)
    assert (there[0] < here[0] or there[1] == here[1]) is allowed


def test_every_package_is_listed_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    listed = set(re.findall(r'^\s*"(purerigl[\w.]*)",\s*$', text, re.M))
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages == listed, f"missing: {sorted(packages - listed)}, not packages: {sorted(listed - packages)}"
