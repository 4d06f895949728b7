"""One reader registry (issue 14): every layout is declared once and listed in
``pipeline.data.sources.registry``; ingest, ``detect_layout`` and predict only ever ask the registry.

The proof: a toy layout that lives in this file only (a folder of ``slice_<n>.npy`` files per case)
is registered, and ingest's ``read_cases`` and predict's ``find_inputs`` + read + write pick it up
without any other change; unregistered, it is unknown again.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.case import Case
from pipeline.data.sources import detect_layout, list_case_paths, read_cases, reading_task, registry
from pipeline.data.sources.layout import CaseReader, Layout, WrittenMask
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError
from pipeline.evaluation.cascade import Cascade
from pipeline.params import SOURCES, DataParams
from pipeline.predict import Predictor, find_inputs

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
BRIGHT = 250  # the toy tumour's value in every channel; the fake models find it


# --- the toy layout: <root>/<case>/slice_<n>.npy uint8 [S, S, 3] (+ slice_<n>_mask.npy uint8 [S, S] 0/1)

def _slices(folder: Path) -> list[Path]:
    return sorted((p for p in folder.glob("slice_*.npy") if not p.stem.endswith("_mask")),
                  key=lambda p: int(p.stem.split("_")[1]))


def detect_npy(path: Path) -> str | None:
    if not path.is_dir():
        return None
    if _slices(path):
        return "npy_case"
    return "npy_root" if any(p.is_dir() and _slices(p) for p in path.iterdir()) else None


def read_npy(path: Path, task: TaskSpec, *, min_brain_fraction: float, labels: str) -> Case:
    slices = _slices(path)
    masks = [p.with_name(f"{p.stem}_mask.npy") for p in slices]
    has_labels = all(m.is_file() for m in masks)
    if labels == "required" and not has_labels:
        raise InputError(path, "slice without mask")
    image = np.stack([np.load(p) for p in slices])
    return Case(
        patient_id=path.name,
        image=image,
        labels=np.stack([np.load(m) for m in masks]) if has_labels else np.zeros(image.shape[:3], np.uint8),
        source="npy",
        channels=tuple(task.channels),
        slice_numbers=np.array([int(p.stem.split("_")[1]) for p in slices]),
        meta={"path": str(path), "has_labels": has_labels},
    )


def list_npy_cases(root: Path, task: TaskSpec, min_brain_fraction: float) -> list[tuple[Path, CaseReader]]:
    folders = sorted(p for p in root.iterdir() if detect_npy(p) == "npy_case")
    if not folders:
        raise InputError(root, "no npy case folders")
    return [(f, partial(read_npy, f, task, min_brain_fraction=min_brain_fraction, labels="required")) for f in folders]


def write_npy_masks(case: Case, mask: np.ndarray, folder: Path) -> WrittenMask:
    names = []
    for k, n in enumerate(case.slice_numbers):
        names.append(f"slice_{n}_mask.npy")
        np.save(folder / names[-1], mask[k].astype(np.uint8))
    return WrittenMask(outputs={"masks": names}, tumour_px=mask.sum(axis=(1, 2)).astype(np.int64))


NPY = Layout(
    name="npy_slices", sources=("npy",), case_kinds=("npy_case",), root_kinds=("npy_root",),
    detect=detect_npy, list_cases=list_npy_cases, read=read_npy, write_prediction=write_npy_masks,
    folder_hint="slice_<n>.npy files", cases_hint="npy case folders",
)


def write_npy_case(root: Path, name: str, tumour_slices: set[int], slices: int = 4) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for n in range(slices):
        image = np.full((SIZE, SIZE, 3), 40, np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if n in tumour_slices:
            image[8:14, 10:18] = BRIGHT
            mask[8:14, 10:18] = 1
        np.save(folder / f"slice_{n}.npy", image)
        np.save(folder / f"slice_{n}_mask.npy", mask)
    return folder


@pytest.fixture
def npy_layout() -> Iterator[Layout]:
    registry.register(NPY)
    try:
        yield NPY
    finally:
        registry.unregister(NPY)


class _BrightModel:
    """Stands in for a Keras model: the classifier says 1 for a slice with a BRIGHT pixel, the
    segmenter marks the BRIGHT pixels."""

    input_shape = (None, None, None, 3)  # one slice of any size

    def __init__(self, segmenter: bool):
        self.segmenter = segmenter

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        bright = (np.asarray(batch)[..., 1] >= BRIGHT).astype(np.float32)
        return bright[..., None] if self.segmenter else bright.reshape(len(batch), -1).max(axis=1, keepdims=True)


def _data(root: Path | str = "") -> DataParams:
    return DataParams(source="npy", root=str(root), image_size=SIZE, channels=("t1", "flair", "t1gd"),
                      clip_percentiles=(0.5, 99.5), min_brain_fraction=0.0, on_error="fail")


# --- tests ---------------------------------------------------------------------------------------------

def test_a_registered_layout_is_read_by_ingest_and_predicted_and_written_by_predict(
        npy_layout: Layout, tmp_path: Path) -> None:
    root = tmp_path / "npy"
    a = write_npy_case(root, "case_a", tumour_slices={1, 2})
    b = write_npy_case(root, "case_b", tumour_slices=set())
    assert detect_layout(root) == "npy_root" and detect_layout(a) == "npy_case"

    # ingest
    assert list_case_paths(_data(root)) == [a, b]
    cases = list(read_cases(_data(root)))
    assert [c.patient_id for c in cases] == ["case_a", "case_b"]
    assert cases[0].mask[1:3].any() and not cases[0].mask[[0, 3]].any() and not cases[1].mask.any()

    # predict: discovery, reading and writing all through the layout
    items = find_inputs(tmp_path)
    assert [(i.path, i.layout, i.error) for i in items] == [(a, "npy_case", None), (b, "npy_case", None)]
    predictor = Predictor(Cascade(_BrightModel(False), _BrightModel(True), threshold=0.5), reading_task(_data()))
    results = predictor.predict_path(root, tmp_path / "out")
    assert [r["status"] for r in results] == ["ok", "ok"]
    first = results[0]
    assert first["layout"] == "npy_case" and first["source"] == "npy" and first["slices_with_tumour"] == [1, 2]
    assert first["outputs"]["masks"] == [f"slice_{n}_mask.npy" for n in range(4)]
    assert first["validation"]["dice"] == pytest.approx(1.0)
    for n in range(4):
        written = np.load(tmp_path / "out" / "case_a" / f"slice_{n}_mask.npy")
        np.testing.assert_array_equal(written, np.load(a / f"slice_{n}_mask.npy"))
    assert json.loads((tmp_path / "out" / "case_b" / "summary.json").read_text())["tumour_present"] is False


def test_an_unregistered_layout_is_unknown(tmp_path: Path) -> None:
    root = tmp_path / "npy"
    case = write_npy_case(root, "case_a", tumour_slices={1})
    with pytest.raises(InputError, match="unrecognised folder"):
        detect_layout(root)
    [item] = find_inputs(root)  # searched, and reported as the one input that is no case
    assert item.path == case and item.layout is None and "unrecognised folder" in item.error.problem
    with pytest.raises(ValueError, match="unknown data.source 'npy'"):
        list(read_cases(_data(root)))


def test_register_refuses_a_kind_or_source_that_is_taken() -> None:
    kaggle = registry.for_source("lgg")
    with pytest.raises(ValueError, match="lgg_case"):
        registry.register(Layout(**{**NPY.__dict__, "case_kinds": ("lgg_case",)}))
    with pytest.raises(ValueError, match="demo"):
        registry.register(Layout(**{**NPY.__dict__, "sources": ("demo",)}))
    assert registry.layouts()[0] is kaggle and NPY not in registry.layouts()


def test_every_data_source_has_one_layout() -> None:
    """params.SOURCES (what params.yaml may name) and the registry's layouts agree."""
    served = [source for layout in registry.layouts() for source in layout.sources]
    assert sorted(served) == sorted(SOURCES)
    kinds = [kind for layout in registry.layouts() for kind in layout.kinds]
    assert len(kinds) == len(set(kinds))


