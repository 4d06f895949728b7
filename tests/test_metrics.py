"""Evaluation metrics: GUIDE reference values, edge cases and hand-computed examples."""

from __future__ import annotations

import math
import time
from itertools import combinations_with_replacement
from typing import Any

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.evaluation import metrics as m
from pipeline.evaluation import postprocess

PRED = np.eye(2)
LABEL_A = np.array([[1, 1], [0, 0]])
LABEL_B = np.array([[1, 1], [0, 1]])
Y_LONG = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
PRED_LONG = np.array([1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0])


def square(shape: tuple[int, ...], top_left: tuple[int, ...], size: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, a + size) for a in top_left)] = True
    return mask


# ----------------------------------------------------------------------------- GUIDE reference values


def test_dice_guide_values() -> None:
    assert m.dice(LABEL_A, PRED, epsilon=1) == pytest.approx(0.6000, abs=1e-4)
    assert m.dice(LABEL_B, PRED, epsilon=1) == pytest.approx(0.8333, abs=1e-4)
    truth = np.stack([LABEL_A, LABEL_B], axis=-1)
    pred = np.stack([PRED, PRED], axis=-1)
    np.testing.assert_allclose(m.dice_per_class(truth, pred, epsilon=1), [0.6, 5 / 6], atol=1e-4)
    assert m.mean_dice(truth, pred, epsilon=1) == pytest.approx(0.7167, abs=1e-4)
    # classes first works the same
    assert m.mean_dice(np.moveaxis(truth, -1, 0), np.moveaxis(pred, -1, 0), 1, class_axis=0) == pytest.approx(0.7167, abs=1e-4)


@pytest.mark.parametrize(("label", "sens", "spec"), [(LABEL_A, 0.5, 0.5), (LABEL_B, 0.6667, 1.0)])
def test_sensitivity_specificity_guide_eye(label: np.ndarray, sens: float, spec: float) -> None:
    summary = m.classification_summary(label.ravel(), PRED.ravel(), threshold=0.5)
    assert summary["sensitivity"] == pytest.approx(sens, abs=1e-4)
    assert summary["specificity"] == pytest.approx(spec, abs=1e-4)
    rates = m.rates_from_counts(**m.confusion_counts(label, PRED))
    assert rates["sensitivity"] == pytest.approx(sens, abs=1e-4)
    assert rates["specificity"] == pytest.approx(spec, abs=1e-4)


def test_call_summary_is_classification_summary_of_binary_calls() -> None:
    calls = m.call_summary(Y_LONG, PRED_LONG >= 0.5)
    summary = m.classification_summary(Y_LONG, PRED_LONG, threshold=0.5)
    assert calls == {k: v for k, v in summary.items() if k not in ("brier", "threshold")}
    assert (calls["n"], calls["n_positive"]) == (len(Y_LONG), int(np.sum(Y_LONG)))
    with pytest.raises(ValueError, match="binary"):
        m.call_summary(Y_LONG, PRED_LONG * 0.7)


def test_sensitivity_specificity_guide_long() -> None:
    summary = m.classification_summary(Y_LONG, PRED_LONG, threshold=0.5)
    assert summary["sensitivity"] == pytest.approx(0.2857, abs=1e-4)
    assert summary["specificity"] == pytest.approx(0.4286, abs=1e-4)
    assert (summary["tp"], summary["fp"], summary["fn"], summary["tn"]) == (2, 4, 5, 3)
    assert summary["n"] == 14 and summary["n_positive"] == 7
    assert summary["accuracy"] == pytest.approx(5 / 14)
    assert summary["ppv"] == pytest.approx(2 / 6)
    assert summary["npv"] == pytest.approx(3 / 8)
    assert summary["f1"] == pytest.approx(4 / 13)
    assert summary["prevalence"] == pytest.approx(0.5)
    assert summary["brier"] == pytest.approx(9 / 14)


# ----------------------------------------------------------------------------- overlap edge cases


@pytest.mark.parametrize("metric", [m.dice, m.iou])
def test_overlap_empty_masks(metric) -> None:
    empty, full = np.zeros((3, 4, 4), bool), square((3, 4, 4), (0, 1, 1), 2)
    assert metric(empty, empty) == 1.0
    assert metric(full, empty) == 0.0
    assert metric(empty, full) == 0.0
    assert metric(full, full) == 1.0


