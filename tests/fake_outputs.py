"""A complete, realistic FAKE set of pipeline outputs, so report (and other) tests need no trained model.

``write_fake_outputs(root)`` writes, under ``root`` and in the layout of docs/outputs.md:

- ``data/slices/`` manifest.csv, patients.json, skipped.csv (arrays/ too with ``with_arrays=True``)
- ``data/split.csv``
- ``models/classifier.json``, ``models/segmenter.json`` (sidecars only, no .keras files)
- ``reports/train_classifier/``, ``reports/train_segmenter/`` (dvclive metrics.json + plots/metrics TSVs)
- ``reports/metrics.json`` (headline) and ``reports/eval/`` (metrics_full.json, threshold.json, slices.csv,
  patients.csv, plots/*.csv, gallery.json, cases.json, images/*.png)

The numbers are random but plausible and consistent with each other (the metrics in metrics_full.json
are computed from the fake slice and patient tables by ``pipeline.evaluation.metrics``, as evaluate computes
them); both metrics files are written through ``pipeline.evaluation.schema``, so they have exactly the keys
evaluate writes. Everything is seeded: the same arguments
give the same files. Example::

    run = write_fake_outputs(tmp_path, n_patients=20, seed=1)
    build_report(**run.build_kwargs())
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import yaml

from pipeline.data.slices import file_stem
from pipeline.evaluation import metrics as m
from pipeline.evaluation import schema
from pipeline.evaluation.scoring import plot_tables
from pipeline.models.nets.segmenter import PIXEL_THRESHOLD
from pipeline.models.registry import SEGMENTERS
from pipeline.params import SEG_THRESHOLD_RULES, Params, params_from_dict

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("TP", "FP", "FN", "TN")
INSTITUTIONS = ("CS", "DU", "HT", "FG", "EZ")


@dataclass(frozen=True)
class FakeRun:
    """Where the fake outputs were written, and the params they pretend to come from."""

    root: Path
    reports_dir: Path
    eval_dir: Path
    slices_dir: Path
    split_csv: Path
    models_dir: Path
    params: Params
    metrics: dict[str, Any]

    @property
    def out_html(self) -> Path:
        return self.reports_dir / "index.html"

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``pipeline.report.build_report``."""
        return {"reports_dir": self.reports_dir, "slices_dir": self.slices_dir, "split_csv": self.split_csv,
                "models_dir": self.models_dir, "params": self.params, "out_html": self.out_html}


