"""The segmenter: one pixel threshold, written once.

``PIXEL_THRESHOLD`` (pipeline.models.nets.segmenter) is the only place the number is written: training's
metrics and the sidecar take it from there, evaluate reads the sidecar's into the bundle, prediction the bundle's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from pipeline.evaluation.cascade import combine, gated_mask
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.models.nets.segmenter import PIXEL_THRESHOLD

ROOT = Path(__file__).resolve().parents[1]
# Where a segmenter pixel threshold is given: these calls' arguments, these keywords and these dict keys.
THRESHOLD_CALLS = {"DiceAt", "IoUAt", "combine", "Cascade", "load"}
THRESHOLD_NAMES = {"seg_threshold", "threshold"}


def threshold_literals(tree: ast.AST) -> list[int]:
    """Line numbers where a number is written as a segmenter pixel threshold in ``tree``."""
    lines = []
    for node in ast.walk(tree):
        values: list[ast.AST] = []
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in {"DiceAt", "IoUAt"}:
                values += node.args[:1]
            if name == "combine":
                values += node.args[2:3]
            if name in THRESHOLD_CALLS:
                values += [k.value for k in node.keywords if k.arg == "seg_threshold"]
        elif isinstance(node, ast.Dict):  # the sidecar's "threshold" (the classifier's sidecar has none)
            values += [v for k, v in zip(node.keys, node.values)
                       if isinstance(k, ast.Constant) and k.value in ("threshold", "seg_threshold")
                       and isinstance(v, ast.Constant)]
        elif isinstance(node, (ast.AnnAssign, ast.arguments)):  # a field or parameter default
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and node.target.id == "seg_threshold" and node.value is not None:
                values.append(node.value)
            if isinstance(node, ast.arguments):
                named = node.args[len(node.args) - len(node.defaults):]
                values += [d for a, d in zip(named, node.defaults) if a.arg in THRESHOLD_NAMES]
        lines += [v.lineno for v in values if isinstance(v, ast.Constant) and isinstance(v.value, float)]
    return lines


def test_the_literal_finder_finds_each_way_of_writing_a_threshold():
    source = ("DiceAt(0.5)\ncombine(p, g, 0.5)\nCascade.load(a, b, threshold=0.3, seg_threshold=0.5)\n"
              "x = {'threshold': 0.5}\nclass C:\n    seg_threshold: float = 0.5\ndef f(seg_threshold=0.5): ...\n"
              "combine(p, g, PIXEL_THRESHOLD)\n")
    assert sorted(threshold_literals(ast.parse(source))) == [1, 2, 3, 4, 6, 7]


def test_the_segmenter_pixel_threshold_is_written_once():
    found = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        lines = threshold_literals(ast.parse(path.read_text()))
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    assert not found, f"a segmenter pixel threshold written as a number (use PIXEL_THRESHOLD): {found}"
    assert 0 < PIXEL_THRESHOLD < 1


def test_gated_mask_is_combine_on_a_thresholded_mask():
    rng = np.random.default_rng(0)
    probabilities = rng.random((4, 8, 8)).astype(np.float32)
    gated = np.array([True, False, True, True])
    post = PostProcessing(min_component_px=2, keep_largest_component=True)
    for threshold in (PIXEL_THRESHOLD, 0.8):
        expected = combine(probabilities, gated, threshold, post)
        assert np.array_equal(gated_mask(probabilities >= threshold, gated, post), expected)
        assert not expected[1].any() and expected.any()