def test_iou_value_and_validation() -> None:
    assert m.iou(LABEL_B, PRED) == pytest.approx(2 / 3)
    assert m.dice(LABEL_B, PRED) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="binary"):
        m.dice(LABEL_A, PRED * 0.7)
    with pytest.raises(ValueError, match="shapes"):
        m.dice(LABEL_A, np.ones(3))


# ----------------------------------------------------------------------------- HD95


def test_hd95_squares_offset_by_three() -> None:
    truth = square((40, 40), (10, 10), 10)
    pred = square((40, 40), (13, 10), 10)  # shifted 3 px along axis 0
    assert m.hd95(truth, pred) == pytest.approx(3.0)
    assert m.hd95(truth, pred, spacing=(2.0, 1.0)) == pytest.approx(6.0)
    assert m.hd95(truth, pred, spacing=(1.0, 2.0)) == pytest.approx(3.0)
    assert m.hd95(truth, truth) == 0.0


def test_hd95_3d_with_spacing() -> None:
    truth = square((20, 30, 30), (5, 10, 10), 6)
    pred = square((20, 30, 30), (7, 10, 10), 6)  # shifted 2 slices
    assert m.hd95(truth, pred, spacing=(5.0, 1.0, 1.0)) == pytest.approx(10.0)


def test_hd95_empty_masks() -> None:
    empty, full = np.zeros((8, 8), bool), square((8, 8), (2, 2), 3)
    assert m.hd95(empty, empty) == 0.0
    assert math.isnan(m.hd95(full, empty))
    assert math.isnan(m.hd95(empty, full))
    assert m.empty_flags(full, empty) == {"empty_truth": False, "empty_pred": True}
    assert m.empty_flags(empty, full) == {"empty_truth": True, "empty_pred": False}


