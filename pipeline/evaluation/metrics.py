"""NumPy evaluation metrics: overlap, surface distance, classification, curves, bootstrap, explanations.

Mask post-processing (connected components) is in ``pipeline.evaluation.postprocess``.

Everything here is a pure function of its arguments (no Keras, no files, no global state).

Conventions used throughout:
- Masks are binary arrays of any shape (bool, or numbers that are all 0/1); anything else raises ``ValueError``.
- Labels ``y_true`` are binary ``[N]`` (1 = tumour); scores ``y_score`` are finite floats ``[N]``, usually
  probabilities in [0, 1]. A sample is predicted positive when ``score >= threshold``, compared in float64
  (``predicted_positive``; the cascade's gate uses the same function).
- An undefined value (a 0/0 ratio, an AUC with one class present, a surface distance to an empty mask) is
  ``float('nan')``, never silently 0 or 1, except where a docstring states another convention.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

log = logging.getLogger(__name__)

NAN = float("nan")
THRESHOLD_FALLBACK = 0.5


# --------------------------------------------------------------------------------------------- validation


def _binary(a: ArrayLike, name: str) -> np.ndarray:
    """`a` as a bool array; raises ValueError unless every value is 0/1 (or bool)."""
    arr = np.asarray(a)
    if arr.dtype == bool:
        return arr
    if arr.size and not ((arr == 0) | (arr == 1)).all():
        raise ValueError(f"{name} must be binary (0/1 or bool); got values such as {np.unique(arr)[:5].tolist()}")
    return arr.astype(bool)


def _same_shape(truth: np.ndarray, pred: np.ndarray) -> None:
    if truth.shape != pred.shape:
        raise ValueError(f"truth and pred shapes differ: {truth.shape} vs {pred.shape}")


def _labels_scores(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Flattened bool labels [N] and float64 scores [N]; raises on length mismatch or non-finite scores."""
    y = _binary(y_true, "y_true").ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score lengths differ: {y.size} vs {s.size}")
    if not np.isfinite(s).all():
        raise ValueError("y_score contains NaN or inf")
    return y, s


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when den == 0."""
    return float(num) / float(den) if den else NAN


# --------------------------------------------------------------------------------------------- overlap


def dice(truth: ArrayLike, pred: ArrayLike, epsilon: float = 0.0) -> float:
    """Dice coefficient ``(2|T∩P| + ε) / (|T| + |P| + ε)`` of two binary masks of the same (any) shape.

    With ``epsilon=0``: both masks empty -> 1.0 (perfect agreement on "no tumour"); exactly one empty -> 0.0.
    ``epsilon=1`` is the smoothed form of the course material (pred eye(2) vs [[1,1],[0,0]] -> 0.6).
    """
    t, p = _binary(truth, "truth"), _binary(pred, "pred")
    _same_shape(t, p)
    inter = np.count_nonzero(t & p)
    total = np.count_nonzero(t) + np.count_nonzero(p)
    if total == 0 and epsilon == 0:
        return 1.0
    return float((2.0 * inter + epsilon) / (total + epsilon))


def dice_per_class(truth: ArrayLike, pred: ArrayLike, epsilon: float = 0.0, class_axis: int = -1) -> np.ndarray:
    """Dice of each class: truth/pred binary ``[..., C]`` (one-hot, classes on `class_axis`) -> float ``[C]``.

    Each class follows the conventions of :func:`dice`.
    """
    t, p = _binary(truth, "truth"), _binary(pred, "pred")
    _same_shape(t, p)
    t, p = np.moveaxis(t, class_axis, 0), np.moveaxis(p, class_axis, 0)
    return np.array([dice(tc, pc, epsilon) for tc, pc in zip(t, p, strict=True)], dtype=np.float64)


def mean_dice(truth: ArrayLike, pred: ArrayLike, epsilon: float = 0.0, class_axis: int = -1) -> float:
    """Mean over classes of :func:`dice_per_class` (a float)."""
    return float(np.mean(dice_per_class(truth, pred, epsilon, class_axis)))


def iou(truth: ArrayLike, pred: ArrayLike, epsilon: float = 0.0) -> float:
    """Intersection over union (Jaccard) ``(|T∩P| + ε) / (|T∪P| + ε)`` of two binary masks of the same shape.

    With ``epsilon=0``: both empty -> 1.0; exactly one empty -> 0.0 (as :func:`dice`).
    """
    t, p = _binary(truth, "truth"), _binary(pred, "pred")
    _same_shape(t, p)
    union = np.count_nonzero(t | p)
    if union == 0 and epsilon == 0:
        return 1.0
    return float((np.count_nonzero(t & p) + epsilon) / (union + epsilon))


# --------------------------------------------------------------------------------------------- surface distance


def empty_flags(truth: ArrayLike, pred: ArrayLike) -> dict[str, bool]:
    """``{"empty_truth", "empty_pred"}`` for a per-case table: records why :func:`hd95` is NaN (or 0.0)."""
    return {"empty_truth": not np.any(truth), "empty_pred": not np.any(pred)}


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: mask minus its erosion by the face-connected (cross) structure; array edges count."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(truth: ArrayLike, pred: ArrayLike,
                      spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances of two non-empty binary masks (2D or 3D, same shape).

    Returns ``(truth_to_pred, pred_to_truth)``: for every surface voxel of `truth`, the Euclidean distance to the
    nearest surface voxel of `pred`, and vice versa. Units: mm when `spacing` (one value per array axis, in the
    array's axis order) is given, else voxels. Raises ValueError if either mask is empty.

    The surface of a mask is the mask minus its erosion by the face-connected structure (MONAI / medpy).
    The arrays are cropped to the joint bounding box plus a one-voxel margin first; this is exact, because every
    surface voxel lies in the crop and erosion at the crop border sees the same neighbours as before.
    """
    t, p = _binary(truth, "truth"), _binary(pred, "pred")
    _same_shape(t, p)
    if t.ndim not in (2, 3):
        raise ValueError(f"surface distances need 2D or 3D masks; got shape {t.shape}")
    if not t.any() or not p.any():
        raise ValueError("surface distances are undefined when a mask is empty")
    if spacing is None:
        sampling = np.ones(t.ndim)
    else:
        sampling = np.asarray(spacing, dtype=np.float64)
        if sampling.shape != (t.ndim,) or not (sampling > 0).all():
            raise ValueError(f"spacing needs {t.ndim} positive values (one per array axis); got {spacing}")

    idx = np.argwhere(t | p)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, t.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    ts, ps = _surface(t[box]), _surface(p[box])
    to_pred = ndimage.distance_transform_edt(~ps, sampling=sampling)
    to_truth = ndimage.distance_transform_edt(~ts, sampling=sampling)
    return to_pred[ts], to_truth[ps]