def fake_params(**overrides: Any) -> Params:
    """The repository's params.yaml as ``Params``, with dotted-key overrides (``{"data.source": "lgg"}``)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in overrides.items():
        section, name = key.replace("__", ".").split(".", 1)
        raw[section][name] = value
    return params_from_dict(raw)


def write_fake_outputs(root: str | Path, *, n_patients: int = 30, slices_per_patient: int = 24,
                       image_size: int = 96, seed: int = 0, source: str = "demo", pretrained: bool = False,
                       patient_ids: Sequence[str] | None = None, nan_metrics: bool = False,
                       gallery_groups: Sequence[str] = GROUPS, per_group: int = 3,
                       skipped: Sequence[tuple[str, str]] = (("data/raw/TCGA_XX_0000_20000101", "unreadable TIFF"),),
                       with_arrays: bool = False, params: Params | None = None) -> FakeRun:
    """Write a consistent fake run under `root`; returns its paths.

    n_patients: at least 10 (every split needs patients with and without tumour).
    patient_ids: use these ids (e.g. a hostile one to test escaping) instead of generated ones.
    nan_metrics: blank out some metrics (nulls in JSON, empty cells in CSV) as degenerate runs do.
    gallery_groups: which of TP/FP/FN/TN get explanation images (leave one out to test a gap).
    with_arrays: also write the slice store arrays (uint8 images and labels, image_size px).
    """
    if n_patients < 10:
        raise ValueError("n_patients must be at least 10")
    root = Path(root)
    rng = np.random.default_rng(seed)
    params = params or fake_params(**{"data.source": source})
    spacing = (1.0, 1.0, 1.5) if source in ("brats2021", "decathlon") else None
    unit = "mm" if spacing else "px"
    voxel = float(np.prod(spacing)) if spacing else 1.0

    ids = list(patient_ids) if patient_ids is not None else _patient_ids(rng, n_patients)
    ids += _patient_ids(rng, n_patients - len(ids)) if len(ids) < n_patients else []
    patients = _patients(rng, ids[:n_patients])
    manifest = _manifest(rng, patients, slices_per_patient, image_size, source)

    slices_dir = root / "data" / "slices"
    split_csv = root / "data" / "split.csv"
    models_dir = root / "models"
    reports_dir = root / "reports"
    eval_dir = reports_dir / "eval"
    for d in (slices_dir, models_dir, eval_dir / "plots", eval_dir / "images"):
        d.mkdir(parents=True, exist_ok=True)

    manifest.to_csv(slices_dir / "manifest.csv", index=False)
    meta = {pid: {"source": "lgg" if source in ("demo", "lgg") else source, "channels": list(params.data.channels),
                  "spacing_mm": list(spacing) if spacing else None, "geometry": None,
                  "meta": {"institution": inst}, "stem": file_stem(pid)}
            for pid, inst in zip(patients.patient_id, patients.institution, strict=True)}
    (slices_dir / "patients.json").write_text(json.dumps(meta, indent=1))
    pd.DataFrame(list(skipped), columns=["path", "reason"]).to_csv(slices_dir / "skipped.csv", index=False)
    patients[["patient_id", "split"]].to_csv(split_csv, index=False)
    if with_arrays:
        _write_arrays(rng, manifest, slices_dir / "arrays", image_size)

    evaluated = manifest.merge(patients[["patient_id", "split"]], on="patient_id")
    evaluated = evaluated[evaluated.split.isin(["val", "test"])].reset_index(drop=True)
    evaluated = _score_slices(rng, evaluated)
    val = evaluated[evaluated.split == "val"]
    threshold = m.select_threshold(val.has_tumour.to_numpy(int), val.probability.to_numpy(), "youden")
    evaluated = _segment_slices(rng, evaluated, threshold)
    patient_table = _patient_table(rng, evaluated, unit, voxel)

    metrics: dict[str, Any] = {
        "classifier": {"pretrained": pretrained, "backbone": params.classifier.backbone,
                       "localisation_weight": params.classifier.localisation_weight},
        "threshold": {"rule": str(params.evaluate.threshold), "value": threshold, "chosen_on": "val",
                      "slice_score": params.evaluate.slice_score},
        "postprocessing": {"min_component_px": params.evaluate.min_component_px,
                           "keep_largest_component": params.evaluate.keep_largest_component is True,
                           "fill_holes": params.evaluate.fill_holes is True,
                           "seg_threshold": PIXEL_THRESHOLD if params.evaluate.seg_threshold in SEG_THRESHOLD_RULES
                           else params.evaluate.seg_threshold, "seg_threshold_rule": str(params.evaluate.seg_threshold),
                           "chosen_on": "val" if "auto" in (params.evaluate.keep_largest_component,
                                                            params.evaluate.fill_holes,
                                                            params.evaluate.seg_threshold) else "params"},
    }
    for name in ("val", "test"):
        s = evaluated[evaluated.split == name]
        p = patient_table[patient_table.split == name]
        metrics[name] = _split_metrics(rng, s, p, threshold, voxel)
        for kind, table in plot_tables(s).items():
            table.to_csv(eval_dir / "plots" / f"{kind}_{name}.csv", index=False)

    gallery, pointing = _gallery(rng, evaluated[evaluated.split == "test"], eval_dir / "images", image_size,
                                 gallery_groups, per_group)
    metrics["test"]["explain"] = pointing
    val_dice = metrics["val"]["cascade"]["dice_patient_mean"]  # a single split: its validation patients, one fold
    metrics["cross_validation"] = {"folds": 1, "dice_patient_mean_per_fold": [val_dice], "dice_patient_mean_sd": None,
                                   "dice_patient_mean_min": val_dice, "dice_patient_mean_max": val_dice,
                                   "auc_per_fold": [metrics["val"]["classifier"]["auc"]]}
    cases = _cases(rng, patient_table[patient_table.split == "test"], eval_dir / "images", image_size)

    if nan_metrics:
        _blank_metrics(metrics, patient_table, evaluated)
    evaluated.drop(columns=["_inter_seg", "_inter_cascade"]).to_csv(eval_dir / "slices.csv", index=False)
    patient_table.to_csv(eval_dir / "patients.csv", index=False)
    (eval_dir / "threshold.json").write_text(json.dumps({
        "rule": str(params.evaluate.threshold), "threshold": threshold, "chosen_on": "val",
        "slice_score": params.evaluate.slice_score,
        "val_sensitivity": metrics["val"]["classifier"]["sensitivity"],
        "val_specificity": metrics["val"]["classifier"]["specificity"]}, indent=2))
    (eval_dir / "gallery.json").write_text(json.dumps(gallery, indent=2))
    (eval_dir / "cases.json").write_text(json.dumps(cases, indent=2))
    schema.check(metrics, name="the fake metrics")
    (eval_dir / "metrics_full.json").write_text(json.dumps(_nulls(metrics), indent=2))
    (reports_dir / "metrics.json").write_text(json.dumps(_nulls(schema.headline(metrics)), indent=2))

    epochs = params.train.epochs
    clf_summary = _write_dvclive(rng, reports_dir / "train_classifier", epochs, "auc", ("loss", "auc", "accuracy"),
                                 params.train.lr, start=0.55 if not pretrained else 0.8)
    seg_epochs = max(1, round(epochs * params.segmenter.epochs_factor))
    seg_summary = _write_dvclive(rng, reports_dir / "train_segmenter", seg_epochs, "dice", ("loss", "dice", "iou"),
                                 params.train.lr, start=0.2)
    _write_sidecars(models_dir, params, pretrained, image_size, clf_summary, seg_summary)
    return FakeRun(root, reports_dir, eval_dir, slices_dir, split_csv, models_dir, params, metrics)


# --- patients and slices -------------------------------------------------------------------------

def _patient_ids(rng: np.random.Generator, n: int) -> list[str]:
    ids: set[str] = set()
    while len(ids) < n:
        inst = INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))]
        date = f"{int(rng.integers(1995, 2005))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        ids.add(f"TCGA_{inst}_{int(rng.integers(1000, 9999))}_{date}")
    return sorted(ids)


def _patients(rng: np.random.Generator, ids: list[str]) -> pd.DataFrame:
    """A table of patients: ~80% with tumour, split 60/20/20 within each stratum."""
    n = len(ids)
    order = rng.permutation(n)
    has_tumour = np.ones(n, bool)
    has_tumour[order[: max(3, n // 5)]] = False
    split = np.empty(n, object)
    pattern = ["val", "test", "train", "train", "train"]
    for flag in (True, False):
        members = [i for i in order if has_tumour[i] == flag]
        for k, i in enumerate(members):
            split[i] = pattern[k % len(pattern)]
    inst = [pid.split("_")[1] if pid.count("_") >= 2 else "" for pid in ids]
    return pd.DataFrame({"patient_id": ids, "split": split, "has_tumour": has_tumour, "institution": inst})


def _manifest(rng: np.random.Generator, patients: pd.DataFrame, n_slices: int, size: int,
              source: str) -> pd.DataFrame:
    rows = []
    area = size * size
    for pid, tumour in zip(patients.patient_id, patients.has_tumour, strict=True):
        n = int(rng.integers(max(4, n_slices - 4), n_slices + 5))
        positive = np.zeros(n, bool)
        pixels = np.zeros(n, int)
        if tumour:
            length = int(rng.integers(max(2, n // 5), max(3, n // 2)))
            start = int(rng.integers(1, max(2, n - length)))
            positive[start:start + length] = True
            profile = np.sin(np.linspace(0.15, math.pi - 0.15, length))
            pixels[start:start + length] = np.maximum(3, (profile * area * rng.uniform(0.02, 0.08))).astype(int)
        brain = (area * 0.45 * np.sin(np.linspace(0.3, math.pi - 0.3, n))).astype(int)
        for i in range(n):
            rows.append({"patient_id": pid, "slice_index": i, "slice_number": i + 1, "has_tumour": bool(positive[i]),
                         "tumour_pixels": int(pixels[i]), "brain_pixels": int(brain[i]),
                         "source": "lgg" if source in ("demo", "lgg") else source})
    return pd.DataFrame(rows)


def _score_slices(rng: np.random.Generator, s: pd.DataFrame) -> pd.DataFrame:
    """Classifier probabilities: high on big tumours, low on tumour-free slices, with overlap."""
    s = s.copy()
    size = s.tumour_pixels / max(1, s.tumour_pixels.max())
    logit = np.where(s.has_tumour, 0.6 + 3.0 * size, -2.2) + rng.normal(0, 1.2, len(s))
    s["probability"] = 1 / (1 + np.exp(-logit))
    return s


def _segment_slices(rng: np.random.Generator, s: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Segmenter and cascade predictions per slice, as pixel counts and Dice."""
    s = s.copy()
    s["predicted_positive"] = s.probability >= threshold
    t = s.tumour_pixels.to_numpy(float)
    size = t / max(1.0, t.max())
    dice = np.clip(rng.beta(9, 2, len(s)) * (0.55 + 0.45 * np.sqrt(size)), 0, 1)
    seg_pixels = np.where(s.has_tumour, np.round(t * rng.uniform(0.7, 1.3, len(s))),
                          np.where(rng.random(len(s)) < 0.2, rng.integers(5, 120, len(s)), 0)).astype(int)
    # the segmenter misses the smallest tenth of the tumours: slices the gate may pass with an empty mask
    missed = s.has_tumour.to_numpy() & (t <= np.percentile(t[t > 0], 10) if (t > 0).any() else False)
    seg_pixels[missed], dice[missed] = 0, 0.0
    cascade_pixels = np.where(s.predicted_positive, seg_pixels, 0)
    s["pred_pixels_cascade"] = cascade_pixels
    s["pred_pixels_segmenter"] = seg_pixels
    s["dice_segmenter"] = np.where(s.has_tumour, dice, np.nan)
    s["dice_cascade"] = np.where(s.has_tumour, np.where(s.predicted_positive, dice, 0.0),
                                 np.where(cascade_pixels > 0, 0.0, 1.0))
    s["_inter_seg"] = np.where(s.has_tumour, dice * (t + seg_pixels) / 2, 0.0)
    s["_inter_cascade"] = np.where(s.predicted_positive, s._inter_seg, 0.0)
    return s


