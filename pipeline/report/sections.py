"""The report's sections: ``report_context`` turns ``ReportInputs`` into plain values for the
template (strings, lists, dicts, data URIs), drawing the figures."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.evaluation.schema import METRICS
from pipeline.params import Params
from pipeline.report import figures
from pipeline.report.formatting import MISSING, as_float, ci, count, data_uri, get, num, pct, truthy
from pipeline.report.inputs import ReportInputs, headline_split, reported_splits
from pipeline.report.regions import regions_section

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
GROUPS = {
    "TP": ("True positives", "tumour present, classified as tumour"),
    "FN": ("False negatives", "tumour present, missed by the classifier"),
    "FP": ("False positives", "no tumour, classified as tumour"),
    "TN": ("True negatives", "no tumour, classified as no tumour"),
}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _bools(series: pd.Series) -> pd.Series:
    return series.map(truthy).astype(bool)


class _Images:
    """Embeds PNGs from the reports folder as data URIs, noting the ones it cannot find."""

    def __init__(self, reports_dir: Path):
        self.root = Path(reports_dir).resolve()
        self.missing: list[str] = []

    def __call__(self, relative: Any) -> str | None:
        if not isinstance(relative, str) or not relative:
            return None
        path = (self.root / relative).resolve()
        mime = IMAGE_TYPES.get(path.suffix.lower())
        if mime is None or not path.is_relative_to(self.root):
            log.warning("not embedding %r: not an image inside %s", relative, self.root)
            self.missing.append(relative)
            return None
        try:
            return data_uri(path.read_bytes(), mime)
        except OSError:
            self.missing.append(relative)
            return None


def report_context(inputs: ReportInputs, params: Params, git: str) -> dict[str, Any]:
    """Plain values (strings, lists, dicts, data URIs) for the template."""
    m = inputs.metrics
    shown = headline_split(m)
    images = _Images(inputs.reports_dir)
    threshold = as_float(get(m, "threshold", "value"))
    threshold = as_float(inputs.threshold.get("threshold")) if threshold is None else threshold
    pretrained = get(m, "classifier", "pretrained", default=inputs.sidecars["classifier"].get("pretrained"))
    ctx: dict[str, Any] = {
        "title": "Brain-tumour MRI pipeline — evaluation report",
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git,
        "source": params.data.source,
        "root": params.data.root,
        "is_demo": params.data.source == "demo",
        "pretrained": pretrained,
        "threshold": threshold,
        "threshold_text": threshold_rule_text(get(m, "threshold", "rule", default=inputs.threshold.get("rule"))),
        "slice_score_text": slice_score_text(get(m, "threshold", "slice_score", default="classifier")),
        "banners": _banners(inputs, params, pretrained),
        "shown": {"split": shown, "tag": "test split" if shown == "test" else "out of fold, no test split",
                  "patients": "test patients" if shown == "test" else "out-of-fold patients"},
        "cards": _cards(m, shown),
        "run": _run_summary(inputs, params),
        "classifier": _classifier_section(inputs, threshold, shown),
        "dice": _dice_section(inputs, images, shown),
        "regions": regions_section(inputs, images),
        "explain": _explain_section(inputs, images),
        "training": _training_section(inputs),
    }
    ctx["missing"] = sorted(set(inputs.missing + [f"{p} (image)" for p in images.missing]))
    return ctx


def slice_score_text(score: Any) -> str:
    """What the gate thresholds (evaluate.slice_score), in words."""
    if score == "cascade":
        return ("the cascade's slice score: the classifier's probability times the segmenter's highest pixel "
                "probability on the slice")
    return "the classifier's probability"


def threshold_rule_text(rule: Any) -> str:
    """How the operating point was chosen, in words."""
    rule = str(rule) if rule is not None else ""
    if rule == "youden":
        return "Youden's J: the threshold that maximises sensitivity + specificity − 1"
    if rule == "f1":
        return "the threshold that maximises F1 (the harmonic mean of sensitivity and PPV)"
    if rule == "patient_dice":
        return "the gate that maximises the cascade's mean per-patient 3-D Dice on the validation patients"
    if rule.startswith("sensitivity:"):
        return f"the highest threshold that keeps sensitivity at or above {pct(rule.split(':', 1)[1], 0)}"
    if as_float(rule) is not None:
        return "a fixed threshold set in params.yaml (evaluate.threshold)"
    return f"rule {rule!r}" if rule else "an unrecorded rule"


def _banners(inputs: ReportInputs, params: Params, pretrained: Any) -> list[dict[str, str]]:
    banners = []
    backbone = get(inputs.metrics, "classifier", "backbone", default=params.classifier.backbone)
    if pretrained is False:
        source = inputs.sidecars["classifier"].get("weights_source") or "random initialisation"
        banners.append({"level": "danger", "title": "Classifier NOT pretrained",
                        "text": f"The {backbone} classifier was trained without ImageNet weights ({source}). "
                                "Expect lower accuracy than a pretrained model; do not compare these numbers "
                                "with published results."})
    elif pretrained is None:
        banners.append({"level": "warning", "title": "Pretraining unknown",
                        "text": "Neither metrics_full.json nor the classifier sidecar records whether the classifier "
                                "started from pretrained weights."})
    if headline_split(inputs.metrics) == "val":
        banners.append({"level": "info", "title": "No test split",
                        "text": "Every patient trained the fold models (split.test 0): each figure here is out of "
                                "fold, every patient scored by the fold's models that never saw it, and the gate and "
                                "post-processing were chosen on those same predictions (optimistic, as validation "
                                "figures are). Judge the ensemble on patients outside this data."})
    if params.data.source == "demo":
        banners.append({"level": "warning", "title": "Synthetic demo data",
                        "text": "These numbers come from generated images, not real MRI. They show that the "
                                "pipeline runs end to end; they say nothing about clinical performance."})
    return banners


def _cards(m: dict[str, Any], shown: str = "test") -> list[dict[str, str]]:
    """The headline: the gate's slice AUC, the final masks' slice calls (what predict reports), patient Dice, HD95."""
    clf = get(m, shown, "classifier", default={})
    calls = get(m, shown, "cascade_slices", default={})
    cas = get(m, shown, "cascade", default={})
    name = "Test" if shown == "test" else "Out-of-fold"
    tp, fn, tn, fp = (as_float(calls.get(k)) for k in ("tp", "fn", "tn", "fp"))
    unit = cas.get("hd95_unit") or "px"
    auc_ci = ci(clf.get("auc_ci_low"), clf.get("auc_ci_high"))
    return [
        {"label": f"{name} AUC", "value": num(clf.get("auc")),
         "detail": f"95% CI {auc_ci}" if auc_ci else "95% CI not available"},
        {"label": "Sensitivity", "value": pct(calls.get("sensitivity")),
         "detail": f"{count(tp)} of {count(tp + fn)} tumour slices with a non-empty final mask"
         if tp is not None and fn is not None else "slices with a non-empty final mask"},
        {"label": "Specificity", "value": pct(calls.get("specificity")),
         "detail": f"{count(tn)} of {count(tn + fp)} tumour-free slices without one"
         if tn is not None and fp is not None else "slices with an empty final mask"},
        {"label": "Patient Dice, mean", "value": num(cas.get("dice_patient_mean")),
         "detail": f"cascade, {count(cas.get('n_patients'))} {name.lower()} patients with tumour"},
        {"label": "Patient Dice, median", "value": num(cas.get("dice_patient_median")),
         "detail": f"IQR {num(cas.get('dice_patient_p25'))}–{num(cas.get('dice_patient_p75'))}"},
        {"label": f"HD95, median ({unit})", "value": num(cas.get("hd95_median"), 1),
         "detail": f"mean {num(cas.get('hd95_mean'), 1)} {unit}" if as_float(cas.get("hd95_mean")) is not None
         else "not available"},
    ]


def _run_summary(inputs: ReportInputs, params: Params) -> dict[str, Any]:
    clf, seg = inputs.sidecars["classifier"], inputs.sidecars["segmenter"]
    data = [
        ("Data source", params.data.source), ("Data root", params.data.root),
        ("Image size", f"{params.data.image_size} px"), ("Channels", ", ".join(params.data.channels)),
        ("On reader error", params.data.on_error),
    ]
    if inputs.manifest is not None and "source" in inputs.manifest:
        data.append(("Readers used", ", ".join(sorted(map(str, inputs.manifest.source.dropna().unique())))))
    pretrained = get(inputs.metrics, "classifier", "pretrained", default=clf.get("pretrained"))
    pretrained_text = {True: "pretrained", False: "NOT pretrained"}.get(pretrained, "pretraining unknown")
    models = [
        ("Classifier", f"{get(inputs.metrics, 'classifier', 'backbone', default=clf.get('backbone', MISSING))}, "
                       f"{pretrained_text} ({clf.get('weights_source') or 'weights source not recorded'})"),
        ("Classifier training", _training_summary(clf.get("training") or inputs.training["classifier"].summary)),
        ("Segmenter", f"{seg.get('architecture', 'ResUNet')}, filters {seg.get('filters', list(params.segmenter.filters))}, "
                      f"loss {seg.get('loss', params.segmenter.loss)}"
                      + (f", 2.5-D input: {seg['context_slices']} slice(s) either side" if seg.get("context_slices")
                         else "")),
        ("Segmenter training", _training_summary(seg.get("training") or inputs.training["segmenter"].summary)),
    ]
    post = get(inputs.metrics, "postprocessing")
    if isinstance(post, Mapping):
        models.append(("Post-processing", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in post.items()) or "none"))
    return {
        "data": data,
        "splits": _split_table(inputs.manifest, inputs.split),
        "models": models,
        "params": _params_table(params),
        "skipped": _skipped_rows(inputs.skipped),
        "skipped_known": inputs.skipped is not None,
    }


def _training_summary(summary: Mapping[str, Any]) -> str:
    if not summary:
        return MISSING
    parts = []
    if summary.get("epochs_trained") is not None:
        parts.append(f"{count(summary['epochs_trained'])} epochs")
    if summary.get("schedule") == "fixed":
        parts.append("fixed schedule (poly learning-rate decay), the last weights kept")
    elif summary.get("schedule") == "early_stop":
        parts.append("early stopping, the best epoch's weights kept")
    best = [(k, v) for k, v in summary.items() if k.startswith("best_") and k != "best_epoch"]
    if summary.get("best_epoch") is not None:
        parts.append(f"best epoch {count(summary['best_epoch'])}"
                     + (f" ({best[0][0][5:].replace('_', ' ')} {num(best[0][1])})" if best else ""))
    if as_float(summary.get("train_images_per_s")) is not None:
        parts.append(f"{num(summary['train_images_per_s'], 1)} img/s")
    return ", ".join(parts) or MISSING


def _split_table(manifest: pd.DataFrame | None, split: pd.DataFrame | None) -> dict[str, Any]:
    """Patients and slices per split (with folds: per fold, and test), with tumour counts; a note when the inputs
    are missing."""
    if split is None or not {"patient_id", "split"} <= set(split.columns):
        return {"rows": [], "note": "data/split.csv is missing: patient counts per split are not available."}
    split = split.astype({"patient_id": str})
    if manifest is None or not {"patient_id", "has_tumour"} <= set(manifest.columns):
        rows = [{"split": s, "patients": count((split.split == s).sum()), "tumour_patients": MISSING,
                 "slices": MISSING, "tumour_slices": MISSING} for s in SPLITS]
        return {"rows": rows, "note": "The slice manifest is missing: only patient counts are shown."}
    folds = sorted(int(f) for f in split.fold.dropna().unique()) if "fold" in split else []
    if folds:  # cross-validation: a row per fold (its out-of-fold patients), then test
        split = split.assign(split=[f"fold {int(f)}" if pd.notna(f) else s for f, s in zip(split.fold, split.split)])
    rows_all = manifest.astype({"patient_id": str}).merge(split[["patient_id", "split"]], on="patient_id")
    rows_all["has_tumour"] = _bools(rows_all.has_tumour)
    rows = []
    tested = ["test"] if (split.split == "test").any() else []  # no test split (split.test 0): no test row
    for name in (*([f"fold {f}" for f in folds] + tested if folds else SPLITS), "all"):
        part = rows_all if name == "all" else rows_all[rows_all.split == name]
        slices, positive = len(part), int(part.has_tumour.sum())
        rows.append({
            "split": name, "patients": count(part.patient_id.nunique()),
            "tumour_patients": count(part.loc[part.has_tumour, "patient_id"].nunique()),
            "slices": count(slices),
            "tumour_slices": f"{count(positive)} ({pct(positive / slices if slices else None)})",
        })
    return {"rows": rows, "note": ""}


def _params_table(params: Params) -> list[dict[str, Any]]:
    def show(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(map(str, value)) + "]"
        return "null" if value is None else str(value)  # as params.yaml writes it

    return [{"section": section, "rows": [(key, show(value)) for key, value in values.items()]}
            for section, values in params.as_dict().items()]


def _skipped_rows(skipped: pd.DataFrame | None) -> list[tuple[str, str]]:
    if skipped is None or skipped.empty:
        return []
    cols = list(skipped.columns)
    path_col = "path" if "path" in cols else cols[0]
    reason_col = "reason" if "reason" in cols else cols[-1]
    return [(str(r[path_col]), str(r[reason_col])) for _, r in skipped.fillna("").iterrows()]


CLASSIFIER_ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("auc", "AUC (ROC)", num), ("auc_classifier_alone", "AUC, classifier probability alone", num),
    ("average_precision", "Average precision", num),
    ("sensitivity", "Sensitivity (recall)", pct), ("specificity", "Specificity", pct),
    ("ppv", "PPV (precision)", pct), ("npv", "NPV", pct), ("f1", "F1", num), ("accuracy", "Accuracy", pct),
    ("prevalence", "Prevalence", pct), ("brier", "Brier score", num),
]


def _classifier_section(inputs: ReportInputs, threshold: float | None, shown: str = "test") -> dict[str, Any]:
    """shown: "test", or "val" when the run has no test split (its columns, curves and confusion matrix left out)."""
    m = inputs.metrics
    columns = [(split, level, name, what) for split, name in (("test", "Test"), ("val", "Validation"))
               for level, what in (("classifier", "gate, slices"), ("classifier_patient", "gate, patients"),
                                   ("cascade_slices", "final masks, slices"))]
    columns = [c for c in columns if isinstance(get(m, c[0], c[1]), Mapping) and c[0] in reported_splits(m)]
    rows = []
    for key, label, fmt in CLASSIFIER_ROWS:
        cells = []
        for split, level, _, _ in columns:
            d, known = get(m, split, level), METRICS.keys[split].keys[level].keys
            text = fmt(d.get(key)) if key in known else MISSING  # patient level: no AP, no AUC CI
            if key == "auc" and "auc_ci_low" in known and ci(d.get("auc_ci_low"), d.get("auc_ci_high")):
                text += " " + ci(d.get("auc_ci_low"), d.get("auc_ci_high"))
            cells.append(text)
        rows.append({"label": label, "cells": cells})
    for label, keys in (("n (positive)", ("n", "n_positive")), ("TP / FP", ("tp", "fp")), ("FN / TN", ("fn", "tn"))):
        cells = []
        for split, level, _, _ in columns:
            d = get(m, split, level)
            a, b = count(d.get(keys[0])), count(d.get(keys[1]))
            cells.append(f"{a} ({b})" if label.startswith("n") else f"{a} / {b}")
        rows.append({"label": label, "cells": cells})

    curve_labels, roc_points, pr_points, roc, pr, cal = {}, {}, {}, {}, {}, {}
    for split in reported_splits(m):
        d = get(m, split, "classifier", default={})
        name = "test" if split == "test" else "validation"
        auc_text = f"AUC {num(d.get('auc'))}" + (f", 95% CI {ci(d.get('auc_ci_low'), d.get('auc_ci_high'))}"
                                                 if ci(d.get("auc_ci_low"), d.get("auc_ci_high")) else "")
        curve_labels[split] = f"{name} ({auc_text})"
        sens, spec, ppv = (as_float(d.get(k)) for k in ("sensitivity", "specificity", "ppv"))
        roc_points[split] = (1 - spec if spec is not None else None, sens)
        pr_points[split] = (sens, ppv)
        if _has(inputs.plots.get(f"roc_{split}"), "fpr", "tpr"):
            roc[split] = inputs.plots[f"roc_{split}"]
        if _has(inputs.plots.get(f"pr_{split}"), "recall", "precision"):
            pr[split] = inputs.plots[f"pr_{split}"]
        if _has(inputs.plots.get(f"calibration_{split}"), "mean_predicted", "fraction_positive"):
            cal[split] = inputs.plots[f"calibration_{split}"]
    test = get(m, shown, "classifier", default={})  # the shown split's (out of fold without a test split)
    name = "Test" if shown == "test" else "Out-of-fold"
    pr_labels = {s: f"{'test' if s == 'test' else 'validation'} (AP {num(get(m, s, 'classifier', 'average_precision'))})"
                 for s in pr}
    cal_labels = {s: f"{'test' if s == 'test' else 'validation'} (Brier {num(get(m, s, 'classifier', 'brier'))})"
                  for s in cal}
    confusion = [(f"{name} slices, gate (n = {count(test.get('n'))})",
                  _confusion_counts(test, inputs.plots.get(f"confusion_{shown}")))]
    for level, what in (("classifier_patient", "patients, gate"), ("cascade_slices", "slices, final masks")):
        d = get(m, shown, level, default={})
        if all(as_float(d.get(k)) is not None for k in ("tp", "fp", "fn", "tn")):
            confusion.append((f"{name} {what} (n = {count(d.get('n'))})", d))
    calls = get(m, shown, "cascade_slices", default={})
    have_confusion = confusion[0][1] is not None
    return {
        "columns": [{"split": c[2], "level": c[3], "is_val": c[0] == "val"} for c in columns],
        "rows": rows,
        "roc_png": data_uri(figures.roc_figure(roc, curve_labels, {s: roc_points[s] for s in roc}, threshold))
        if roc else None,
        "pr_png": data_uri(figures.pr_figure(pr, pr_labels, {s: pr_points[s] for s in pr}, test.get("prevalence")))
        if pr else None,
        "confusion_png": data_uri(figures.confusion_figure([c for c in confusion if c[1] is not None]))
        if have_confusion else None,
        "calibration_png": data_uri(figures.calibration_figure(cal, cal_labels)) if cal else None,
        "brier": num(test.get("brier")),
        "val_sensitivity": pct(inputs.threshold.get("val_sensitivity", get(m, "val", "classifier", "sensitivity"))),
        "val_specificity": pct(inputs.threshold.get("val_specificity", get(m, "val", "classifier", "specificity"))),
        "test": {k: pct(test.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv")},
        "calls": {k: pct(calls.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv")},
    }


def _has(table: pd.DataFrame | None, *columns: str) -> bool:
    return table is not None and not table.empty and set(columns) <= set(table.columns)


def _confusion_counts(d: Mapping[str, Any], table: pd.DataFrame | None) -> dict[str, float] | None:
    """TP/FP/FN/TN from metrics_full.json, else counted from the confusion plot table."""
    if all(as_float(d.get(k)) is not None for k in ("tp", "fp", "fn", "tn")):
        return {k: float(d[k]) for k in ("tp", "fp", "fn", "tn")}
    if _has(table, "actual", "predicted"):
        a, p = table.actual.astype(str) == "tumour", table.predicted.astype(str) == "tumour"
        return {"tp": float((a & p).sum()), "fp": float((~a & p).sum()),
                "fn": float((a & ~p).sum()), "tn": float((~a & ~p).sum())}
    return None


PATIENT_COLUMNS: list[tuple[str, str, str]] = [
    # (column in patients.csv, header, kind: text | num<digits> | bool)
    ("patient_id", "Patient", "text"), ("split", "Split", "text"), ("n_slices", "Slices", "num0"),
    ("n_positive", "Tumour slices", "num0"), ("max_probability", "Max p", "num3"),
    ("predicted_positive", "Called tumour", "bool"), ("dice_cascade", "Dice, cascade", "num3"),
    ("dice_segmenter_all", "Dice, segmenter alone", "num3"), ("hd95_cascade", "HD95", "num1"),
    ("fp_slices", "FP slices", "num0"), ("truth_volume", "True vol.", "num0"),
    ("pred_volume", "Pred. vol.", "num0"),
]


def _dice_section(inputs: ReportInputs, images: _Images, shown: str = "test") -> dict[str, Any]:
    m = inputs.metrics
    patients = inputs.patients
    hd_unit = get(m, "test", "cascade", "hd95_unit") or _first(patients, "hd95_unit") or "px"
    vol_unit = _first(patients, "volume_unit") or ("mm3" if hd_unit == "mm" else "px")
    vol_unit = "mm³" if vol_unit == "mm3" else vol_unit

    summary_rows, error_rows = [], []
    cv = get(m, "cross_validation", default={})
    folds = cv.get("folds") if isinstance(cv, Mapping) else None
    val_name = f"out of fold ({folds} folds)" if isinstance(folds, int) and folds > 1 else "validation"
    for split in reported_splits(m):
        for key, label in (("cascade", "Cascade"), ("segmenter_all_slices", "Segmenter, all slices")):
            d = get(m, split, key)
            if not isinstance(d, Mapping):
                continue
            name = ("test, ensemble" if val_name != "validation" else "test") if split == "test" else val_name
            summary_rows.append({"label": label, "split": name, "is_val": split == "val", "cells": [
                count(d.get("n_patients")), *(num(d.get(f"dice_patient_{q}")) for q in
                                              ("mean", "median", "p5", "p25", "p75", "p95"))]})
            error_rows.append({"label": label, "split": name, "is_val": split == "val", "cells": [
                num(d.get("hd95_mean"), 1), num(d.get("hd95_median"), 1), count(d.get("hd95_n_empty_pred")),
                count(d.get("n_tumour_free_patients")), count(d.get("fp_slices_tumour_free")),
                num(d.get("fp_volume_tumour_free"), 0)]})
    numbers = _slice_numbers(inputs.slices)
    seg = get(m, shown, "segmenter", default={})
    cas, seg_all = get(m, shown, "cascade", default={}), get(m, shown, "segmenter_all_slices", default={})

    figure = None
    if patients is not None and inputs.slices is not None and "split" in patients and "split" in inputs.slices:
        p = patients[(patients.split == shown) & _bools(patients.get("has_tumour", pd.Series(True, patients.index)))]
        s = inputs.slices[(inputs.slices.split == shown) & _bools(inputs.slices.get(
            "has_tumour", pd.Series(True, inputs.slices.index)))]
        if len(p) or len(s):
            figure = data_uri(figures.dice_figure(p, s))

    spread = None
    if isinstance(folds, int) and folds > 1:
        per_fold = ", ".join(num(v) for v in cv.get("dice_patient_mean_per_fold") or [])
        scored = (f", and the test patients are scored by the ensemble (the mean of the {folds} folds' probabilities)"
                  if shown == "test" else " (no test split)")
        spread = (f"Cross-validation, {folds} folds: each non-test patient is scored by the models of its own fold "
                  f"(trained without it); the gate and the post-processing were chosen on these out-of-fold "
                  f"predictions{scored}. Mean per-patient cascade Dice per fold: {per_fold} (sd "
                  f"{num(cv.get('dice_patient_mean_sd'))}, min {num(cv.get('dice_patient_mean_min'))}, max "
                  f"{num(cv.get('dice_patient_mean_max'))}).")
    return {
        "hd_unit": hd_unit, "vol_unit": vol_unit, "figure": figure, "cross_validation": spread,
        "summary_rows": summary_rows, "error_rows": error_rows,
        "slice_text": {"n": count(seg.get("n_slices")), "mean": num(seg.get("dice_slice_mean")),
                       "median": num(seg.get("dice_slice_median")), "iou": num(seg.get("iou_slice_mean"))},
        "fp": {"patients": count(cas.get("n_tumour_free_patients")), "cascade_slices": count(cas.get("fp_slices_tumour_free")),
               "cascade_volume": num(cas.get("fp_volume_tumour_free"), 0),
               "segmenter_slices": count(seg_all.get("fp_slices_tumour_free"))},
        "table": _patient_table(patients, hd_unit, vol_unit),
        "cases": [{"rank": str(c.get("rank", "")).capitalize(), "patient_id": str(c.get("patient_id", MISSING)),
                   "dice": num(c.get("dice")), "png": images(c.get("png")),
                   "slice": _slice_label(numbers, c.get("patient_id"), c.get("slice_index"))
                   if c.get("slice_index") is not None else ""} for c in inputs.cases],
    }


def _first(table: pd.DataFrame | None, column: str) -> str | None:
    if table is None or column not in table or table[column].dropna().empty:
        return None
    return str(table[column].dropna().iloc[0])


def _patient_table(patients: pd.DataFrame | None, hd_unit: str, vol_unit: str) -> dict[str, Any]:
    """Header and rows of the sortable per-patient table; each cell has display text and a sort key."""
    if patients is None or patients.empty:
        return {"headers": [], "rows": []}
    units = {"hd95_cascade": hd_unit, "truth_volume": vol_unit, "pred_volume": vol_unit}
    columns = [c for c in PATIENT_COLUMNS if c[0] in patients.columns]
    order = patients.assign(_s=patients.get("split", pd.Series("", patients.index)).map({"test": 0, "val": 1}).fillna(2))
    order = order.sort_values(["_s", "patient_id"]) if "patient_id" in order else order
    headers = [{"key": key, "label": label + (f" ({units[key]})" if key in units else ""),
                "type": "text" if kind == "text" else "num"} for key, label, kind in columns]
    rows = []
    for _, r in order.iterrows():
        cells = []
        for key, _, kind in columns:
            value = r[key]
            if kind == "text":
                text = MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
                cells.append({"text": text, "key": text})
            elif kind == "bool":
                flag = truthy(value)
                cells.append({"text": "yes" if flag else "no", "key": "1" if flag else "0"})
            else:
                x = as_float(value)
                cells.append({"text": num(x, int(kind[3:])) if kind != "num0" else count(x),
                              "key": "" if x is None else repr(x)})
        rows.append({"cells": cells, "is_val": str(r.get("split", "")) == "val"})
    return {"headers": headers, "rows": rows}


def _explain_section(inputs: ReportInputs, images: _Images) -> dict[str, Any]:
    explain = get(inputs.metrics, "test", "explain", default={})
    numbers = _slice_numbers(inputs.slices)
    groups = []
    for code, (title, meaning) in GROUPS.items():
        entries = []
        for g in inputs.gallery:
            if str(g.get("group", "")).upper() != code:
                continue
            hit = g.get("pointing_hit")
            entries.append({
                "patient_id": str(g.get("patient_id", MISSING)),
                "slice": _slice_label(numbers, g.get("patient_id"), g.get("slice_index")),
                "probability": num(g.get("probability")),
                "pointing": MISSING if hit is None else ("peak inside tumour" if truthy(hit) else "peak outside tumour"),
                "hit": None if hit is None else truthy(hit),
                "gradcam": images(g.get("gradcam_png")), "ig": images(g.get("ig_png")),
            })
        groups.append({"code": code, "title": title, "meaning": meaning, "entries": entries})
    n = as_float(explain.get("pointing_game_n"))
    score = as_float(explain.get("pointing_game"))
    return {
        "groups": groups,
        "pointing": pct(score, 0),
        "pointing_n": count(n),
        "pointing_hits": count(score * n) if score is not None and n is not None else MISSING,
        "pointing_chance": pct(as_float(explain.get("pointing_game_chance")), 0),
        "pointing_tolerance": num(as_float(explain.get("pointing_game_tolerance_px")), 1),
        "gradcam_grid": "x".join(str(v) for v in explain.get("gradcam_grid") or []) or MISSING,
    }


def _slice_numbers(slices: pd.DataFrame | None) -> dict[tuple[str, int], int]:
    """(patient_id, slice_index) -> slice_number in the original scan, from eval/slices.csv."""
    if not _has(slices, "patient_id", "slice_index", "slice_number"):
        return {}
    rows = slices.dropna(subset=["slice_index", "slice_number"])
    return {(str(p), int(i)): int(n) for p, i, n in zip(rows.patient_id, rows.slice_index, rows.slice_number, strict=True)}


def _slice_label(numbers: Mapping[tuple[str, int], int], patient_id: Any, index: Any) -> str:
    """"slice 21" (the scan's slice number) when known, else "slice index 20" (row in the stored array)."""
    i = as_float(index)
    if i is None:
        return "slice " + MISSING
    number = numbers.get((str(patient_id), int(i)))
    return f"slice {number}" if number is not None else f"slice index {int(i)}"


def _training_section(inputs: ReportInputs) -> list[dict[str, Any]]:
    out = []
    for name, monitor in (("classifier", "auc"), ("segmenter", "dice")):
        log_ = inputs.training[name]
        best_epoch = as_float(log_.summary.get("best_epoch"))
        rows = []
        for metric, splits in log_.curves.items():
            rows.append({"metric": metric.replace("_", " "),
                         "train": num(_last(splits.get("train"), metric), 4),
                         "val": num(_last(splits.get("val"), metric), 4),
                         "best": num(_at(splits.get("val"), metric, best_epoch), 4)})
        out.append({
            "name": name.capitalize(), "monitor": f"val {monitor}", "rows": rows,
            "summary": _training_summary(log_.summary),
            "png": None if log_.empty else data_uri(figures.training_figure(
                log_.curves, log_.learning_rate, int(best_epoch) - 1 if best_epoch else None,
                f"{name.capitalize()} (best epoch by val {monitor} dotted)")),
        })
    return out


def _last(table: pd.DataFrame | None, column: str) -> Any:
    return None if table is None or table.empty else table[column].iloc[-1]


def _at(table: pd.DataFrame | None, column: str, epoch: float | None) -> Any:
    if table is None or epoch is None:
        return None
    row = table[table.step == int(epoch) - 1]
    return None if row.empty else row[column].iloc[0]