def _code_strings(tree: ast.AST) -> set[str]:
    """String constants of a module, its docstrings left out."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def test_layouts_are_enumerated_in_the_registry_only() -> None:
    """No module but a layout's own names its kinds in code, and only the registry imports the Layout
    objects: detection, ingest and predict cannot grow their own if/elif over layouts again."""
    declared_in = {layout: layout.detect.__module__.replace(".", "/") + ".py" for layout in registry.layouts()}
    layout_names = {name for layout in registry.layouts()
                    for name, value in vars(importlib.import_module(layout.detect.__module__)).items()
                    if value is layout}  # KAGGLE_3M, BRATS2021, DECATHLON
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        strings = _code_strings(tree)
        for layout, module in declared_in.items():
            if rel != module:
                assert not strings & set(layout.kinds), f"{rel} names {layout.name} kinds {strings & set(layout.kinds)}"
        if rel != "pipeline/data/sources/registry.py":
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        for alias in node.names}
            assert not imported & layout_names, f"{rel} imports layouts {imported & layout_names}"


def test_every_layout_reads_the_same_way() -> None:
    """Each layout's reader takes the task spec and the brain-fraction cut, and nothing else; so does
    listing a root. Predict hands over its bundle's spec and 0, ingest ``reading_task(data)`` and
    data.min_brain_fraction: neither builds the other's parameters."""
    for layout in registry.layouts():
        read = inspect.signature(layout.read).parameters
        assert list(read) == ["path", "task", "min_brain_fraction", "labels"], layout.name
        assert [p.kind for p in read.values()][2:] == [inspect.Parameter.KEYWORD_ONLY] * 2, layout.name
        assert len(inspect.signature(layout.list_cases).parameters) == 3, layout.name
    predictor = ast.parse((ROOT / "pipeline" / "predict" / "predictor.py").read_text())
    assert "DataParams" not in {node.id for node in ast.walk(predictor) if isinstance(node, ast.Name)}