def hausdorff_distance(truth: ArrayLike, pred: ArrayLike, spacing: Sequence[float] | None = None,
                       percentile: float = 100.0) -> float:
    """Symmetric (percentile) Hausdorff distance between the surfaces of two binary masks (2D or 3D).

    ``max(P(truth->pred), P(pred->truth))`` where P is the `percentile` of the directed surface distances
    (the MONAI convention; medpy's hd95 pools both directions instead, which can give a smaller value).
    Units: mm when `spacing` (per array axis) is given, else voxels.
    Both masks empty -> 0.0. Exactly one empty -> NaN (undefined; count these with :func:`empty_flags`).
    """
    t, p = _binary(truth, "truth"), _binary(pred, "pred")
    _same_shape(t, p)
    has_t, has_p = bool(t.any()), bool(p.any())
    if not has_t and not has_p:
        return 0.0
    if not has_t or not has_p:
        return NAN
    d_tp, d_pt = surface_distances(t, p, spacing)
    return float(max(np.percentile(d_tp, percentile), np.percentile(d_pt, percentile)))


def hd95(truth: ArrayLike, pred: ArrayLike, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between mask surfaces; see :func:`hausdorff_distance`.

    truth, pred: binary [H, W] or [D, H, W]. spacing: voxel size per array axis (mm), e.g. (slice, row, col)
    for a [D, H, W] volume; None -> voxels. Both empty -> 0.0; exactly one empty -> NaN.
    """
    return hausdorff_distance(truth, pred, spacing, percentile=95.0)


# --------------------------------------------------------------------------------------------- classification


def confusion_counts(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, int]:
    """``{"tp", "fp", "fn", "tn"}`` of binary labels vs binary predictions (any same shape; flattened)."""
    y, p = _binary(y_true, "y_true").ravel(), _binary(y_pred, "y_pred").ravel()
    _same_shape(y, p)
    tp = int(np.count_nonzero(y & p))
    fp = int(np.count_nonzero(~y & p))
    fn = int(np.count_nonzero(y & ~p))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(y.size - tp - fp - fn)}


def rates_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, ppv, npv, f1 and prevalence from confusion counts; 0/0 -> NaN.

    f1 = 2tp / (2tp + fp + fn): NaN when there are no positives and none are predicted.
    """
    n = tp + fp + fn + tn
    return {
        "accuracy": _ratio(tp + tn, n),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "prevalence": _ratio(tp + fn, n),
    }


def brier_score(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Mean squared difference between probability [N] and binary label [N]; NaN when N == 0."""
    y, s = _labels_scores(y_true, y_score)
    return float(np.mean((s - y) ** 2)) if y.size else NAN


def predicted_positive(y_score: ArrayLike, threshold: float) -> np.ndarray:
    """bool, y_score's shape: ``score >= threshold``, the one comparison the gate and every metric use.

    In float64: float32 scores are upcast exactly and the threshold is never rounded to float32 (NumPy
    would compare float32 scores with a Python float in float32, so a threshold of 0.7 would admit the
    score float32(0.7) = 0.69999999 that a float64 comparison rejects).
    """
    return np.asarray(y_score, dtype=np.float64) >= np.float64(threshold)


def call_summary(y_true: ArrayLike, y_called: ArrayLike) -> dict[str, Any]:
    """Metrics of binary calls: y_true, y_called binary [N]. Returns accuracy, sensitivity (recall),
    specificity, ppv (precision), npv, f1, prevalence (``rates_from_counts``), n, n_positive, tp, fp, fn, tn.
    Undefined ratios are NaN, e.g. sensitivity when there are no positives (an all-negative set)."""
    y = _binary(y_true, "y_true").ravel()
    counts = confusion_counts(y, y_called)
    return {**rates_from_counts(**counts), "n": int(y.size), "n_positive": int(y.sum()), **counts}


def classification_summary(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> dict[str, Any]:
    """Binary classification metrics at ``score >= threshold``.

    y_true: binary [N]; y_score: probabilities [N]. Returns ``call_summary``'s keys and brier, threshold.
    """
    y, s = _labels_scores(y_true, y_score)
    out = call_summary(y, predicted_positive(s, threshold))
    out.update(brier=brier_score(y, s), threshold=float(threshold))
    return out


# --------------------------------------------------------------------------------------------- curves and AUC


def _weighted_auc(pos_first: np.ndarray, level: np.ndarray, is_pos: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row of `weights` [R, N] (sample multiplicities) over the same sorted data.

    level: [N] index of each sample's distinct score (ascending, samples sorted by score);
    pos_first: [L] start index of each level in the sorted order; is_pos: bool [N]. Ties count one half.
    Returns [R] with NaN where a row has no positive or no negative weight.
    """
    w_pos = weights * is_pos
    w_neg = weights - w_pos
    neg_per_level = np.add.reduceat(w_neg, pos_first, axis=1)  # [R, L]
    neg_below = np.cumsum(neg_per_level, axis=1) - neg_per_level  # negatives strictly below each level
    credit = neg_below + 0.5 * neg_per_level  # [R, L]
    num = np.einsum("rn,rn->r", w_pos, credit[:, level])
    n_pos, n_neg = w_pos.sum(1), w_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = num / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def _sorted_levels(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, level, level_starts) for ascending-sorted scores with ties grouped into levels."""
    order = np.argsort(s, kind="stable")
    ss = s[order]
    new_level = np.r_[True, ss[1:] != ss[:-1]]
    return order, np.cumsum(new_level) - 1, np.flatnonzero(new_level)


def roc_auc(y_true: ArrayLike, y_score: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half; equals sklearn's roc_auc_score).

    y_true: binary [N]; y_score: [N]; sample_weight: optional non-negative [N]. NaN when only one class is present.
    """
    y, s = _labels_scores(y_true, y_score)
    w = np.ones(y.size) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if w.shape != y.shape:
        raise ValueError(f"sample_weight length {w.size} != {y.size}")
    if y.size == 0:
        return NAN
    order, level, starts = _sorted_levels(s)
    return float(_weighted_auc(starts, level, y[order], w[order][None, :])[0])


def roc_curve_points(y_true: ArrayLike, y_score: ArrayLike) -> dict[str, Any]:
    """ROC curve for plotting: ``{"fpr", "tpr", "thresholds"}`` (float arrays [K]) and ``"auc"``.

    Collinear points are dropped (sklearn's drop_intermediate). sklearn's first threshold (+inf, the point (0, 0))
    is replaced by the next float above the highest score, so the table stays finite (CSV/JSON friendly).
    One class only: empty arrays and auc NaN (a warning is logged).
    """
    y, s = _labels_scores(y_true, y_score)
    if y.all() or not y.any():
        log.warning("ROC curve undefined: only one class among %d samples", y.size)
        empty = np.array([], dtype=np.float64)
        return {"fpr": empty, "tpr": empty.copy(), "thresholds": empty.copy(), "auc": NAN}
    fpr, tpr, thresholds = roc_curve(y, s)
    thresholds = thresholds.astype(np.float64)
    if not np.isfinite(thresholds[0]):
        thresholds[0] = np.nextafter(s.max(), np.inf)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds, "auc": roc_auc(y, s)}


def pr_curve_points(y_true: ArrayLike, y_score: ArrayLike) -> dict[str, Any]:
    """Precision-recall curve: ``{"precision", "recall"}`` [K+1], ``"thresholds"`` [K], ``"average_precision"``.

    As sklearn: the last point is (recall 0, precision 1) with no threshold; points that do not change the
    step curve are dropped; average precision is the step-wise (not interpolated) area of the full curve. No positives: empty arrays and average_precision NaN (warning logged).
    """
    y, s = _labels_scores(y_true, y_score)
    if not y.any():
        log.warning("precision-recall curve undefined: no positives among %d samples", y.size)
        empty = np.array([], dtype=np.float64)
        return {"precision": empty, "recall": empty.copy(), "thresholds": empty.copy(), "average_precision": NAN}
    precision, recall, thresholds = precision_recall_curve(y, s, drop_intermediate=True)
    return {"precision": precision, "recall": recall, "thresholds": thresholds.astype(np.float64),
            "average_precision": float(average_precision_score(y, s))}


def calibration_curve_points(y_true: ArrayLike, y_score: ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data with `n_bins` equal-width bins on [0, 1] (last bin closed at 1.0).

    Returns float/int arrays [B] over the NON-EMPTY bins only: ``bin_lower``, ``bin_upper``, ``mean_predicted``,
    ``fraction_positive``, ``count`` (the counts sum to N), plus ``"ece"``: the expected calibration error
    sum_b count_b/N * |fraction_positive_b - mean_predicted_b| (NaN when N == 0).
    Scores outside [0, 1] raise ValueError.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    y, s = _labels_scores(y_true, y_score)
    if s.size and (s.min() < 0 or s.max() > 1):
        raise ValueError(f"calibration needs probabilities in [0, 1]; got range [{s.min()}, {s.max()}]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.floor(s * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    sum_pred = np.bincount(bins, weights=s, minlength=n_bins)
    sum_pos = np.bincount(bins, weights=y.astype(np.float64), minlength=n_bins)
    keep = count > 0
    mean_pred = sum_pred[keep] / count[keep]
    frac_pos = sum_pos[keep] / count[keep]
    ece = float(np.sum(count[keep] * np.abs(frac_pos - mean_pred)) / s.size) if s.size else NAN
    return {"bin_lower": edges[:-1][keep], "bin_upper": edges[1:][keep], "mean_predicted": mean_pred,
            "fraction_positive": frac_pos, "count": count[keep], "ece": ece}


# --------------------------------------------------------------------------------------------- bootstrap


def bootstrap_auc_distribution(y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike | None,
                               n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """AUC of each group-level bootstrap resample: float [n_resamples], NaN where a resample has one class.

    Each resample draws as many group ids (patients) as there are groups, with replacement, and takes all the
    samples (slices) of every drawn group, a group drawn k times counting k times. groups: [N] ids; None makes
    every sample its own group. Deterministic for a given seed (numpy default_rng).
    """
    y, s = _labels_scores(y_true, y_score)
    if groups is None:
        inverse = np.arange(y.size)
    else:
        g = np.asarray(groups).ravel()
        if g.shape != y.shape:
            raise ValueError(f"groups length {g.size} != {y.size}")
        _, inverse = np.unique(g, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if y.size else 0
    if n_resamples < 1 or n_groups == 0:
        return np.full(max(n_resamples, 0), np.nan)

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    offsets = np.arange(n_resamples)[:, None] * n_groups
    times_drawn = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_groups)
    times_drawn = times_drawn.reshape(n_resamples, n_groups).astype(np.float64)

    order, level, starts = _sorted_levels(s)
    is_pos, group_sorted = y[order], inverse[order]
    chunk = max(1, 4_000_000 // max(y.size, 1))  # bound memory at a few [chunk, N] float arrays
    aucs = np.empty(n_resamples)
    for a in range(0, n_resamples, chunk):
        weights = times_drawn[a:a + chunk][:, group_sorted]
        aucs[a:a + chunk] = _weighted_auc(starts, level, is_pos, weights)
    return aucs


def bootstrap_auc_ci(y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike | None, n_resamples: int = 1000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` of the AUC, resampling GROUPS (patients).

    y_true: binary [N]; y_score: [N]; groups: [N] patient ids (None: resample samples). Resamples with a single
    class are skipped (logged when any are); fewer than 2 usable resamples, or fewer than 2 groups (every resample
    would be the data itself) -> (NaN, NaN). See :func:`bootstrap_auc_distribution` for the resampling scheme.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    n_groups = np.unique(np.asarray(groups)).size if groups is not None else np.asarray(y_true).size
    if n_groups < 2:
        log.info("bootstrap AUC: %d group(s) to resample; the interval is undefined", n_groups)
        return NAN, NAN
    aucs = bootstrap_auc_distribution(y_true, y_score, groups, n_resamples, seed)
    valid = aucs[np.isfinite(aucs)]
    skipped = aucs.size - valid.size
    if skipped:
        log.info("bootstrap AUC: skipped %d of %d resamples with a single class", skipped, aucs.size)
    if valid.size < 2:
        log.warning("bootstrap AUC: %d usable resamples; the interval is undefined", valid.size)
        return NAN, NAN
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(valid, [tail, 100 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------- thresholds


def _counts_by_threshold(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (distinct scores, descending) [K] and tp, fp [K] of ``score >= threshold``."""
    order = np.argsort(-s, kind="stable")
    ss, ys = s[order], y[order]
    last_of_level = np.r_[ss[1:] != ss[:-1], True]
    tp = np.cumsum(ys)[last_of_level]
    fp = np.cumsum(~ys)[last_of_level]
    return ss[last_of_level], tp.astype(np.float64), fp.astype(np.float64)


def select_threshold(y_true: ArrayLike, y_score: ArrayLike, rule: str | float, fallback: float = THRESHOLD_FALLBACK) -> float:
    """Operating threshold (``score >= threshold`` is positive), a pure function of the data it is given.

    rule:
    - a number (or a numeric string): returned as is;
    - ``"youden"``: maximises sensitivity + specificity - 1;
    - ``"f1"``: maximises F1;
    - ``"sensitivity:X"``: the HIGHEST threshold whose sensitivity >= X;
    - ``"specificity:X"``: the LOWEST threshold whose specificity >= X (above every score if none reaches it).
    Candidates are the distinct scores; ties in the objective go to the highest threshold.
    Data-driven rules with a single class present (or no data) return `fallback` and log a warning.
    """
    if isinstance(rule, bool) or not isinstance(rule, (str, int, float, np.floating, np.integer)):
        raise ValueError(f"threshold rule must be a number or a string; got {rule!r}")
    try:
        number = float(rule)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise ValueError(f"threshold rule {rule!r} is not a finite number")
        return number
    name, _, arg = rule.strip().lower().partition(":")
    if name not in ("youden", "f1", "sensitivity", "specificity") or bool(arg) != (name in ("sensitivity", "specificity")):
        raise ValueError(f"unknown threshold rule {rule!r}: use youden, f1, sensitivity:X, specificity:X or a number")
    target = NAN
    if arg:
        try:
            target = float(arg)
        except ValueError as err:
            raise ValueError(f"threshold rule {rule!r}: {arg!r} is not a number") from err
        if not 0 < target <= 1:
            raise ValueError(f"threshold rule {rule!r}: the target must be in (0, 1]")

    y, s = _labels_scores(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        log.warning("select_threshold(%r): %d positives and %d negatives; using the fallback %s",
                    rule, n_pos, n_neg, fallback)
        return float(fallback)

    thresholds, tp, fp = _counts_by_threshold(y, s)  # thresholds descending
    tpr, fpr = tp / n_pos, fp / n_neg
    if name == "youden":
        best = int(np.argmax(tpr - fpr))  # argmax: first = highest threshold among ties
    elif name == "f1":
        best = int(np.argmax(2 * tp / (tp + n_pos + fp)))  # 2tp / (2tp + fp + fn); denominator > 0
    elif name == "sensitivity":
        best = int(np.argmax(tpr >= target - 1e-12))  # tpr rises as the threshold falls; the last one is 1.0
    else:
        ok = np.flatnonzero(1 - fpr >= target - 1e-12)
        if ok.size == 0:
            return float(np.nextafter(s.max(), np.inf))
        best = int(ok[-1])  # specificity falls as the threshold falls: the lowest that still qualifies
    return float(thresholds[best])


# --------------------------------------------------------------------------------------------- summaries


def summarise(values: ArrayLike) -> dict[str, float | int]:
    """Distribution summary of per-case values [N], ignoring NaN (and inf) but counting them.

    Returns mean, std (sample, ddof=1; NaN with fewer than 2 values), median, p5, p25, p75, p95,
    n (finite values used) and n_nan (values ignored). No finite values -> every statistic NaN, n = 0.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = v[np.isfinite(v)]
    out: dict[str, float | int] = {}
    if finite.size:
        p5, p25, median, p75, p95 = np.percentile(finite, [5, 25, 50, 75, 95])
        out.update(mean=float(finite.mean()), std=float(finite.std(ddof=1)) if finite.size > 1 else NAN,
                   median=float(median), p5=float(p5), p25=float(p25), p75=float(p75), p95=float(p95))
    else:
        out.update(dict.fromkeys(("mean", "std", "median", "p5", "p25", "p75", "p95"), NAN))
    out.update(n=int(finite.size), n_nan=int(v.size - finite.size))
    return out


# --------------------------------------------------------------------------------------------- explanations


def pointing_game(heatmaps: ArrayLike, masks: ArrayLike) -> tuple[int, int, float]:
    """Pointing game: share of slices whose heatmap maximum falls inside the true mask.

    heatmaps: float [N, H, W] (finite); masks: binary [N, H, W]. Only slices with a non-empty mask count.
    Ties: the first maximum in raster order. Returns (hits, n, hits / n), the score NaN when n == 0.
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    m = _binary(masks, "masks")
    if h.shape != m.shape or h.ndim != 3:
        raise ValueError(f"heatmaps and masks must both be [N, H, W]; got {h.shape} and {m.shape}")
    if not np.isfinite(h).all():
        raise ValueError("heatmaps contain NaN or inf")
    flat_m = m.reshape(len(m), -1)
    counted = flat_m.any(1)
    peak = h.reshape(len(h), -1).argmax(1)
    hits = int(flat_m[np.arange(len(m)), peak][counted].sum())
    n = int(counted.sum())
    return hits, n, hits / n if n else NAN


__all__ = [
    "bootstrap_auc_ci", "bootstrap_auc_distribution", "brier_score", "calibration_curve_points", "call_summary",
    "classification_summary", "confusion_counts", "dice", "dice_per_class", "empty_flags", "hausdorff_distance",
    "hd95", "iou", "mean_dice", "pointing_game", "pr_curve_points", "predicted_positive", "rates_from_counts",
    "roc_auc", "roc_curve_points", "select_threshold", "summarise", "surface_distances",
]


def pointing_tolerance_px(cell_px: float) -> float:
    """The pointing game's tolerance for a map whose cells span ``cell_px`` input pixels.

    Zhang et al. (2018) use 15 px for ResNet maps at 224 px, whose cells span 32 px: 15/32 of a
    cell. Keeping that ratio keeps the protocol at any input size (ResNet50's cells are always 32 px).
    """
    return 15.0 / 32.0 * cell_px


def pointing_game_at(points: np.ndarray, masks: np.ndarray, tolerance_px: float,
                     grid: tuple[int, int] | None = None) -> dict[str, float]:
    """Pointing game from peak points: a hit when a tumour pixel lies within ``tolerance_px`` of the peak.

    points: int [N, 2] (row, col); masks: binary [N, H, W]. Only slices with a non-empty mask count.
    grid: the map's (h, w) cells; when given, also the chance rate: the mean hit rate of a peak at a
    cell centre drawn uniformly at random. Returns {"score", "hits", "n", "chance"} (NaN when undefined).
    """
    masks = np.asarray(masks).astype(bool)
    keep = masks.reshape(len(masks), -1).any(axis=1)
    points, masks = np.asarray(points)[keep], masks[keep]
    n = int(len(masks))
    if n == 0:
        return {"score": math.nan, "hits": 0, "n": 0, "chance": math.nan}
    height, width = masks.shape[1:]
    near = np.stack([ndimage.distance_transform_edt(~m) <= tolerance_px for m in masks])  # [N, H, W]
    hits = near[np.arange(n), np.clip(points[:, 0], 0, height - 1), np.clip(points[:, 1], 0, width - 1)]
    chance = math.nan
    if grid is not None:
        h, w = grid
        rr = ((np.arange(h) + 0.5) * height / h).astype(int)
        cc = ((np.arange(w) + 0.5) * width / w).astype(int)
        chance = float(near[:, rr][:, :, cc].mean())
    return {"score": float(hits.mean()), "hits": int(hits.sum()), "n": n, "chance": chance}
