"""The package layout holds: core/ is TensorFlow only, the layers import only downwards
(core <- experiment <- run <- app), and no two modules import each other, even through a chain.

The import graph is read from the source with ``ast``, not from sys.modules: a function-level
import (common here, to keep TensorFlow out of commands that do not train) only runs on the path
that reaches it, and is a dependency all the same."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("core", "experiment", "run", "app")     # each may import only those before it


def ffrun_modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name: ffrun/**.py, and conf/__init__.py,
    which ships as ffrun.conf."""
    modules = {"ffrun.conf": REPO / "conf" / "__init__.py"}
    for path in sorted((REPO / "ffrun").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = ffrun_modules()


def imports_of(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported ffrun module, line) for every import statement in the file, at any depth.

    ``from ffrun.run import outputs`` imports the module ffrun.run.outputs; ``from ffrun.core.layers
    import Task`` imports ffrun.core.layers. Relative imports are resolved against the package."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found += [(t, node.lineno) for t in targets if t == "ffrun" or t.startswith("ffrun.")]
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges = graph.setdefault(name, {})
        for target, line in imports_of(name, path):
            edges.setdefault(target, line)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, grey/black marking)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


# --- the checker itself, on hand-made graphs and sources --------------------------------------

def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) is None
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a": 3}}) == ["a", "a"]
    # a diamond is not a cycle
    assert find_cycle({"a": {"b": 1, "c": 1}, "b": {"d": 1}, "c": {"d": 1}, "d": {}}) is None


def test_imports_are_read_at_any_depth_and_from_imports_name_modules(tmp_path):
    src = tmp_path / "loop.py"
    src.write_text("from ffrun.run import outputs\n"
                   "from ffrun.core.layers import Task\n"
                   "import numpy\n"
                   "def f():\n"
                   "    from . import results\n"
                   "    import ffrun.app.cli\n"
                   "    from ..core import trainer\n")
    assert imports_of("ffrun.run.loop", src) == [
        ("ffrun.run.outputs", 1), ("ffrun.core.layers", 2), ("ffrun.run.results", 5), ("ffrun.app.cli", 6),
        ("ffrun.core.trainer", 7)]


# --- the package ----------------------------------------------------------------------------

def test_every_ffrun_import_names_a_module_that_exists():
    """A function-level import of a module that moved (ffrun.loop -> ffrun.run.loop) fails only
    when its path runs; here it fails at once."""
    graph = import_graph()
    dangling = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}"
                for m, edges in graph.items() for t, line in edges.items() if t not in MODULES]
    assert not dangling, "\n".join(dangling)


def test_no_import_cycles_between_ffrun_modules():
    graph = import_graph()
    assert sum(map(len, graph.values())) > len(graph)     # imports were read: an empty graph has no cycle either
    cycle = find_cycle(graph)
    where = cycle and [f"{a} ({MODULES[a].relative_to(REPO)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    assert cycle is None, "import cycle: " + " -> ".join(where) + f" -> {cycle[-1]}"


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_layers_import_only_downwards(layer):
    """core imports nothing from experiment/run/app; experiment nothing from run/app; run nothing
    from app."""
    above = LAYERS[LAYERS.index(layer) + 1:]
    graph = import_graph()
    upward = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}"
              for m, edges in graph.items() if layer_of(m) == layer
              for t, line in edges.items() if layer_of(t) in above]
    assert not upward, "\n".join(upward)


def test_core_never_imports_omegaconf_or_hydra():
    """ffrun.core is the TensorFlow-only part (usable from a notebook without any YAML): importing
    every one of its modules in a fresh interpreter must not pull in the config libraries."""
    core = sorted(m for m in MODULES if m == "ffrun.core" or m.startswith("ffrun.core."))
    script = ("import importlib, json, sys\n"
              f"for name in {core!r}:\n"
              "    importlib.import_module(name)\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('omegaconf', 'hydra'))))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(core) > 5 and "ffrun.core.trainer" in core      # the list really is the package
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