def _brute_force_hd95(truth: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> float:
    """No cropping, explicit pairwise distances between surface voxel centres."""
    cross = ndimage.generate_binary_structure(truth.ndim, 1)
    surf = [np.argwhere(x & ~ndimage.binary_erosion(x, cross)) * np.asarray(spacing) for x in (truth, pred)]
    d = cdist(surf[0], surf[1])
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_hd95_matches_brute_force_on_random_blobs() -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        truth = ndimage.binary_dilation(rng.random((12, 24, 24)) > 0.995, iterations=2)
        pred = ndimage.binary_dilation(rng.random((12, 24, 24)) > 0.995, iterations=2)
        truth[0, 0, :5] = True  # touches the array border
        spacing = (3.0, 0.8, 1.1)
        assert m.hd95(truth, pred, spacing) == pytest.approx(_brute_force_hd95(truth, pred, spacing))


def test_hd95_is_fast_on_a_volume() -> None:
    truth = np.zeros((30, 256, 256), bool)
    truth[10:20, 100:150, 90:160] = True
    pred = np.roll(truth, 3, axis=2)
    start = time.perf_counter()
    assert m.hd95(truth, pred, spacing=(5.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert time.perf_counter() - start < 1.0


def test_hd95_rejects_bad_spacing() -> None:
    with pytest.raises(ValueError, match="spacing"):
        m.hd95(square((8, 8), (1, 1), 3), square((8, 8), (2, 2), 3), spacing=(1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------- classification edge cases


def test_all_negative_patients() -> None:
    y = np.zeros(6, int)
    p = np.array([0.1, 0.2, 0.7, 0.3, 0.9, 0.05])
    assert math.isnan(m.roc_auc(y, p))
    s = m.classification_summary(y, p, threshold=0.5)
    assert s["specificity"] == pytest.approx(4 / 6)
    assert math.isnan(s["sensitivity"])
    assert s["ppv"] == 0.0 and s["f1"] == 0.0  # two false positives: defined, and zero
    assert s["npv"] == 1.0 and s["prevalence"] == 0.0
    assert m.roc_curve_points(y, p)["fpr"].size == 0
    assert math.isnan(m.pr_curve_points(y, p)["average_precision"])
    low, high = m.bootstrap_auc_ci(y, p, np.arange(len(y)) // 2, n_resamples=20)
    assert math.isnan(low) and math.isnan(high)


def test_undefined_ratios_are_nan() -> None:
    rates = m.rates_from_counts(tp=0, fp=0, fn=0, tn=5)
    assert math.isnan(rates["sensitivity"]) and math.isnan(rates["ppv"]) and math.isnan(rates["f1"])
    assert rates["specificity"] == 1.0
    empty = m.classification_summary([], [], 0.5)
    assert empty["n"] == 0 and math.isnan(empty["accuracy"]) and math.isnan(empty["brier"])


def test_roc_auc_matches_sklearn_with_ties_and_weights() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.6 + 0.3 * y, 1)  # many ties
    w = rng.integers(0, 4, 300)
    assert m.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert m.roc_auc(y, p, sample_weight=w) == pytest.approx(roc_auc_score(y, p, sample_weight=w))


def test_curves() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 1.0])
    roc = m.roc_curve_points(y, p)
    assert np.isfinite(roc["thresholds"]).all() and roc["thresholds"][0] > 1.0
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1)
    assert roc["auc"] == pytest.approx(roc_auc_score(y, p))
    pr = m.pr_curve_points(y, p)
    assert pr["average_precision"] == pytest.approx(average_precision_score(y, p))
    assert len(pr["precision"]) == len(pr["recall"]) == len(pr["thresholds"]) + 1


def test_calibration_bins_sum_to_n() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(500)
    p[:3] = [0.0, 1.0, 0.1]  # both ends and an exact edge
    y = (rng.random(500) < p).astype(int)
    cal = m.calibration_curve_points(y, p, n_bins=10)
    assert cal["count"].sum() == 500
    assert len(cal["mean_predicted"]) == len(cal["fraction_positive"]) == len(cal["count"]) <= 10
    assert ((cal["mean_predicted"] >= cal["bin_lower"]) & (cal["mean_predicted"] <= cal["bin_upper"])).all()
    assert 0 <= cal["ece"] < 0.1
    sparse = m.calibration_curve_points([0, 1, 1], [0.05, 0.95, 0.9], n_bins=10)
    np.testing.assert_array_equal(sparse["count"], [1, 2])  # empty bins are left out
    np.testing.assert_allclose(sparse["fraction_positive"], [0.0, 1.0])
    with pytest.raises(ValueError, match="probabilities"):
        m.calibration_curve_points([0, 1], [-0.2, 0.5])


def test_brier_score() -> None:
    assert m.brier_score([1, 0, 1], [1.0, 0.0, 0.5]) == pytest.approx(0.25 / 3)


# ----------------------------------------------------------------------------- bootstrap


def _grouped_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(10, 50, 100)
    groups = np.repeat([f"patient_{i:03d}" for i in range(100)], sizes)
    y = (rng.random(groups.size) < 0.35).astype(int)
    p = np.clip(0.3 * y + 0.7 * rng.random(groups.size), 0, 1)
    return y, p, groups


def test_bootstrap_ci_contains_point_auc_and_is_deterministic() -> None:
    y, p, groups = _grouped_data()
    auc = m.roc_auc(y, p)
    low, high = m.bootstrap_auc_ci(y, p, groups, n_resamples=300, seed=7)
    assert low < auc < high and high - low < 0.1
    assert m.bootstrap_auc_ci(y, p, groups, n_resamples=300, seed=7) == (low, high)
    assert m.bootstrap_auc_ci(y, p, groups, n_resamples=300, seed=8) != (low, high)


def test_bootstrap_of_one_patient_has_no_interval() -> None:
    """Resampling one patient gives the data itself every time: a zero-width interval would claim certainty."""
    y, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.6, 0.4])
    assert all(math.isnan(v) for v in m.bootstrap_auc_ci(y, p, np.array(["a"] * 4), n_resamples=50))
    low, high = m.bootstrap_auc_ci(y, p, np.array(["a", "a", "b", "b"]), n_resamples=50)
    assert low <= m.roc_auc(y, p) <= high


def test_bootstrap_is_fast() -> None:
    y, p, groups = _grouped_data()
    assert 2500 < len(y) < 3500
    start = time.perf_counter()
    m.bootstrap_auc_ci(y, p, groups, n_resamples=1000, seed=0)
    assert time.perf_counter() - start < 2.0


