"""One comparison for the slice gate and the metrics: ``score >= threshold`` in float64 on float32 scores.

The classifier's scores are float32; thresholds are Python floats (params.yaml, threshold.json). NumPy
compares a float32 array with a Python float in float32, which rounds the threshold: at 0.7 the gate
admitted the score float32(0.7) = 0.69999999 while the confusion matrix (float64) counted it negative.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from pipeline.evaluation.cascade import gate
from pipeline.evaluation.metrics import classification_summary, predicted_positive, select_threshold


def sklearn_predicted_positives(y: np.ndarray, scores: np.ndarray, threshold: float) -> int:
    """Predicted positives at ``threshold`` read off scikit-learn's ROC curve (all its points)."""
    fpr, tpr, thresholds = roc_curve(y, scores, drop_intermediate=False)  # thresholds descending
    at = np.flatnonzero(thresholds >= threshold)
    return int(round(tpr[at[-1]] * y.sum() + fpr[at[-1]] * (~y).sum())) if at.size else 0


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    scores = rng.random(300).astype(np.float32)
    scores[:7] = np.float32(0.7)  # ties at a threshold that float32 cannot represent
    scores[7:10] = np.float32(0.25)  # ... and at one it can
    return rng.random(300) < 0.4, scores


@pytest.mark.parametrize("threshold", [0.7, 0.25, "a score"])
def test_gate_counts_equal_confusion_and_sklearn(scored, threshold) -> None:
    y, scores = scored
    threshold = float(scores[42]) if threshold == "a score" else threshold
    gated = gate(scores, threshold)
    summary = classification_summary(y, scores, threshold)
    expected = int((scores.astype(np.float64) >= threshold).sum())
    assert gated.sum() == summary["tp"] + summary["fp"] == expected
    assert gated.sum() == sklearn_predicted_positives(y, scores.astype(np.float64), threshold)
    assert (gated & y).sum() == summary["tp"]


def test_decimal_threshold_is_not_rounded_to_float32(scored) -> None:
    _, scores = scored
    assert float(np.float32(0.7)) < 0.7  # float32(0.7) = 0.69999999: below the threshold 0.7
    assert not gate(scores[:7], 0.7).any() and not predicted_positive(scores[:7], 0.7).any()
    assert gate(scores[:7], float(np.float32(0.7))).all()  # the score itself as threshold: at it, positive


def test_chosen_threshold_gates_exactly_the_scores_at_or_above_it(scored) -> None:
    y, scores = scored
    threshold = select_threshold(y, scores, "youden")
    assert threshold in scores.astype(np.float64)  # an exact score
    gated = gate(scores, threshold)
    assert gated.sum() == classification_summary(y, scores, threshold)["tp"] + classification_summary(
        y, scores, threshold)["fp"]
    assert gated.shape == scores.shape and gated.dtype == bool
