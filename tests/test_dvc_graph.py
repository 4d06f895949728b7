"""dvc.yaml declares everything a stage runs and reads, so `dvc repro` never keeps a stale result.

- code: the `pipeline` modules a stage imports, found by walking imports (statically, transitively) from
  pipeline/stages/<stage>.py and from what `python -m pipeline <stage>` runs in pipeline/__main__.py;
  every one must be a dep (a folder dep covers what is inside it) and every code dep must be imported;
- files: the stage module's READS and WRITES are exactly its other deps and its outs, and every
  `pipeline.paths` location that the stage's code names lies on one of them;
- params: the params.yaml sections the stage's module reads (all of them when it hands on `params` whole).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from pipeline import paths
from pipeline.__main__ import STAGES

ROOT = Path(__file__).resolve().parents[1]
DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file of a dotted module name under the repository root, or None (not a module)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_names(nodes: list[ast.AST], module: str, is_package: bool) -> set[str]:
    """Dotted `pipeline.*` names imported anywhere in `nodes` (function bodies included)."""
    names: set[str] = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(package + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n == "pipeline" or n.startswith("pipeline.")}


def cli_imports() -> set[str]:
    """What `python -m pipeline <stage>` imports: pipeline/__main__.py's module level and `main`."""
    tree = ast.parse((ROOT / "pipeline" / "__main__.py").read_text())
    nodes = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    nodes += [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    return imported_names(nodes, "pipeline.__main__", False) | {"pipeline.__main__"}


def stage_modules(stage: str) -> dict[str, Path]:
    """Every `pipeline` module the stage runs (dotted name -> file), packages' __init__ included."""
    todo = [f"pipeline.stages.{stage}", *cli_imports()]
    found: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        path = module_file(name) if name != "pipeline.__main__" else ROOT / "pipeline" / "__main__.py"
        if name in found or path is None:
            continue
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        if name != "pipeline.__main__":
            todo += imported_names([ast.parse(path.read_text())], name, path.name == "__init__.py")
    return found


def covers(dep: str, path: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(dep) or PurePosixPath(dep) in PurePosixPath(path).parents


def related(a: PurePosixPath, b: PurePosixPath) -> bool:
    return a == b or a in b.parents or b in a.parents


def code_deps(stage: str) -> list[str]:
    return [d for d in DVC_STAGES[stage]["deps"] if d.startswith("pipeline/")]


def outs(stage: str) -> set[str]:
    spec = DVC_STAGES[stage]
    entries = [e for key in ("outs", "metrics", "plots") for e in spec.get(key, [])]
    return {e if isinstance(e, str) else next(iter(e)) for e in entries}


def test_dvc_yaml_has_every_stage():
    assert set(DVC_STAGES) == set(STAGES)


def test_the_import_walk_finds_what_a_stage_runs():
    """A check on the checker: the evaluate stage reaches the nets through training and cascade."""
    modules = stage_modules("evaluate")
    assert {"pipeline.models.nets.resunet", "pipeline.params", "pipeline.__main__", "pipeline.stages"} <= set(modules)
    assert "pipeline.predict" not in modules, "predict_main's imports are not run by a stage"
    assert "pipeline.data.demo" not in stage_modules("ingest"), "editing the demo generator must not re-ingest"
    assert "pipeline.data.demo" in stage_modules("demo")


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_the_modules_the_stage_imports(stage):
    files = sorted(str(p.relative_to(ROOT).as_posix()) for p in stage_modules(stage).values())
    deps = code_deps(stage)
    missing = [f for f in files if not any(covers(d, f) for d in deps)]
    unused = [d for d in deps if not any(covers(d, f) for f in files)]
    assert not missing, f"dvc.yaml stage {stage!r} lacks deps on modules it imports: {missing}"
    assert not unused, f"dvc.yaml stage {stage!r} has deps on code it does not import: {unused}"


@pytest.mark.parametrize("stage", STAGES)
def test_data_deps_and_outs_are_the_stage_reads_and_writes(stage):
    module = importlib.import_module(f"pipeline.stages.{stage}")
    data_deps = {d for d in DVC_STAGES[stage]["deps"] if not d.startswith("pipeline/")}
    assert data_deps == {str(PurePosixPath(p)) for p in module.READS}, f"stage {stage!r}: deps vs READS"
    assert outs(stage) == {str(PurePosixPath(p)) for p in module.WRITES}, f"stage {stage!r}: outs vs WRITES"


@pytest.mark.parametrize("stage", STAGES)
def test_every_location_the_stage_code_names_is_declared(stage):
    """A `pipeline.paths` location used by the stage's code must be, contain or lie in a READS/WRITES entry."""
    module = importlib.import_module(f"pipeline.stages.{stage}")
    declared = [PurePosixPath(p) for p in (*module.READS, *module.WRITES) if "${" not in str(p)]
    constants = {name for name, value in vars(paths).items() if isinstance(value, Path)}
    used = set()
    for name, path in stage_modules(stage).items():
        if name in ("pipeline.__main__", "pipeline.paths"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "pipeline.paths":
                used.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "paths":
                used.add(node.attr)
    undeclared = [n for n in sorted(used & constants)
                  if not any(related(PurePosixPath(getattr(paths, n)), d) for d in declared)]
    assert not undeclared, f"stage {stage!r} uses {undeclared} but its READS/WRITES do not name them"


def params_read(stage: str) -> set[str]:
    """The params.yaml sections the stage module reads; all of them when it passes `params` on whole."""
    tree = ast.parse((ROOT / "pipeline" / "stages" / f"{stage}.py").read_text())
    sections, whole = set(), False
    attribute_values = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "params":
            sections.add(node.attr)
        elif isinstance(node, ast.Name) and node.id == "params" and id(node) not in attribute_values:
            whole = True
    everything = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    return everything if whole else sections


def params_declared(stage: str) -> set[str]:
    everything = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    declared: set[str] = set()
    for entry in DVC_STAGES[stage].get("params", []):
        if isinstance(entry, str):
            declared.add(entry.split(".")[0])
        else:  # {"params.yaml": None}: the whole file
            (file, keys), = entry.items()
            assert file == "params.yaml", entry
            declared |= everything if keys is None else {k.split(".")[0] for k in keys}
    return declared


@pytest.mark.parametrize("stage", STAGES)
def test_params_are_the_sections_the_stage_reads(stage):
    assert params_declared(stage) == params_read(stage), stage