def test_bootstrap_resample_auc_equals_auc_of_the_gathered_slices() -> None:
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.6, 0.1, 0.7, 0.2, 0.5])
    groups = np.array(["a", "a", "b", "b", "b", "c", "d", "d", "e"])
    aucs = m.bootstrap_auc_distribution(y, p, groups, n_resamples=50, seed=0)
    ids = np.unique(groups)
    # every resample's AUC is the AUC of some multiset of whole groups: check it against brute force
    possible = set()
    for combo in combinations_with_replacement(range(len(ids)), len(ids)):
        idx = np.concatenate([np.flatnonzero(groups == ids[g]) for g in combo])
        if 0 < y[idx].sum() < len(idx):
            possible.add(round(roc_auc_score(y[idx], p[idx]), 9))
    for a in aucs[np.isfinite(aucs)]:
        assert round(a, 9) in possible


def test_bootstrap_resamples_groups_not_slices() -> None:
    # Group level: every patient is all-tumour or all-clear; patients differ in size. One large clear patient
    # ("hard") scores above every tumour slice; the small clear patients score below.
    sizes_pos, sizes_neg_small, size_hard = [3, 8, 15, 4, 6], [2, 5, 9, 3], 60
    y = np.r_[np.ones(sum(sizes_pos)), np.zeros(sum(sizes_neg_small) + size_hard)].astype(int)
    p = np.r_[np.full(sum(sizes_pos), 0.6), np.full(sum(sizes_neg_small), 0.1), np.full(size_hard, 0.9)]
    groups = np.r_[np.repeat(np.arange(5), sizes_pos), np.repeat(np.arange(5, 9), sizes_neg_small),
                   np.full(size_hard, 9)]
    aucs = m.bootstrap_auc_distribution(y, p, groups, n_resamples=400, seed=0)
    valid = aucs[np.isfinite(aucs)]
    # a resample either contains the hard patient (AUC < 1) or not (AUC exactly 1): whole patients move together
    assert np.isnan(aucs).any()  # some resamples hold one class only, and are skipped
    assert (valid == 1.0).mean() > 0.2
    assert m.bootstrap_auc_ci(y, p, groups, n_resamples=400, seed=0)[1] == 1.0
    # resampling slices instead keeps ~60 hard slices in every resample: the AUC never reaches 1
    assert m.bootstrap_auc_ci(y, p, None, n_resamples=400, seed=0)[1] < 0.5

    # perfectly separable at group level: every usable resample has AUC 1
    p_sep = np.where(y == 1, 0.8, 0.2)
    assert m.bootstrap_auc_ci(y, p_sep, groups, n_resamples=200, seed=1) == (1.0, 1.0)


# ----------------------------------------------------------------------------- thresholds

# scores descending: 0.9(1) 0.8(1) 0.7(0) 0.6(1) 0.5(1) 0.4(0) 0.3(0) 0.2(1) 0.1(0) 0.05(0)
Y_T = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0])
P_T = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])


def test_select_threshold_rules() -> None:
    # youden at t: 0.8 -> 0.4-0 = 0.4; 0.5 -> 0.8-0.2 = 0.6; 0.2 -> 1-0.6 = 0.4
    assert m.select_threshold(Y_T, P_T, "youden") == pytest.approx(0.5)
    # f1 at 0.5: 2*4/(8+1+1) = 0.8; at 0.2: 10/(10+3) = 0.77
    assert m.select_threshold(Y_T, P_T, "f1") == pytest.approx(0.5)
    # sensitivity >= 0.95 needs every positive: the highest such threshold is 0.2 (not 0.1 or 0.05)
    assert m.select_threshold(Y_T, P_T, "sensitivity:0.95") == pytest.approx(0.2)
    assert m.select_threshold(Y_T, P_T, "sensitivity:0.8") == pytest.approx(0.5)
    assert m.select_threshold(Y_T, P_T, "sensitivity:0.4") == pytest.approx(0.8)
    # specificity >= 0.8 allows one false positive of five: spec(0.5) = 0.8, spec(0.4) = 0.6, so the lowest is 0.5
    assert m.select_threshold(Y_T, P_T, "specificity:0.8") == pytest.approx(0.5)
    assert m.select_threshold(Y_T, P_T, 0.37) == 0.37
    assert m.select_threshold(Y_T, P_T, "0.42") == 0.42
    chosen = m.select_threshold(Y_T, P_T, "sensitivity:0.95")
    assert m.classification_summary(Y_T, P_T, chosen)["sensitivity"] >= 0.95


