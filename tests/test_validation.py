"""External validation's slice-level figures (pipeline.evaluation.validation.cohort_slices): the AUC of the slice
score and the final masks' slice calls over the labelled cases of a predict run, as evaluate reports them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation import metrics as m
from pipeline.evaluation.validation import cohort_slices, describe_cohort


def case(case_id: str, probability, reference, tumour, blank=None) -> dict:
    """A case summary's slices list (Predictor.write_case), reference None for an unlabelled case."""
    n = len(probability)
    blank = blank or [False] * n
    reference = reference if reference is not None else [None] * n
    return {"case_id": case_id, "slices": [
        {"slice": i, "probability": p, "blank": b, "tumour": t, "reference_tumour": r}
        for i, (p, r, t, b) in enumerate(zip(probability, reference, tumour, blank, strict=True))]}


def test_cohort_slices_pool_the_labelled_non_blank_slices():
    cases = [
        case("a", [0.9, 0.8, 0.2, 0.1], [True, True, False, False], [True, False, False, False]),
        case("b", [0.7, 0.6, 0.0], [True, False, True], [True, True, False], blank=[False, False, True]),
        case("unlabelled", [0.9, 0.9], None, [True, True]),
    ]
    out = cohort_slices(cases, n_bootstrap=200)
    y = np.array([1, 1, 0, 0, 1, 0])  # b's blank slice (reference tumour) and the unlabelled case are left out
    score = [0.9, 0.8, 0.2, 0.1, 0.7, 0.6]
    called = np.array([1, 0, 0, 0, 1, 1])
    assert out["auc"] == pytest.approx(m.roc_auc(y, score)) == 1.0
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (2, 1, 1, 2)
    assert out == {**out, **m.call_summary(y, called)}
    assert out["n"] == 6 and out["n_positive"] == 3
    assert out["auc_ci_low"] <= out["auc"] <= out["auc_ci_high"]


def test_no_labelled_slice_gives_none_and_one_class_a_nan_auc():
    assert cohort_slices([case("u", [0.5], None, [False])]) is None
    out = cohort_slices([case("t", [0.9, 0.4], [True, True], [True, False])], n_bootstrap=50)
    assert math.isnan(out["auc"]) and out["sensitivity"] == 0.5 and math.isnan(out["specificity"])


def test_the_console_line_names_the_slice_figures():
    cohort = {"n_labelled": 2, "n_with_tumour": 2, "n_tumour_free": 0,
              "dice": {"mean": 0.8, "median": 0.85, "p5": 0.5}, "hd95": {"median": 3.0, "unit": "px"},
              "volume_error_relative": {"median": -0.1}, "missed_tumours": 0, "false_alarms_tumour_free": 0}
    assert "slices" not in describe_cohort(cohort)
    cohort["slices"] = cohort_slices([case("a", [0.9, 0.1], [True, False], [True, False])], n_bootstrap=50)
    line = describe_cohort(cohort)
    assert "slices: AUC 1.000" in line and "sensitivity 1.000, specificity 1.000 (2 slices, 1 with tumour)" in line