def _patient_table(rng: np.random.Generator, s: pd.DataFrame, unit: str, voxel: float) -> pd.DataFrame:
    rows = []
    for pid, g in s.groupby("patient_id", sort=True):
        truth = g.tumour_pixels.sum()
        pred = g.pred_pixels_cascade.sum()
        seg = g.pred_pixels_segmenter.sum()
        has_tumour = bool(truth > 0)
        d_cascade = 2 * g._inter_cascade.sum() / (truth + pred) if truth + pred else 1.0
        d_seg = 2 * g._inter_seg.sum() / (truth + seg) if truth + seg else 1.0
        empty_pred = pred == 0
        hd = math.nan if (empty_pred or not has_tumour) else float(rng.gamma(2.0, 2.5) + 25 * (1 - d_cascade))
        fp_slices = int(((g.pred_pixels_cascade > 0) & ~g.has_tumour).sum())
        rows.append({
            "patient_id": pid, "split": g.split.iloc[0], "n_slices": len(g), "n_positive": int(g.has_tumour.sum()),
            "has_tumour": has_tumour, "max_probability": float(g.probability.max()),
            "predicted_positive": bool(g.predicted_positive.any()),
            "dice_cascade": float(d_cascade), "dice_segmenter_all": float(d_seg),
            "iou_cascade": float(d_cascade / (2 - d_cascade)), "hd95_cascade": hd, "hd95_unit": unit,
            "empty_pred": bool(empty_pred), "empty_truth": not has_tumour,
            "fp_slices": fp_slices if not has_tumour else 0,
            "fp_volume": float(pred * voxel) if not has_tumour else 0.0,
            "volume_unit": "mm3" if unit == "mm" else "px",
            "truth_volume": float(truth * voxel), "pred_volume": float(pred * voxel),
        })
    return pd.DataFrame(rows)


