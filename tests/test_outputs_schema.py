"""One outputs schema (pipeline/evaluation/schema.py): evaluate's code, the docs, the test fixtures and the
report all agree with it."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fake_outputs import fake_params, write_fake_outputs

from pipeline.evaluation import schema, schema_docs
from pipeline.evaluation.gallery import explain_test_slices
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.evaluation.scoring import Scored, evaluate_split
from pipeline.report.build import load_inputs, report_context


def all_paths(group: schema.Group, prefix: str = "") -> set[str]:
    """Dotted paths of every key of `group`, objects and leaves."""
    out = set()
    for key, spec in group.keys.items():
        out.add(f"{prefix}{key}")
        if isinstance(spec, schema.Group):
            out |= all_paths(spec, f"{prefix}{key}.")
    return out


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory):
    return write_fake_outputs(tmp_path_factory.mktemp("schema"), n_patients=12)


def test_docs_metrics_section_is_generated_from_the_schema():
    section = schema_docs.docs_section(schema_docs.DOCS.read_text(encoding="utf-8"))
    assert section == schema_docs.markdown(), "docs/outputs.md is stale: run `python -m pipeline.evaluation.schema_docs`"


@pytest.mark.parametrize("nan_metrics", [False, True])
def test_fake_outputs_have_exactly_the_schema_keys(tmp_path, nan_metrics):
    run = write_fake_outputs(tmp_path, n_patients=12, nan_metrics=nan_metrics)
    schema.check(json.loads((run.eval_dir / "metrics_full.json").read_text()))
    assert list(json.loads((run.reports_dir / "metrics.json").read_text())) == list(schema.HEADLINE)


def test_check_names_the_drift():
    metrics = {"a": 1, "b": {"c": 2, "d": 3}}
    spec = schema.Group("", {"a": "", "b": schema.Group("", {"c": "", "e": ""})})
    with pytest.raises(schema.SchemaError, match=r"missing \['b.e'\].*not in the schema \['b.d'\]"):
        schema.check(metrics, spec)


def test_a_renamed_key_is_drift(fake_run):
    metrics = json.loads((fake_run.eval_dir / "metrics_full.json").read_text())
    schema.check(metrics)
    drifted = copy.deepcopy(metrics)
    drifted["test"]["cascade"]["hd95_n_empty_truth"] = drifted["test"]["cascade"].pop("hd95_n_nan")
    with pytest.raises(schema.SchemaError, match="hd95_n_empty_truth"):
        schema.check(drifted)


def test_headline_is_small_flat_and_points_into_the_full_metrics(fake_run):
    leaves = set(schema.leaf_paths(schema.METRICS))
    assert set(schema.HEADLINE.values()) <= leaves
    headline = json.loads((fake_run.reports_dir / "metrics.json").read_text())
    assert len(schema.value_paths(headline)) <= 10, "dvc exp show must stay readable"
    assert all(not isinstance(v, (dict, list)) for v in headline.values())
    full = json.loads((fake_run.eval_dir / "metrics_full.json").read_text())
    assert headline == {k: schema.lookup(full, p) for k, p in schema.HEADLINE.items()}


def tiny_scored(split: str) -> tuple[Scored, Any]:
    """Three patients of one split (two with tumour, one without), 4 slices of 8x8 each."""
    rng = np.random.default_rng(0)
    rows, truth, seg = [], {}, {}
    for pid, tumour in (("p1", True), ("p2", True), ("p3", False)):
        t = np.zeros((4, 8, 8), bool)
        if tumour:
            t[1:3, 2:5, 2:5] = True
        truth[pid], seg[pid] = t, np.roll(t, 1, axis=2)
        for i in range(4):
            rows.append({"patient_id": pid, "slice_index": i, "split": split, "has_tumour": bool(t[i].any()),
                         "probability": float(rng.uniform(0.6, 1) if t[i].any() else rng.uniform(0, 0.5))})
    store = SimpleNamespace(patients={pid: {"spacing_mm": None, "channels": ["t1", "flair", "t1gd"]}
                                      for pid in truth})
    slices = pd.DataFrame(rows)
    slices["classifier_probability"] = slices.probability  # slice_score "classifier"
    return Scored(slices, seg, truth), store


def test_evaluate_split_writes_the_split_keys_of_the_schema():
    scored, store = tiny_scored("val")
    metrics, _, _ = evaluate_split(scored, store, "val", 0.5, PostProcessing(0, False), 10, 0)
    schema.check(metrics, schema.METRICS.keys["val"], name="evaluate_split")


def test_cascade_slices_count_the_final_masks_not_the_gate():
    """A gate at 0 passes every slice; the segmenter draws nothing on the tumour-free ones, so the final masks
    call them tumour-free: the gate's specificity is 0, the cascade's slice calls' 1."""
    scored, store = tiny_scored("val")
    metrics, slices, _ = evaluate_split(scored, store, "val", 0.0, PostProcessing(0, False), 10, 0)
    gate, calls = metrics["classifier"], metrics["cascade_slices"]
    assert (gate["tp"], gate["fp"], gate["fn"], gate["tn"]) == (4, 8, 0, 0)
    assert (calls["tp"], calls["fp"], calls["fn"], calls["tn"]) == (4, 0, 0, 8)
    assert calls["specificity"] == 1.0 and gate["specificity"] == 0.0
    assert calls["n"] == len(slices) and calls["n_positive"] == int(slices.has_tumour.sum())
    # at 0.5 the gate passes just the tumour slices, and the two agree
    metrics, _, _ = evaluate_split(scored, store, "val", 0.5, PostProcessing(0, False), 10, 0)
    assert {k: metrics["cascade_slices"][k] for k in ("tp", "fp", "fn", "tn")} == {
        k: metrics["classifier"][k] for k in ("tp", "fp", "fn", "tn")}
    # the calls are counted after post-processing: components under 20 px (each tumour is 3x3 on a slice) removed
    metrics, _, _ = evaluate_split(scored, store, "val", 0.5, PostProcessing(20, False), 10, 0)
    assert metrics["classifier"]["tp"] == 4 and metrics["cascade_slices"]["tp"] == 0
    assert metrics["cascade_slices"]["sensitivity"] == 0.0


