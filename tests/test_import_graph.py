"""The pipeline's modules import each other without a cycle, and params.py stands apart from the data model.

The graph is read statically with ``ast`` from every pipeline/**/*.py, imports inside functions included
(a function-level import hides a cycle from Python, not from the design). An edge goes to the module an
import names: ``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``. Packages'
``__init__`` files are modules like any other; importing ``a.b.c`` also runs ``a/b/__init__.py``, but
that is Python's loading order, not a dependency of the importer on the package, so it is no edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PIPELINE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The pipeline modules that module ``name`` imports, anywhere in its file."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(package + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None when it is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the search path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_reader_sees_imports_inside_functions():
    """A check on the checker: an import inside a function (Cascade.load's) is an edge too."""
    assert "pipeline.data.task" in GRAPH["pipeline.data.case"]
    assert "pipeline.models.nets" in GRAPH["pipeline.evaluation.cascade"]  # imported inside Cascade.load
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_pipeline_modules():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_params_imports_nothing_from_the_data_model():
    """params.py is read by every stage: what it imports, every stage depends on (dvc.yaml)."""
    reached, todo = set(), ["pipeline.params"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += GRAPH[name]
    assert not [m for m in reached if m == "pipeline.data" or m.startswith("pipeline.data.")], sorted(reached)