# --- metrics: the evaluation's own functions (pipeline.evaluation.metrics), as evaluate calls them ------------

def _split_metrics(rng: np.random.Generator, s: pd.DataFrame, p: pd.DataFrame, threshold: float,
                   voxel: float) -> dict[str, Any]:
    y, prob = s.has_tumour.to_numpy(int), s.probability.to_numpy()
    clf = {"auc": m.roc_auc(y, prob), **m.classification_summary(y, prob, threshold)}
    clf["auc_ci_low"], clf["auc_ci_high"] = m.bootstrap_auc_ci(y, prob, s.patient_id.to_numpy(), n_resamples=200,
                                                               seed=int(rng.integers(2**31)))
    clf["average_precision"] = m.pr_curve_points(y, prob)["average_precision"] if y.any() else math.nan
    clf["auc_classifier_alone"] = clf["auc"]  # the fake slice score is the classifier's probability
    py, pp = p.has_tumour.to_numpy(int), p.max_probability.to_numpy()
    patient = {"auc": m.roc_auc(py, pp), **m.classification_summary(py, pp, threshold)}
    positive = s[s.has_tumour]
    tumour, free = p[p.has_tumour], p[~p.has_tumour]
    free_slices = s[s.patient_id.isin(free.patient_id)]
    unit = p.hd95_unit.iloc[0] if len(p) else "px"
    cascade = _volume_summary(tumour.dice_cascade, tumour.hd95_cascade, int(tumour.empty_pred.sum()), len(free), unit)
    cascade.update(fp_slices_tumour_free=int(free.fp_slices.sum()), fp_volume_tumour_free=float(free.fp_volume.sum()))
    seg_hd = tumour.hd95_cascade * rng.uniform(1.0, 1.6, len(tumour))
    seg_all = _volume_summary(tumour.dice_segmenter_all, seg_hd, 0, len(free), unit)
    seg_all.update(fp_slices_tumour_free=int((free_slices.pred_pixels_segmenter > 0).sum()),
                   fp_volume_tumour_free=float(free_slices.pred_pixels_segmenter.sum() * voxel))
    return {
        "classifier": clf,
        "classifier_patient": patient,
        "cascade_slices": m.call_summary(y, s.pred_pixels_cascade.to_numpy() > 0),
        "segmenter": {"dice_slice_mean": float(positive.dice_segmenter.mean()),
                      "dice_slice_median": float(positive.dice_segmenter.median()),
                      "iou_slice_mean": float((positive.dice_segmenter / (2 - positive.dice_segmenter)).mean()),
                      "n_slices": len(positive)},
        "cascade": cascade,
        "segmenter_all_slices": seg_all,
    }