def test_select_threshold_ties_go_to_the_highest_threshold() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1])
    # youden: t=0.9 -> 0.5; t=0.8 -> 0.5-0.5=0; t=0.7 -> 1-0.5=0.5: tie, highest wins
    assert m.select_threshold(y, p, "youden") == pytest.approx(0.9)


def test_select_threshold_one_class_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="pipeline.evaluation.metrics"):
        assert m.select_threshold(np.zeros(5), np.linspace(0, 1, 5), "youden") == 0.5
        assert m.select_threshold(np.ones(5), np.linspace(0, 1, 5), "sensitivity:0.95", fallback=0.3) == 0.3
    assert "fallback" in caplog.text


@pytest.mark.parametrize("rule", ["bogus", "youden:3", "sensitivity", "sensitivity:abc", "sensitivity:1.5", "nan"])
def test_select_threshold_bad_rules(rule: str) -> None:
    with pytest.raises(ValueError):
        m.select_threshold(Y_T, P_T, rule)


def test_select_threshold_is_a_pure_function() -> None:
    y, p = Y_T.copy(), P_T.copy()
    first = {rule: m.select_threshold(y, p, rule) for rule in ("youden", "f1", "sensitivity:0.95")}
    np.testing.assert_array_equal(y, Y_T)  # inputs untouched
    np.testing.assert_array_equal(p, P_T)
    # another call on other data in between changes nothing (no hidden state)
    m.select_threshold(1 - Y_T, P_T, "youden")
    perm = np.random.default_rng(0).permutation(len(y))
    for rule, value in first.items():
        assert m.select_threshold(y, p, rule) == value
        assert m.select_threshold(y[perm], p[perm], rule) == value  # order of rows does not matter
        assert m.select_threshold(list(y), list(p), rule) == value
    # and it uses only what it is given: a different label set gives a different answer
    assert m.select_threshold(1 - Y_T, P_T, "sensitivity:0.95") != first["sensitivity:0.95"]


# ----------------------------------------------------------------------------- summaries


def test_summarise_ignores_and_counts_nan() -> None:
    s = m.summarise([1.0, 2.0, 3.0, 4.0, float("nan"), 5.0])
    assert s["n"] == 5 and s["n_nan"] == 1
    assert s["mean"] == 3.0 and s["median"] == 3.0
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert s["p25"] == 2.0 and s["p75"] == 4.0
    assert s["p5"] == pytest.approx(1.2) and s["p95"] == pytest.approx(4.8)
    empty = m.summarise([float("nan")])
    assert empty["n"] == 0 and empty["n_nan"] == 1 and math.isnan(empty["mean"])
    assert math.isnan(m.summarise([2.0])["std"])


# ----------------------------------------------------------------------------- post-processing


def test_keep_largest_component_3d() -> None:
    mask = np.zeros((4, 10, 10), bool)
    mask[0:3, 1:4, 1:4] = True  # 27 voxels across three slices: one 3D component
    mask[3, 7:9, 7:9] = True  # 4 voxels
    mask[0, 8, 0] = True  # 1 voxel
    kept = postprocess.keep_largest_component(mask)
    assert kept.sum() == 27 and kept[0:3, 1:4, 1:4].all()
    assert mask.sum() == 32  # input untouched
    assert not postprocess.keep_largest_component(np.zeros((3, 4, 4))).any()


def test_keep_largest_component_connectivity() -> None:
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # diagonal chain
    mask[4, 3:5] = True
    assert postprocess.keep_largest_component(mask).sum() == 3  # full connectivity joins the diagonal
    assert postprocess.keep_largest_component(mask, connectivity=1).sum() == 2


def test_fill_holes_per_slice_fills_what_a_slice_encloses_and_nothing_else() -> None:
    mask = np.zeros((3, 9, 9), bool)
    mask[0, 1:6, 1:6] = True
    mask[0, 2:5, 2:5] = False  # a ring: its 3x3 interior is a hole
    mask[1, 0:4, 0:4] = True
    mask[1, 0:3, 0] = False  # a notch open to the border: not a hole
    mask[1, 1:3, 1:3] = False
    mask[2, 4:9, 4:9] = True
    mask[2, 5:8, 5:8] = False  # a ring touching the border still encloses its interior
    filled = postprocess.fill_holes_per_slice(mask)
    assert filled[0, 1:6, 1:6].all() and filled[0].sum() == 25
    assert (filled[1] == mask[1]).all()
    assert filled[2, 4:9, 4:9].all() and filled[2].sum() == 25
    assert mask[0].sum() == 16  # input untouched
    # holes are per slice: a tube open at both ends in 3-D is still a ring in each slice
    assert (postprocess.fill_holes_per_slice(mask[0]) == filled[0]).all()
    assert not postprocess.fill_holes_per_slice(np.zeros((2, 4, 4), bool)).any()
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W\]"):
        postprocess.fill_holes_per_slice(np.ones(5, bool))


