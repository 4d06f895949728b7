"""Cascade evaluation on the validation and test patients.

Order of work, which is what keeps it honest:
1. score every val/test slice with the classifier and the segmenter (one patient at a time);
2. choose the threshold on the **validation** rows only (`choose_threshold`), and with it the post-processing
   (`choose_postprocessing`) and, for ``evaluate.seg_threshold: auto``, the segmenter's pixel threshold
   (`choose_seg_threshold`);
3. apply them unchanged to both splits and compute slice-, patient- and volume-level metrics.
Train patients are never read here.

With cross-validation folds (split.folds > 1, ``out_of_fold_split``) every non-test patient is a
validation patient scored by its own fold's models, the ones that did not train on it (out-of-fold),
and the test patients by the ensemble of all folds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.data.slices import SliceStore
from pipeline.data.split import split_manifest
from pipeline.data.task import target_mask
from pipeline.errors import InputError
from pipeline.evaluation import metrics as m
from pipeline.evaluation.cascade import Cascade, gate, gated_mask
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.models.sidecar import load_sidecar

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "test")
# evaluate.seg_threshold "auto": the segmenter pixel thresholds (probability) tried on the validation patients,
# 0.2 to 0.8 in steps of 0.05, the trained threshold (PIXEL_THRESHOLD, 0.5) among them.
SEG_THRESHOLD_CANDIDATES = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))


@dataclass
class Scored:
    """Model outputs for the val/test slices, before the gate threshold is chosen."""

    slices: pd.DataFrame  # manifest rows + split + probability
    seg_masks: dict[str, np.ndarray]  # patient -> bool [D, H, W], segmenter on every slice at its pixel threshold
    truth: dict[str, np.ndarray]  # patient -> bool [D, H, W]
    # For choosing the pixel threshold (score_patients(..., seg_thresholds=...), ``at_seg_threshold``): the
    # thresholds, ascending, and per patient uint8 [D, H, W] how many of them each pixel's probability reaches
    # (1 byte a pixel, as seg_masks: a pixel is tumour at seg_thresholds[k] exactly when its level is > k).
    seg_thresholds: tuple[float, ...] = ()
    seg_levels: dict[str, np.ndarray] | None = None


def out_of_fold_split(split: pd.DataFrame) -> pd.DataFrame:
    """The split evaluate scores: with folds (a ``fold`` column), every non-test patient becomes "val" (scored
    out of fold); without, the split as it is."""
    if "fold" not in split:
        return split
    return split.assign(split=np.where(split.split == "test", "test", "val"))


def check_models_never_saw(split: pd.DataFrame, fold_models: Sequence[Sequence[str | Path]]) -> None:
    """InputError naming a model file whose sidecar lists, among the patients it trained on, one that evaluate
    would score with it: a test patient (every model scores them, in the ensemble), a validation patient, or
    with folds a patient of its own fold. That is a model trained for another split (split.csv changed since).
    fold_models[f]: fold f's model files (the single split's as fold 0). Sidecars without ``trained_on``
    (written before it was recorded) are not checked."""
    split = out_of_fold_split(split)
    test = set(split.patient_id[split.split == "test"])
    for f, paths in enumerate(fold_models):
        own = split.patient_id[split.fold == f] if "fold" in split else split.patient_id[split.split == "val"]
        scored = test | set(own)
        for path in paths:
            seen = sorted(scored & set(load_sidecar(path).get("trained_on") or ()))
            if seen:
                raise InputError(path, f"was trained on {len(seen)} patient(s) that evaluate scores with it "
                                       f"({', '.join(seen[:3])}{', ...' if len(seen) > 3 else ''}): it was trained "
                                       "for another split; re-run the training stages (`dvc repro`)")


def scorer_of(patient_rows: pd.DataFrame, cascade: Cascade, fold_cascades: Sequence[Cascade] | None) -> Cascade:
    """The cascade that scores one patient (its rows): with folds, a patient with a fold (``fold`` column) is
    scored by ``fold_cascades[fold]`` alone, never by a model that trained on it; others (test, or no folds)
    by ``cascade`` (with folds: the ensemble)."""
    fold = patient_rows.fold.iloc[0] if fold_cascades is not None and "fold" in patient_rows else None
    return fold_cascades[int(fold)] if fold is not None and not pd.isna(fold) else cascade


def score_patients(store: SliceStore, split: pd.DataFrame, cascade: Cascade,
                   fold_cascades: Sequence[Cascade] | None = None, seg_thresholds: Sequence[float] = ()) -> Scored:
    """Run the classifier and the segmenter on every slice of the val and test patients.

    fold_cascades: with folds, the cascade of each fold's models: a patient with a fold (``split.fold``)
    is scored by ``fold_cascades[fold]`` alone, never by a model that trained on it; the others (test)
    by `cascade`, the ensemble. seg_thresholds: pixel thresholds the masks can be redrawn at afterwards
    (``at_seg_threshold``); their levels are kept (``Scored``).
    """
    rows = split_manifest(store.manifest, split)
    rows = rows[rows.split.isin(EVAL_SPLITS)].sort_values(["patient_id", "slice_index"]).reset_index(drop=True)
    if rows.empty:
        raise InputError("data/split.csv", "no validation or test patients to evaluate")
    probabilities = np.zeros(len(rows), np.float32)
    classifier_probabilities = np.zeros(len(rows), np.float32)
    seg_pixels = np.zeros(len(rows), np.int64)
    overlap_pixels = np.zeros(len(rows), np.int64)
    seg_masks: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    seg_thresholds = tuple(sorted({float(t) for t in seg_thresholds}))
    seg_levels: dict[str, np.ndarray] | None = {} if seg_thresholds else None
    for pid, index in tqdm(rows.groupby("patient_id", sort=False).groups.items(), desc="scoring patients",
                           unit="patient", leave=False):
        images = store.images(pid)
        scorer = scorer_of(rows.loc[index], cascade, fold_cascades)
        classifier_probabilities[index] = scorer.classify(images)
        seg = scorer.segment(images)
        probabilities[index] = scorer.gate_score(classifier_probabilities[index], seg)
        seg_masks[pid] = seg >= scorer.seg_threshold
        if seg_levels is not None:
            seg_levels[pid] = np.sum([seg >= t for t in seg_thresholds], axis=0, dtype=np.uint8)
        truth[pid] = target_mask(store.labels(pid))
        seg_pixels[index] = seg_masks[pid].sum(axis=(1, 2))
        overlap_pixels[index] = (seg_masks[pid] & truth[pid]).sum(axis=(1, 2))
    rows["probability"] = probabilities  # the gate score (cascade.slice_score)
    rows["classifier_probability"] = classifier_probabilities
    rows["seg_pixels"] = seg_pixels  # segmenter pixels per slice (before the gate)
    rows["seg_overlap_pixels"] = overlap_pixels  # of which on the reference tumour
    return Scored(rows, seg_masks, truth, seg_thresholds, seg_levels)


def at_seg_threshold(scored: Scored, seg_threshold: float, splits: Sequence[str] = EVAL_SPLITS) -> Scored:
    """``scored``'s patients of ``splits`` with the segmenter's masks at another pixel threshold, one of its
    ``seg_thresholds``: ``seg_masks`` and the slice columns seg_pixels and seg_overlap_pixels redrawn from its
    levels, exactly as scoring at that threshold draws them. ValueError for a threshold it has no levels for."""
    if scored.seg_levels is None or float(seg_threshold) not in scored.seg_thresholds:
        raise ValueError(f"pixel threshold {seg_threshold} was not among the seg_thresholds scored "
                         f"{list(scored.seg_thresholds)} (score_patients(..., seg_thresholds=...))")
    k = scored.seg_thresholds.index(float(seg_threshold))
    slices = scored.slices[scored.slices.split.isin(splits)].copy()
    masks = {}
    for pid, index in slices.groupby("patient_id", sort=False).groups.items():
        masks[pid] = scored.seg_levels[pid] > k
        slices.loc[index, "seg_pixels"] = masks[pid].sum(axis=(1, 2))
        slices.loc[index, "seg_overlap_pixels"] = (masks[pid] & scored.truth[pid]).sum(axis=(1, 2))
    return Scored(slices, masks, {pid: scored.truth[pid] for pid in masks}, scored.seg_thresholds, scored.seg_levels)


def choose_seg_threshold(scored: Scored, rule: str | float, post_options: Sequence[PostProcessing],
                         trained: float) -> float:
    """The segmenter pixel threshold among ``scored.seg_thresholds`` (``trained``, the one the segmenter was
    trained with, among them) whose cascade scores the highest mean per-patient Dice over the validation patients
    with tumour, each threshold with its own gate (``choose_threshold`` by ``rule``) and post-processing
    (``choose_postprocessing``), all three chosen on the same validation patients; test patients are never read.
    Ties go to the threshold nearest ``trained``; without a validation patient with tumour, ``trained`` stays."""
    if float(trained) not in scored.seg_thresholds:
        raise ValueError(f"the trained pixel threshold {trained} is not among {list(scored.seg_thresholds)}")
    best, best_score, tried = float(trained), -1.0, []
    for candidate in sorted(scored.seg_thresholds, key=lambda t: (abs(t - trained), t)):
        at = at_seg_threshold(scored, candidate, splits=("val",))
        gate_threshold = choose_threshold(at.slices, rule, log_level=logging.DEBUG)
        score = max(choose_postprocessing(at, gate_threshold, post_options, log_level=logging.DEBUG)[1])
        tried.append((candidate, score))
        if score > best_score + 1e-12:  # NaN (no validation tumour) never wins
            best, best_score = candidate, score
    log.info("segmenter pixel threshold %.2f: validation mean per-patient Dice %s", best,
             ", ".join(f"{t:.2f}: {s:.4f}" for t, s in sorted(tried)))
    return best


def choose_threshold(slices: pd.DataFrame, rule: str | float, log_level: int = logging.INFO) -> float:
    """The operating point, chosen from the validation rows of `slices` only.

    rule "patient_dice" (``patient_dice_threshold``) needs the columns tumour_pixels, seg_pixels and
    seg_overlap_pixels; every other rule is ``metrics.select_threshold`` on the slice labels.
    """
    val = slices[slices.split == "val"]
    if val.empty:
        raise InputError("data/split.csv", "no validation patients: the threshold cannot be chosen")
    if rule == "patient_dice":
        return patient_dice_threshold(val, log_level)
    return float(m.select_threshold(val.has_tumour.to_numpy(int), val.probability.to_numpy(), rule))


def patient_dice_threshold(slices: pd.DataFrame, log_level: int = logging.INFO) -> float:
    """The gate threshold that maximises the cascade's mean per-patient 3-D Dice over ``slices``' patients.

    slices: one row per slice with patient_id, probability, tumour_pixels (reference), seg_pixels and
    seg_overlap_pixels (the segmenter's mask before the gate, and its overlap with the reference). A
    slice passes the gate when probability >= threshold (``metrics.predicted_positive``); the cascade's
    Dice of a patient is then 2 sum(overlap) / (sum(seg) + sum(reference)) over the gated slices, 1.0 for
    a tumour-free patient with an empty mask (0 for any false positive). Post-processing is not applied.
    Candidates are the distinct probabilities and 1.0 above them; ties go to the highest threshold.
    """
    probability = slices.probability.to_numpy(np.float32)
    candidates = np.unique(np.r_[probability, np.float32(1.0) + 1e-6].astype(np.float64))[::-1]
    patients = slices.patient_id.to_numpy()
    seg = slices.seg_pixels.to_numpy(np.float64)
    overlap = slices.seg_overlap_pixels.to_numpy(np.float64)
    truth_px = slices.tumour_pixels.to_numpy(np.float64)
    _, patient_index = np.unique(patients, return_inverse=True)
    n_patients = patient_index.max() + 1
    truth_total = np.bincount(patient_index, truth_px, n_patients)
    best, best_score = float(candidates[0]), -1.0
    for threshold in candidates:
        gated = m.predicted_positive(probability, threshold)
        inter = np.bincount(patient_index, overlap * gated, n_patients)
        pred = np.bincount(patient_index, seg * gated, n_patients)
        denominator = pred + truth_total
        dice = np.where(denominator > 0, 2 * inter / np.maximum(denominator, 1), 1.0)
        score = float(dice.mean())
        if score > best_score + 1e-12:
            best, best_score = float(threshold), score
    log.log(log_level, "patient_dice threshold %.4f: validation mean per-patient Dice %.4f (before post-processing)",
            best, best_score)
    return best


def choose_postprocessing(scored: Scored, threshold: float, options: Sequence[PostProcessing],
                          log_level: int = logging.INFO) -> tuple[PostProcessing, list[float]]:
    """The post-processing among `options` with the highest mean per-patient cascade Dice over the
    validation patients with tumour, at the gate `threshold` (chosen before, on the same patients).

    Returns the winner (ties: the earlier, simpler option) and each option's validation score (NaN without
    validation tumour patients, where the first option wins). Test patients are never read.
    """
    val = scored.slices[scored.slices.split == "val"]
    scores = []
    for post in options:
        dice = [m.dice(scored.truth[pid], gated_mask(scored.seg_masks[pid],
                                                     gate(group.probability.to_numpy(), threshold), post))
                for pid, group in val.groupby("patient_id", sort=True) if scored.truth[pid].any()]
        scores.append(float(np.mean(dice)) if dice else math.nan)
    if len(options) > 1 and not np.isfinite(scores).any() and log_level >= logging.INFO:
        log.warning("no validation patient has tumour: post-processing left at %s", options[0])
    best = int(np.argmax(np.nan_to_num(scores, nan=-1.0)))
    for post, score in zip(options, scores):
        log.log(log_level, "post-processing %s: validation mean per-patient Dice %.4f%s", post, score,
                " (chosen)" if post is options[best] else "")
    return options[best], scores


def of_fold(tables: tuple[pd.DataFrame, pd.DataFrame], split: pd.DataFrame,
            fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``evaluate_split``'s (slices, patients) tables cut to the patients of one cross-validation fold of
    data/split.csv (those its fold model never trained on)."""
    own = set(split.patient_id[split.fold == fold])
    slices, patients = tables
    return slices[slices.patient_id.isin(own)], patients[patients.patient_id.isin(own)]


