"""Per-region evaluation of a segmenter with one output per region (data.target "regions").

The gate, its threshold and the post-processing are the whole-tumour ones `evaluate` chose on validation
patients (``pipeline.evaluation.scoring``); this module applies them to every region
(``pipeline.evaluation.cascade.combine_regions``: nested masks) and scores each region of each val/test
patient against the store's region map:

- Dice per slice (slices where the region is present) and per patient (3-D, patients with the region);
- HD95 (mm when the voxel size is known, else px), voxel sensitivity TP / (TP + FN) (patients with the
  region) and specificity TN / (TN + FP) over the stored slices (every patient);
- volume error: predicted minus reference volume, in ml when the voxel size is known, else px.

``region_patient_rows`` gives a row per (patient, region) (``reports/eval/regions.csv``), ``region_summary``
the per-split, per-region figures (``reports/eval/regions.json``, keys in ``pipeline.evaluation.schema``);
``write_region_outputs`` writes both and the overlays (``pipeline.evaluation.region_overlays``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.slices import SliceStore
from pipeline.data.task import target_mask
from pipeline.evaluation import metrics as m
from pipeline.evaluation.cascade import Cascade, combine_regions, gate
from pipeline.evaluation.region_overlays import region_cases
from pipeline.evaluation.schema import REGION_METRICS, check
from pipeline.evaluation.scoring import EVAL_SPLITS, Scored, patient_spacing, scorer_of
from pipeline.writing import json_text

log = logging.getLogger(__name__)

ML_PER_MM3 = 1e-3


def patient_region_masks(cascade: Cascade, images: np.ndarray, probabilities: np.ndarray,
                         regions: tuple[str, ...]) -> np.ndarray:
    """The cascade's nested masks of one patient, bool [D, H, W, R], at the cascade's gate and post-processing;
    probabilities: the gate scores float [D] (already scored: ``Cascade.gate_score``)."""
    gated = gate(probabilities, cascade.threshold)
    seg = np.zeros((*images.shape[:3], len(regions)), np.float32)
    if gated.any():
        seg[gated] = cascade.segment_regions(images, np.flatnonzero(gated))
    return combine_regions(seg, gated, cascade.seg_threshold, regions, cascade.post)


def region_patient_rows(scored: Scored, store: SliceStore, cascade: Cascade, regions: tuple[str, ...],
                        fold_cascades: Sequence[Cascade] | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A row per (val/test patient, region) and each patient's masks bool [D, H, W, R]. With folds each
    patient is segmented by the models ``score_patients`` scored it with (out of fold: its own fold's), at
    ``cascade``'s chosen gate and post-processing."""
    rows: list[dict[str, Any]] = []
    masks: dict[str, np.ndarray] = {}
    for pid, group in scored.slices.groupby("patient_id", sort=True):
        group = group.sort_values("slice_index")
        images = store.images(pid)
        scorer = scorer_of(group, cascade, fold_cascades)
        if scorer is not cascade:  # a fold's models, at the gate and post-processing chosen for all
            scorer = replace(scorer, threshold=cascade.threshold, post=cascade.post)
        predicted = patient_region_masks(scorer, images, group.probability.to_numpy(), regions)
        masks[pid] = predicted
        labels = np.asarray(store.labels(pid))
        spacing, unit = patient_spacing(store, pid)
        voxel_ml = float(np.prod(spacing)) * ML_PER_MM3 if spacing else 1.0
        for i, region in enumerate(regions):
            truth, pred = target_mask(labels, region), predicted[..., i]
            tp, fp = int((truth & pred).sum()), int((~truth & pred).sum())
            fn, tn = int((truth & ~pred).sum()), int((~truth & ~pred).sum())
            present = truth.reshape(len(truth), -1).any(1)
            slice_dice = [m.dice(t, p) for t, p, here in zip(truth, pred, present) if here]
            rows.append({
                "patient_id": pid, "split": group.split.iloc[0], "region": region, "has_region": bool(truth.any()),
                "dice": m.dice(truth, pred), "dice_slice_mean": float(np.mean(slice_dice)) if slice_dice else math.nan,
                "n_region_slices": len(slice_dice), "hd95": m.hd95(truth, pred, spacing=spacing), "hd95_unit": unit,
                "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
                "specificity": tn / (tn + fp) if tn + fp else math.nan,
                "truth_volume": (tp + fn) * voxel_ml, "pred_volume": (tp + fp) * voxel_ml,
                "volume_error": (fp - fn) * voxel_ml, "volume_unit": "ml" if spacing else "px",
            })
    return pd.DataFrame(rows), masks


def region_summary(patients: pd.DataFrame, regions: tuple[str, ...]) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {region: figures}} from ``region_patient_rows``; Dice, HD95, sensitivity and volume error over
    the patients with the region, specificity over every patient; NaN where no patient qualifies."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split in EVAL_SPLITS:
        out[split] = {}
        for region in regions:
            every = patients[(patients.split == split) & (patients.region == region)]
            there = every[every.has_region]
            slices = there[there.n_region_slices > 0]
            weights = slices.n_region_slices.to_numpy(float)
            out[split][region] = {
                "dice_slice_mean": float(np.average(slices.dice_slice_mean, weights=weights)) if len(slices) else math.nan,
                "dice_patient_mean": _mean(there.dice), "dice_patient_median": _median(there.dice),
                "hd95_mean": _mean(there.hd95), "hd95_median": _median(there.hd95),
                "hd95_unit": str(every.hd95_unit.iloc[0]) if len(every) else "px",
                "sensitivity_mean": _mean(there.sensitivity), "specificity_mean": _mean(every.specificity),
                "volume_error_mean": _mean(there.volume_error),
                "volume_error_abs_mean": _mean(there.volume_error.abs()),
                "volume_unit": str(every.volume_unit.iloc[0]) if len(every) else "px",
                "n_patients": int(len(there)), "n_slices": int(weights.sum()),
            }
    return out


def _mean(values: pd.Series) -> float:
    v = values.to_numpy(float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def _median(values: pd.Series) -> float:
    v = values.to_numpy(float)
    return float(np.nanmedian(v)) if np.isfinite(v).any() else math.nan


def write_region_outputs(scored: Scored, store: SliceStore, cascade: Cascade, regions: tuple[str, ...],
                         out: Path, fold_cascades: Sequence[Cascade] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Score every region (cascade at its chosen gate and post-processing) and write, into the evaluate
    folder ``out`` (being written): regions.csv (a row per patient and region), regions.json (``region_summary``,
    checked against ``schema.REGION_METRICS``) and region_cases.json with its overlays in images/."""
    patients, masks = region_patient_rows(scored, store, cascade, regions, fold_cascades)
    summary = region_summary(patients, regions)
    check(summary, REGION_METRICS, name="evaluate's region metrics")
    patients.to_csv(out / "regions.csv", index=False)
    (out / "regions.json").write_text(json_text(summary))
    (out / "region_cases.json").write_text(json_text(region_cases(store, patients, masks, regions, out / "images")))
    for region, figures in summary["test"].items() if (patients.split == "test").any() else ():
        log.info("test %s: Dice per slice %.3f, per patient mean %.3f; HD95 median %.1f %s; sensitivity %.3f, "
                 "specificity %.4f; volume error %.2f %s", region, figures["dice_slice_mean"],
                 figures["dice_patient_mean"], figures["hd95_median"], figures["hd95_unit"],
                 figures["sensitivity_mean"], figures["specificity_mean"], figures["volume_error_mean"],
                 figures["volume_unit"])
    return summary