def _volume_summary(dice: pd.Series, hd: pd.Series, n_empty_pred: int, n_free: int, unit: str) -> dict[str, Any]:
    d = dice.to_numpy(float)
    h = hd.to_numpy(float)
    h = h[np.isfinite(h)]
    out = {"dice_patient_mean": float(np.mean(d)), "dice_patient_median": float(np.median(d)),
           "dice_patient_std": float(np.std(d, ddof=1)) if len(d) > 1 else math.nan}
    out.update({f"dice_patient_p{q}": float(np.percentile(d, q)) for q in (5, 25, 75, 95)})
    out.update({
        "hd95_mean": float(np.mean(h)) if len(h) else math.nan, "hd95_median": float(np.median(h)) if len(h) else math.nan,
        "hd95_unit": unit, "hd95_n_empty_pred": n_empty_pred, "hd95_n_nan": int(len(hd) - len(h)),
        "n_patients": len(d), "n_tumour_free_patients": n_free, "volume_unit": "mm3" if unit == "mm" else "px",
    })
    return out


def _blank_metrics(metrics: dict[str, Any], patients: pd.DataFrame, slices: pd.DataFrame) -> None:
    """Degenerate values as a tiny or one-class split produces them."""
    test = metrics["test"]
    test["classifier"].update(auc_ci_low=math.nan, auc_ci_high=math.nan, brier=math.nan)
    test["classifier_patient"].update(auc=math.nan, ppv=math.nan, npv=math.nan)
    test["cascade"].update(hd95_mean=math.nan, hd95_median=math.nan, dice_patient_p5=math.nan)
    test["explain"].update(pointing_game=math.nan, pointing_game_n=0)
    patients.loc[patients.index[::3], "hd95_cascade"] = math.nan
    patients.loc[patients.index[::4], "dice_segmenter_all"] = math.nan
    slices.loc[slices.index[::5], "dice_cascade"] = math.nan