def fold_spread(patients: pd.DataFrame, slices: pd.DataFrame, split: pd.DataFrame) -> dict[str, Any]:
    """The spread of the out-of-fold figures over the folds (``metrics.cross_validation``).

    patients, slices: evaluate_split's tables of the "val" patients; split: data/split.csv (fold column
    with folds; without, the val patients are one fold). Per fold: the mean per-patient cascade Dice
    over its tumour patients, and its slice AUC.
    """
    fold_of = split.set_index("patient_id").fold if "fold" in split else pd.Series(0, index=split.patient_id)
    dice, auc = [], []
    for fold in sorted(int(f) for f in fold_of.dropna().unique()):
        own = set(fold_of.index[fold_of == fold]) & set(patients.patient_id)
        tumour = patients[patients.patient_id.isin(own) & patients.has_tumour]
        dice.append(float(tumour.dice_cascade.mean()) if len(tumour) else math.nan)
        rows = slices[slices.patient_id.isin(own)]
        auc.append(m.roc_auc(rows.has_tumour.to_numpy(int), rows.probability.to_numpy()))
    finite = np.array([d for d in dice if np.isfinite(d)])
    return {
        "folds": len(dice),
        "dice_patient_mean_per_fold": dice,
        "dice_patient_mean_sd": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
        "dice_patient_mean_min": float(finite.min()) if len(finite) else math.nan,
        "dice_patient_mean_max": float(finite.max()) if len(finite) else math.nan,
        "auc_per_fold": auc,
    }