def test_explain_without_tumour_slices_writes_the_explain_keys(tmp_path):
    scored, store = tiny_scored("test")
    slices = scored.slices[~scored.slices.has_tumour].assign(predicted_positive=False).iloc[:0]
    _, pointing = explain_test_slices(None, "", store, slices, fake_params().evaluate, tmp_path)
    schema.check(pointing, schema.METRICS.keys["test"].keys["explain"], name="explain")


class Recording(dict):
    """A metrics dict that records the dotted path of every key looked up in it."""

    def __init__(self, data: dict, reads: set[str], prefix: str = ""):
        super().__init__({k: Recording(v, reads, f"{prefix}{k}.") if isinstance(v, dict) else v
                          for k, v in data.items()})
        self.reads, self.prefix = reads, prefix

    def __getitem__(self, key):
        self.reads.add(f"{self.prefix}{key}")
        return super().__getitem__(key)

    def __contains__(self, key):
        self.reads.add(f"{self.prefix}{key}")
        return super().__contains__(key)

    def get(self, key, default=None):
        self.reads.add(f"{self.prefix}{key}")
        return super().get(key, default)


def test_the_report_reads_only_keys_of_the_schema(fake_run):
    inputs = load_inputs(fake_run.reports_dir, fake_run.slices_dir, fake_run.split_csv, fake_run.models_dir)
    reads: set[str] = set()
    inputs.metrics = Recording(inputs.metrics, reads)
    report_context(inputs, fake_run.params, "test")
    assert {"test.classifier.auc", "test.cascade.hd95_median", "test.explain.pointing_game"} <= reads
    assert reads <= all_paths(schema.METRICS), sorted(reads - all_paths(schema.METRICS))