def test_post_processing_options_try_each_auto_step_off_and_on() -> None:
    options = postprocess.post_processing_options(0, "auto", "auto")
    assert [(o.keep_largest_component, o.fill_holes) for o in options] == \
        [(False, False), (True, False), (False, True), (True, True)]
    assert postprocess.post_processing_options(5, True, False) == [postprocess.PostProcessing(5, True, False)]
    assert [o.fill_holes for o in postprocess.post_processing_options(0, False, "auto")] == [False, True]
    assert str(options[3]) == "largest 3-D component kept, holes filled per slice"


def test_remove_small_components() -> None:
    mask = np.zeros((3, 8, 8), bool)
    mask[0, 0:3, 0:3] = True  # 9
    mask[1, 0:2, 0:2] = True  # touches the first through the slices: one component of 13
    mask[2, 6:8, 6:8] = True  # 4
    mask[0, 7, 0] = True  # 1
    cleaned = postprocess.remove_small_components(mask, min_px=5)
    assert cleaned.sum() == 13 and not cleaned[2].any()
    assert postprocess.remove_small_components(mask, min_px=4).sum() == 17
    assert postprocess.remove_small_components(mask, min_px=0).sum() == 18
    two_d = postprocess.remove_small_components(mask[0], min_px=2)
    assert two_d.sum() == 9 and two_d.ndim == 2


# ----------------------------------------------------------------------------- pointing game


def test_pointing_game() -> None:
    heat = np.zeros((4, 5, 5))
    masks = np.zeros((4, 5, 5), bool)
    masks[0, 1:3, 1:3] = True
    heat[0, 2, 2] = 1.0  # hit
    masks[1, 1:3, 1:3] = True
    heat[1, 4, 4] = 1.0  # miss
    masks[2, 0, 0] = True  # flat heatmap: ties -> first argmax (0, 0): hit
    heat[3, 0, 0] = 5.0  # empty mask: not counted
    assert m.pointing_game(heat, masks) == (2, 3, pytest.approx(2 / 3))
    hits, n, score = m.pointing_game(heat[3:], masks[3:])
    assert (hits, n) == (0, 0) and math.isnan(score)


def test_pointing_game_at_with_tolerance_and_chance():
    from pipeline.evaluation.metrics import pointing_game_at, pointing_tolerance_px

    assert pointing_tolerance_px(32) == pytest.approx(15.0)
    masks = np.zeros((3, 64, 64), bool)
    masks[0, 10:20, 10:20] = True   # peak (16, 16) inside: hit
    masks[1, 40:50, 40:50] = True   # peak (16, 16) far away: miss
    masks[2, 22:30, 16] = True      # 6 px below the peak: a hit only with tolerance >= 6
    points = np.array([[16, 16]] * 3)
    strict = pointing_game_at(points, masks, tolerance_px=0.0)
    assert (strict["hits"], strict["n"]) == (1, 3)
    lenient = pointing_game_at(points, masks, tolerance_px=6.0, grid=(2, 2))
    assert lenient["hits"] == 2 and lenient["score"] == pytest.approx(2 / 3)
    # cell centres (16,16),(16,48),(48,16),(48,48): slice 0 hits 1 of 4, slice 1 hits 1 of 4, slice 2 hits 1
    assert lenient["chance"] == pytest.approx(3 / 12)
    empty = pointing_game_at(points[:1], np.zeros((1, 64, 64), bool), 4.0)
    assert empty["n"] == 0 and np.isnan(empty["score"])