def patient_spacing(store: SliceStore, pid: str) -> tuple[tuple[float, float, float] | None, str]:
    """Voxel spacing in mm in the order of the [D, H, W] arrays (slice, row, col), and the unit.

    The store keeps (row, col, slice); None (unit "px") when the spacing is unknown (LGG TIFFs).
    """
    spacing = store.patients[pid].get("spacing_mm")
    if not spacing:
        return None, "px"
    row, col, slc = spacing
    return (slc, row, col), "mm"


def evaluate_split(scored: Scored, store: SliceStore, split_name: str, threshold: float,
                   post: PostProcessing, n_bootstrap: int, seed: int) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Metrics of one split at a fixed threshold: (metrics dict, slice table, patient table)."""
    slices = scored.slices[scored.slices.split == split_name].copy()
    y = slices.has_tumour.to_numpy(int)
    p = slices.probability.to_numpy()
    slices["predicted_positive"] = gate(p, threshold)

    slice_rows, patient_rows = [], []
    for pid, group in slices.groupby("patient_id", sort=True):
        truth, seg = scored.truth[pid], scored.seg_masks[pid]
        cascade_mask = gated_mask(seg, group.predicted_positive.to_numpy(), post)
        segmenter_all = post.apply(seg) if post.enabled else seg
        spacing, unit = patient_spacing(store, pid)
        voxel = float(np.prod(spacing)) if spacing else 1.0
        has_tumour = bool(truth.any())
        hd = m.hd95(truth, cascade_mask, spacing=spacing)
        fp_slices = int((cascade_mask.reshape(len(truth), -1).any(1) & ~truth.reshape(len(truth), -1).any(1)).sum())
        patient_rows.append({
            "patient_id": pid, "split": split_name, "n_slices": len(group), "n_positive": int(group.has_tumour.sum()),
            "has_tumour": has_tumour, "max_probability": float(group.probability.max()),
            "predicted_positive": bool(group.predicted_positive.any()),
            "dice_cascade": m.dice(truth, cascade_mask), "dice_segmenter_all": m.dice(truth, segmenter_all),
            "iou_cascade": m.iou(truth, cascade_mask), "hd95_cascade": hd, "hd95_unit": unit,
            "empty_pred": not cascade_mask.any(), "empty_truth": not has_tumour,
            "empty_pred_cascade": not cascade_mask.any(), "empty_pred_segmenter_all": not segmenter_all.any(),
            "fp_slices": fp_slices, "fp_volume": float((cascade_mask & ~truth).sum() * voxel) if not has_tumour else 0.0,
            "fp_slices_segmenter_all": int(segmenter_all.reshape(len(truth), -1).any(1).sum()) if not has_tumour else 0,
            "fp_volume_segmenter_all": float(segmenter_all.sum() * voxel) if not has_tumour else 0.0,
            "volume_unit": "mm3" if spacing else "px", "truth_volume": float(truth.sum() * voxel),
            "pred_volume": float(cascade_mask.sum() * voxel),
            "hd95_segmenter_all": m.hd95(truth, segmenter_all, spacing=spacing),
        })
        for (_, row), t, s, c in zip(group.iterrows(), truth, seg, cascade_mask):
            slice_rows.append({
                "pred_pixels_cascade": int(c.sum()), "pred_pixels_segmenter": int(s.sum()),
                "dice_segmenter": m.dice(t, s) if row.has_tumour else math.nan,
                "iou_segmenter": m.iou(t, s) if row.has_tumour else math.nan,
                "dice_cascade": m.dice(t, c),
            })
    slices = pd.concat([slices.reset_index(drop=True), pd.DataFrame(slice_rows)], axis=1)
    patients = pd.DataFrame(patient_rows)

    groups = slices.patient_id.to_numpy()
    clf = m.classification_summary(y, p, threshold)
    clf["auc"] = m.roc_auc(y, p)
    clf["auc_ci_low"], clf["auc_ci_high"] = m.bootstrap_auc_ci(y, p, groups, n_resamples=n_bootstrap, seed=seed)
    clf["average_precision"] = m.pr_curve_points(y, p)["average_precision"] if y.any() else math.nan
    clf["auc_classifier_alone"] = m.roc_auc(y, slices.classifier_probability.to_numpy())  # = auc for slice_score classifier
    cascade_slices = m.call_summary(y, slices.pred_pixels_cascade.to_numpy() > 0)
    py = patients.has_tumour.to_numpy(int)
    pp = patients.max_probability.to_numpy()
    clf_patient = m.classification_summary(py, pp, threshold)
    clf_patient["auc"] = m.roc_auc(py, pp)

    positive = slices[slices.has_tumour]
    seg_summary = {
        "dice_slice_mean": _nanmean(positive.dice_segmenter), "dice_slice_median": _nanmedian(positive.dice_segmenter),
        "iou_slice_mean": _nanmean(positive.iou_segmenter), "n_slices": len(positive),
    }
    tumour_patients = patients[patients.has_tumour]
    free_patients = patients[~patients.has_tumour]
    results = {
        "classifier": clf,
        "classifier_patient": clf_patient,
        "cascade_slices": cascade_slices,
        "segmenter": seg_summary,
        "cascade": _volume_summary(tumour_patients, free_patients, "cascade"),
        "segmenter_all_slices": _volume_summary(tumour_patients, free_patients, "segmenter_all"),
    }
    return results, slices, patients


def _volume_summary(tumour: pd.DataFrame, free: pd.DataFrame, which: str) -> dict[str, Any]:
    """Per-patient Dice percentiles (patients with tumour), HD95 and false positives (tumour-free)."""
    dice = m.summarise(tumour[f"dice_{which}"].to_numpy(float))
    hd = m.summarise(tumour[f"hd95_{which}"].to_numpy(float))
    out = {f"dice_patient_{k}": v for k, v in dice.items() if k in ("mean", "median", "p5", "p25", "p75", "p95", "std")}
    out.update({
        "hd95_mean": hd["mean"], "hd95_median": hd["median"],
        "hd95_unit": tumour.hd95_unit.iloc[0] if len(tumour) else "px",
        "hd95_n_empty_pred": int(tumour[f"empty_pred_{which}"].sum()),
        "hd95_n_nan": hd["n_nan"], "n_patients": len(tumour), "n_tumour_free_patients": len(free),
    })
    suffix = "" if which == "cascade" else f"_{which}"
    out["fp_slices_tumour_free"] = int(free[f"fp_slices{suffix}"].sum())
    out["fp_volume_tumour_free"] = float(free[f"fp_volume{suffix}"].sum())
    out["volume_unit"] = (tumour.volume_unit.iloc[0] if len(tumour) else free.volume_unit.iloc[0]) if len(
        tumour) + len(free) else "px"
    return out


def _nanmean(values: pd.Series) -> float:
    v = values.to_numpy(float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def _nanmedian(values: pd.Series) -> float:
    v = values.to_numpy(float)
    return float(np.nanmedian(v)) if np.isfinite(v).any() else math.nan


def plot_tables(slices: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """DVC plot data of one split: roc, pr, calibration (curves) and confusion (a row per slice)."""
    y = slices.has_tumour.to_numpy(int)
    p = slices.probability.to_numpy()
    tables: dict[str, pd.DataFrame] = {}
    if 0 < y.sum() < len(y):
        roc = m.roc_curve_points(y, p)
        tables["roc"] = pd.DataFrame({"fpr": roc["fpr"], "tpr": roc["tpr"], "threshold": roc["thresholds"]})
        pr = m.pr_curve_points(y, p)
        tables["pr"] = pd.DataFrame({"recall": pr["recall"], "precision": pr["precision"]})
    cal = m.calibration_curve_points(y, p)
    tables["calibration"] = pd.DataFrame({"mean_predicted": cal["mean_predicted"],
                                          "fraction_positive": cal["fraction_positive"], "count": cal["count"]})
    names = np.array(["no tumour", "tumour"])
    tables["confusion"] = pd.DataFrame({"actual": names[y], "predicted": names[slices.predicted_positive.to_numpy(int)]})
    return tables