def _nulls(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --- images ----------------------------------------------------------------------------------------

def _synthetic_slice(rng: np.random.Generator, size: int, tumour: bool) -> tuple[np.ndarray, np.ndarray]:
    """A brain-like uint8 [H, W, 3] image and a uint8 [H, W] tumour mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    brain = ((xx - 0.5) / 0.36) ** 2 + ((yy - 0.5) / 0.42) ** 2 <= 1
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 24)
    base = np.clip(0.45 + 0.25 * noise / (np.abs(noise).max() + 1e-6) - 0.2 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2), 0, 1)
    mask = np.zeros((size, size), np.uint8)
    if tumour:
        cx, cy = rng.uniform(0.35, 0.65, 2)
        axes = (int(size * rng.uniform(0.06, 0.13)), int(size * rng.uniform(0.05, 0.11)))
        cv2.ellipse(mask, (int(cx * size), int(cy * size)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        mask &= brain.astype(np.uint8)
    image = np.zeros((size, size, 3), np.float32)
    for c, gain in enumerate((0.9, 1.0, 0.8)):
        image[..., c] = base * gain + (0.35 if c == 1 else 0.15) * mask
    image = (np.clip(image, 0, 1) * 255 * brain[..., None]).astype(np.uint8)
    return image, mask


def _png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    path.write_bytes(data.tobytes())


def _overlay(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 0.55, colour, 0.45, 0)


def _explanations(rng: np.random.Generator, size: int, tumour: bool, hit: bool) -> tuple[np.ndarray, np.ndarray]:
    image, mask = _synthetic_slice(rng, size, tumour)
    gray = image[..., 1]
    yy, xx = np.mgrid[0:size, 0:size]
    if tumour and hit:
        cy, cx = np.argwhere(mask).mean(axis=0) if mask.any() else (size / 2, size / 2)
    else:
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
    heat = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
    gradcam = _overlay(gray, heat)
    ig = np.abs(rng.normal(0, 1, (size, size))) * (0.3 + heat) * (gray > 0)
    ig = cv2.GaussianBlur(ig.astype(np.float32), (0, 0), 1.0)
    return gradcam, _overlay(gray, ig / (ig.max() + 1e-6))


def _gallery(rng: np.random.Generator, test: pd.DataFrame, images: Path, size: int, groups: Sequence[str],
             per_group: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    y, pred = test.has_tumour.to_numpy(bool), test.predicted_positive.to_numpy(bool)
    which = {"TP": y & pred, "FP": ~y & pred, "FN": y & ~pred, "TN": ~y & ~pred}
    entries, hits = [], []
    for group in GROUPS:
        if group not in groups:
            continue
        rows = test[which[group]]
        rows = rows.sample(n=min(per_group, len(rows)), random_state=int(rng.integers(1 << 31))) if len(rows) else rows
        for row in rows.itertuples():
            hit = bool(rng.random() < 0.75) if row.has_tumour else None
            gradcam, ig = _explanations(rng, size, bool(row.has_tumour), bool(hit))
            stem = f"{file_stem(row.patient_id)}_{row.slice_index:03d}"
            _png(images / f"gradcam_{stem}.png", gradcam)
            _png(images / f"ig_{stem}.png", ig)
            if hit is not None:
                hits.append(hit)
            entries.append({"group": group, "patient_id": row.patient_id, "slice_index": int(row.slice_index),
                            "probability": float(row.probability), "has_tumour": bool(row.has_tumour),
                            "gradcam_png": f"eval/images/gradcam_{stem}.png", "ig_png": f"eval/images/ig_{stem}.png",
                            "pointing_hit": hit})
    cells = max(2, size // 32)
    pointing = {"pointing_game": float(np.mean(hits)) if hits else math.nan, "pointing_game_n": len(hits),
                "pointing_game_chance": 1 / cells, "pointing_game_tolerance_px": size / cells / 2,
                "gradcam_grid": [cells, cells]}
    return entries, pointing


def _cases(rng: np.random.Generator, patients: pd.DataFrame, images: Path, size: int) -> list[dict[str, Any]]:
    tumour = patients[patients.has_tumour].sort_values("dice_cascade", ascending=False).reset_index(drop=True)
    if tumour.empty:
        return []
    picks = {"best": 0, "median": len(tumour) // 2, "worst": len(tumour) - 1}
    out = []
    for rank, i in picks.items():
        row = tumour.iloc[i]
        image, mask = _synthetic_slice(rng, size, True)
        pred = cv2.dilate(mask, np.ones((3, 3), np.uint8)) if rank != "worst" else np.roll(mask, size // 10, axis=1)
        truth_view, pred_view = image.copy(), image.copy()
        truth_view[mask > 0] = (0.5 * truth_view[mask > 0] + [0, 127, 0]).astype(np.uint8)
        pred_view[pred > 0] = (0.5 * pred_view[pred > 0] + [0, 0, 127]).astype(np.uint8)
        name = f"case_{rank}_{file_stem(row.patient_id)}.png"
        _png(images / name, np.hstack([image, truth_view, pred_view]))
        out.append({"rank": rank, "patient_id": row.patient_id, "dice": float(row.dice_cascade),
                    "slice_index": int(rng.integers(0, max(1, row.n_slices))), "png": f"eval/images/{name}"})
    return out


def _write_arrays(rng: np.random.Generator, manifest: pd.DataFrame, out: Path, size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for pid, g in manifest.groupby("patient_id"):
        pairs = [_synthetic_slice(rng, size, bool(t)) for t in g.has_tumour]
        np.save(out / f"{file_stem(pid)}.image.npy", np.stack([p[0] for p in pairs]))
        np.save(out / f"{file_stem(pid)}.labels.npy", np.stack([p[1] for p in pairs]))


# --- training logs and sidecars --------------------------------------------------------------------

def _write_dvclive(rng: np.random.Generator, out: Path, epochs: int, monitor: str, names: Sequence[str],
                   lr: float, start: float) -> dict[str, Any]:
    """dvclive layout: plots/metrics/{train,val}/<name>.tsv, learning_rate.tsv, metrics.json."""
    t = np.arange(epochs)
    progress = 1 - np.exp(-t / max(1.0, epochs / 3))
    final: dict[str, dict[str, float]] = {"train": {}, "val": {}}
    history: dict[str, np.ndarray] = {}
    for split, gap in (("train", 0.0), ("val", 0.06)):
        for name in names:
            if name == "loss":
                v = 0.7 - 0.55 * progress + gap * progress + rng.normal(0, 0.02, epochs)
            else:
                v = start + (0.97 - start) * progress - gap * progress + rng.normal(0, 0.015, epochs)
                v = np.clip(v, 0, 1)
            history[f"{split}/{name}"] = v
            final[split][name] = float(v[-1])
            d = out / "plots" / "metrics" / split
            d.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"step": t, name: v}).to_csv(d / f"{name}.tsv", sep="\t", index=False)
    lrs = lr * 0.5 ** (t // max(2, epochs // 3))
    pd.DataFrame({"step": t, "learning_rate": lrs}).to_csv(out / "plots" / "metrics" / "learning_rate.tsv",
                                                         sep="\t", index=False)
    best = int(np.argmax(history[f"val/{monitor}"]))
    summary = {"best_epoch": best + 1, f"best_val_{monitor}": float(history[f"val/{monitor}"][best]),
               "epochs_trained": epochs, "train_images_per_s": float(rng.uniform(5, 15))}
    (out / "metrics.json").write_text(json.dumps({**final, "learning_rate": float(lrs[-1]), "step": epochs - 1,
                                                  **summary}, indent=4))
    return summary


def _write_sidecars(models: Path, params: Params, pretrained: bool, size: int, clf: dict[str, Any],
                    seg: dict[str, Any]) -> None:
    classifier = {
        "kind": "classifier", "input_size": size, "channels": list(params.data.channels),
        "preprocessing": "resnet50.preprocess_input (caffe)", "backbone": params.classifier.backbone,
        "last_conv_layer": "conv5_block3_out", "pretrained": pretrained,
        "weights_source": "imagenet" if pretrained else "random init (ImageNet weights unavailable)",
        "threshold": None, "training": {**clf, "pretrained": pretrained},
        "params": {"classifier": dataclasses.asdict(params.classifier)},
    }
    segmenter = {
        "kind": "segmenter", "input_size": size, "channels": list(params.data.channels),
        "arch": params.segmenter.arch, "architecture": SEGMENTERS[params.segmenter.arch].description,
        "filters": list(params.segmenter.filters), "loss": params.segmenter.loss, "threshold": PIXEL_THRESHOLD, "training": {**seg, "parameters": 2_100_000},
        "params": {"segmenter": dataclasses.asdict(params.segmenter)},
    }
    (models / "classifier.json").write_text(json.dumps(classifier, indent=2))
    (models / "segmenter.json").write_text(json.dumps(segmenter, indent=2))