def test_patient_dice_threshold_maximises_the_cascade_dice_of_validation_patients() -> None:
    """Patient a: gating at 0.9 keeps too little (Dice 0.72), at 0.3 adds a false-positive slice (0.684);
    0.6 is best (0.867). Patient b (tumour-free) scores 1 only while its 0.2 slice stays out."""
    import pandas as pd

    from pipeline.evaluation.scoring import patient_dice_threshold

    slices = pd.DataFrame({
        "patient_id": ["a", "a", "a", "b"],
        "probability": [0.9, 0.6, 0.3, 0.2],
        "tumour_pixels": [100, 50, 0, 0],
        "seg_pixels": [100, 50, 80, 30],
        "seg_overlap_pixels": [90, 40, 0, 0],
    })
    assert patient_dice_threshold(slices) == pytest.approx(0.6)
    slices.loc[2, "seg_pixels"] = 0  # the 0.3 slice no longer costs anything: the highest of the tied best wins
    assert patient_dice_threshold(slices) == pytest.approx(0.6)
    slices.loc[2, ["tumour_pixels", "seg_pixels", "seg_overlap_pixels"]] = [60, 60, 60]  # now it helps
    assert patient_dice_threshold(slices) == pytest.approx(0.3)


def _scored(patients: dict) -> Any:
    """A Scored of patients {pid: (split, truth bool [D, H, W], segmenter mask bool [D, H, W])}; every slice
    scores 0.9, so a 0.5 gate passes all of them."""
    import pandas as pd

    from pipeline.evaluation.scoring import Scored

    rows = [{"patient_id": pid, "slice_index": i, "split": split, "probability": 0.9, "classifier_probability": 0.9}
            for pid, (split, truth, _) in patients.items() for i in range(len(truth))]
    return Scored(pd.DataFrame(rows), {p: s for p, (_, _, s) in patients.items()},
                  {p: t for p, (_, t, _) in patients.items()})


def test_choose_postprocessing_keeps_the_largest_component_only_when_validation_gains() -> None:
    from pipeline.evaluation.postprocess import PostProcessing
    from pipeline.evaluation.scoring import choose_postprocessing

    options = [PostProcessing(0, False), PostProcessing(0, True)]
    truth = np.zeros((4, 16, 16), bool)
    truth[1:3, 2:8, 2:8] = True
    spurious = truth.copy()
    spurious[3, 12:15, 12:15] = True  # a false-positive blob, apart from the tumour
    scored = _scored({"v": ("val", truth, spurious)})
    chosen, scores = choose_postprocessing(scored, 0.5, options)
    assert chosen.keep_largest_component and scores[1] == pytest.approx(1.0) and scores[0] < 1.0

    two_lesions = truth.copy()
    two_lesions[1:3, 11:15, 11:15] = True  # a second, smaller real lesion: keeping one component loses it
    scored = _scored({"v": ("val", two_lesions, two_lesions.copy())})
    chosen, scores = choose_postprocessing(scored, 0.5, options)
    assert not chosen.keep_largest_component and scores[0] == pytest.approx(1.0) and scores[1] < 1.0

    # Test patients are never read: one where only the largest component would help changes nothing.
    scored = _scored({"v": ("val", two_lesions, two_lesions.copy()), "t": ("test", truth, spurious)})
    assert choose_postprocessing(scored, 0.5, options)[0] == options[0]
    # A tie keeps the earlier, simpler option.
    scored = _scored({"v": ("val", truth, truth.copy())})
    assert choose_postprocessing(scored, 0.5, options)[0] == options[0]


def test_choose_postprocessing_fills_holes_only_when_validation_gains() -> None:
    from pipeline.evaluation.postprocess import post_processing_options
    from pipeline.evaluation.scoring import choose_postprocessing

    options = post_processing_options(0, False, "auto")
    truth = np.zeros((3, 16, 16), bool)
    truth[1, 2:10, 2:10] = True
    rim = truth.copy()
    rim[1, 4:8, 4:8] = False  # the segmenter marked the rim of a solid tumour
    chosen, scores = choose_postprocessing(_scored({"v": ("val", truth, rim)}), 0.5, options)
    assert chosen.fill_holes and scores[1] == pytest.approx(1.0) and scores[0] < 1.0
    ring = rim.copy()  # a tumour that really is a ring (a reference with a hole): filling costs
    chosen, scores = choose_postprocessing(_scored({"v": ("val", ring, rim)}), 0.5, options)
    assert not chosen.fill_holes and scores[0] == pytest.approx(1.0) and scores[1] < 1.0
