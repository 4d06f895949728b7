"""External validation: score predictions on labelled new scans against their ground truth.

``predict`` calls ``score_case`` for every case whose input carries labels (kaggle_3m ``_mask.tif``,
BraTS 2021 ``_seg``, Decathlon ``labelsTr``) and ``cohort_summary`` over the run, so one command
answers "how do these models do on a new cohort". Scores are computed at the models' resolution
(the slices the cascade saw), with the same metric functions and conventions as ``evaluate``:
3-D Dice per case, HD95 (MONAI convention; mm when the voxel size is known, else px), and volume
error (predicted minus true tumour volume). With a segmenter of one output per region, ``score_regions``
scores each region the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.data.case import Case
from pipeline.data.task import target_mask
from pipeline.evaluation import metrics as m

# Statistics of per-case values reported for the cohort (``metrics.summarise`` keys).
COHORT_STATS = ("mean", "std", "median", "p5", "p25", "p75", "p95", "n")


def score_case(case: Case, pred_mask: np.ndarray, truth: np.ndarray | None = None) -> dict[str, Any] | None:
    """Scores of one case's predicted mask bool [D, S, S] against ``truth`` (default ``case.mask``, the whole
    tumour); None when unlabelled.

    Returns dice (3-D; 1.0 when both are empty), hd95 (NaN when exactly one is empty), hd95_unit
    ("mm" or "px"), truth_volume and pred_volume and volume_error (pred - truth) in volume_unit
    ("ml" with a voxel size, else "px"), volume_error_relative (error / truth; NaN without tumour),
    has_tumour and tumour_detected (any predicted voxel).
    """
    if not case.meta.get("has_labels"):
        return None
    truth, pred = (case.mask if truth is None else np.asarray(truth, bool)), np.asarray(pred_mask, bool)
    spacing = _array_spacing(case.spacing_mm)
    voxel = float(np.prod(spacing)) / 1000.0 if spacing is not None else 1.0  # ml per voxel, or 1 px
    truth_volume, pred_volume = float(truth.sum()) * voxel, float(pred.sum()) * voxel
    return {
        "dice": m.dice(truth, pred),  # 1.0 when both are empty
        "hd95": m.hd95(truth, pred, spacing=spacing),
        "hd95_unit": "mm" if spacing is not None else "px",
        "truth_volume": truth_volume,
        "pred_volume": pred_volume,
        "volume_error": pred_volume - truth_volume,
        "volume_error_relative": (pred_volume - truth_volume) / truth_volume if truth_volume else math.nan,
        "volume_unit": "ml" if spacing is not None else "px",
        "has_tumour": bool(truth.any()),
        "tumour_detected": bool(pred.any()),
    }


def score_regions(case: Case, region_masks: np.ndarray, regions: Sequence[str]) -> dict[str, Any] | None:
    """``score_case`` of each region: {region: scores} for predicted masks bool [D, S, S, R] (``regions`` order)
    against the case's own region map; None when the case is unlabelled. "has_tumour" and "tumour_detected"
    are the region's."""
    if not case.meta.get("has_labels"):
        return None
    return {region: score_case(case, region_masks[..., i], truth=target_mask(case.labels, region))
            for i, region in enumerate(regions)}


def cohort_summary(scores: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The cohort's distribution of per-case scores (``score_case`` outputs; None entries are unlabelled
    cases and are left out). Dice, HD95 and relative volume error are summarised over the cases with
    tumour; tumour-free cases count their false alarms. None when no case was labelled."""
    labelled = [s for s in scores if s is not None]
    if not labelled:
        return None
    tumour = [s for s in labelled if s["has_tumour"]]
    free = [s for s in labelled if not s["has_tumour"]]

    units = {s["hd95_unit"] for s in tumour}  # TIFF cases in px, volumes in mm: never averaged together

    def stats(key: str) -> dict[str, float]:
        summary = m.summarise([s[key] for s in tumour])
        return {k: summary[k] for k in COHORT_STATS}

    return {
        "n_labelled": len(labelled),
        "n_with_tumour": len(tumour),
        "n_tumour_free": len(free),
        "dice": stats("dice"),
        "hd95": {**(stats("hd95") if len(units) == 1 else dict.fromkeys(COHORT_STATS, math.nan)),
                 "unit": units.pop() if len(units) == 1 else ("mixed: px and mm, not pooled" if units else None),
                 "n_undefined": sum(1 for s in tumour if not math.isfinite(s["hd95"]))},
        "volume_error_relative": stats("volume_error_relative"),
        "missed_tumours": sum(1 for s in tumour if not s["tumour_detected"]),
        "false_alarms_tumour_free": sum(1 for s in free if s["tumour_detected"]),
    }


def cohort_slices(cases: Sequence[dict[str, Any]], n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """Slice-level figures over the labelled cases, as `evaluate` reports them: the AUC of the gate's slice score
    (each slice's ``probability``) against the reference's tumour slices, with its 95% case-bootstrap interval, and
    the final masks' slice calls (a slice is called tumour when its predicted mask is not empty; sensitivity,
    specificity, ppv, npv and the counts: ``metrics.call_summary``'s keys).

    cases: case summaries (``Predictor.write_case``), each with ``case_id`` and ``slices``
    [{probability, blank, reference_tumour (null without labels), tumour (predicted mask not empty)}]. Unlabelled
    cases and blank slices (no signal, never run through the models) are left out. None without a labelled slice.
    """
    ids, truth, score, called = [], [], [], []
    for case in cases:
        for s in case["slices"]:
            if s.get("reference_tumour") is not None and not s["blank"]:
                ids.append(case["case_id"])
                truth.append(bool(s["reference_tumour"]))
                score.append(float(s["probability"]))
                called.append(bool(s["tumour"]))
    if not ids:
        return None
    y = np.array(truth)
    low, high = m.bootstrap_auc_ci(y, score, np.array(ids), n_resamples=n_bootstrap, seed=seed)
    return {"auc": m.roc_auc(y, score), "auc_ci_low": low, "auc_ci_high": high, **m.call_summary(y, np.array(called))}


def _array_spacing(spacing_mm: Sequence[float] | None) -> tuple[float, float, float] | None:
    """A Case's (row, col, slice) voxel size -> the (slice, row, col) order of its [D, H, W] arrays."""
    if not spacing_mm:
        return None
    row, col, slc = spacing_mm
    return (slc, row, col)


def describe_cohort(summary: dict[str, Any]) -> str:
    """One line for the console: a ``cohort_summary`` in words."""
    dice, hd, slices = summary["dice"], summary["hd95"], summary.get("slices")
    per_slice = (f"; slices: AUC {slices['auc']:.3f} [{slices['auc_ci_low']:.3f}, {slices['auc_ci_high']:.3f}], "
                 f"final masks' calls sensitivity {slices['sensitivity']:.3f}, specificity {slices['specificity']:.3f} "
                 f"({slices['n']} slices, {slices['n_positive']} with tumour)") if slices else ""
    return (f"{summary['n_labelled']} labelled case(s), {summary['n_with_tumour']} with tumour: Dice mean "
            f"{dice['mean']:.3f}, median {dice['median']:.3f}, p5 {dice['p5']:.3f}; HD95 median {hd['median']:.1f} "
            f"{hd['unit'] or ''}; relative volume error median {summary['volume_error_relative']['median']:+.1%}; "
            f"{summary['missed_tumours']} missed tumour(s), {summary['false_alarms_tumour_free']} false alarm(s) "
            f"in {summary['n_tumour_free']} tumour-free case(s){per_slice}")
