"""The keys of evaluate's metrics files, defined once, each with a one-line description.

- ``METRICS``: ``reports/eval/metrics_full.json``, everything `evaluate` measures, nested;
- ``HEADLINE``: ``reports/metrics.json``, the DVC metrics file (``dvc exp show``, ``dvc metrics diff``):
  a few figures, flat, each a path into METRICS: the validation (out-of-fold) AUC and Dice, then the test split's;
- ``REGION_METRICS``: ``reports/eval/regions.json``, per-region figures, written with data.target "regions" only.

`evaluate` checks what it writes against these (``check``), the report reads the full file, the test
fixtures write through ``check`` too, and docs/outputs.md's metrics section is generated from here
(``pipeline.evaluation.schema_docs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.regions import REGIONS


@dataclass(frozen=True)
class Group:
    """A JSON object: its description and its keys (a leaf's value is its description)."""

    doc: str
    keys: dict[str, str | Group] = field(default_factory=dict)


_RATES = {
    "auc": "area under the ROC curve (null with one class only)",
    "accuracy": "fraction classified correctly at the threshold",
    "sensitivity": "recall, TP / (TP + FN)",
    "specificity": "TN / (TN + FP)",
    "ppv": "precision, TP / (TP + FP)",
    "npv": "TN / (TN + FN)",
    "f1": "2TP / (2TP + FP + FN)",
    "prevalence": "fraction positive",
    "brier": "mean squared error of the slice score (the probability, at patient level its maximum)",
    "threshold": "the operating point applied (= threshold.value)",
    "n": "slices scored (patients, at patient level)",
    "n_positive": "of them with tumour",
    "tp": "true positives",
    "fp": "false positives",
    "fn": "false negatives",
    "tn": "true negatives",
}
CLASSIFIER_SLICES = Group("slice-level tumour-presence metrics of the gate score (threshold.slice_score) at the "
                          "threshold", {
    **_RATES,
    "auc_classifier_alone": "the AUC of the classifier's own probability (= auc when threshold.slice_score is "
                            "classifier)",
    "auc_ci_low": "95% patient-bootstrap CI of the AUC, lower end",
    "auc_ci_high": "95% patient-bootstrap CI of the AUC, upper end",
    "average_precision": "area under the precision-recall curve",
})
_CALL_KEYS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "prevalence", "n", "n_positive",
              "tp", "fp", "fn", "tn")
CASCADE_SLICES = Group("slice-level tumour calls of the cascade's output, what `predict` reports per slice: a slice "
                       "is called tumour when its final mask (gated and post-processed) is not empty. With a low "
                       "gate threshold (evaluate.threshold patient_dice) these differ from the gate's "
                       "(classifier): the segmenter finds nothing on many slices the gate passes",
                       {k: _RATES[k] for k in _CALL_KEYS})
CLASSIFIER_PATIENTS = Group("patient-level tumour-presence metrics: a patient is positive when any slice is, its score "
                            "is its maximum slice score", dict(_RATES))
SEGMENTER = Group("the segmenter alone, on the tumour slices", {
    "dice_slice_mean": "mean Dice over tumour slices",
    "dice_slice_median": "median Dice over tumour slices",
    "iou_slice_mean": "mean IoU over tumour slices",
    "n_slices": "tumour slices scored",
})
VOLUME = Group("3-D masks per patient: Dice over patients with tumour, false positives in tumour-free ones", {
    **{f"dice_patient_{s}": f"per-patient Dice, {name}" for s, name in (
        ("mean", "mean"), ("median", "median"), ("std", "standard deviation"), ("p5", "5th percentile"),
        ("p25", "25th percentile"), ("p75", "75th percentile"), ("p95", "95th percentile"))},
    "hd95_mean": "95th-percentile Hausdorff distance, mean over patients where it is defined",
    "hd95_median": "95th-percentile Hausdorff distance, median over patients where it is defined",
    "hd95_unit": '"mm" when the voxel size is known, else "px"',
    "hd95_n_empty_pred": "patients with tumour and an empty predicted mask",
    "hd95_n_nan": "patients with tumour whose HD95 is undefined (left out of hd95_mean and hd95_median)",
    "n_patients": "patients with tumour",
    "n_tumour_free_patients": "patients without tumour",
    "fp_slices_tumour_free": "slices with predicted tumour in the tumour-free patients",
    "fp_volume_tumour_free": "predicted tumour volume in the tumour-free patients, in volume_unit",
    "volume_unit": '"mm3" when the voxel size is known, else "px" (voxels)',
})
EXPLAIN = Group("Grad-CAM pointing game over the tumour test slices", {
    "pointing_game": "fraction of slices whose Grad-CAM peak lies within the tolerance of the tumour",
    "pointing_game_n": "slices played",
    "pointing_game_chance": "the score of a random Grad-CAM cell",
    "pointing_game_tolerance_px": "the tolerance, half a Grad-CAM cell (px)",
    "gradcam_grid": "[rows, cols] of the Grad-CAM map",
})
SPLIT = Group("metrics of the validation patients (split.folds > 1: every non-test patient, out of fold: scored by "
              "the fold models that did not train on it)", {
    "classifier": CLASSIFIER_SLICES,
    "classifier_patient": CLASSIFIER_PATIENTS,
    "cascade_slices": CASCADE_SLICES,
    "segmenter": SEGMENTER,
    "cascade": Group(f"the classifier-gated segmenter: {VOLUME.doc}", VOLUME.keys),
    "segmenter_all_slices": Group(f"the segmenter on every slice, no gate: {VOLUME.doc}", VOLUME.keys),
})
METRICS = Group("every metric of `evaluate`; a value is null where it is undefined (NaN)", {
    "classifier": Group("the classifier evaluated", {
        "pretrained": "whether it started from ImageNet weights",
        "backbone": "its backbone (classifier.backbone)",
        "localisation_weight": "classifier.localisation_weight it was trained with: > 0 means its last conv map (the "
                               "one Grad-CAM explains) was also taught which cells of the training slices hold tumour",
    }),
    "threshold": Group("the classifier gate", {
        "rule": "evaluate.threshold, the rule that chose it",
        "value": "the threshold on the slice score",
        "slice_score": 'evaluate.slice_score, what the gate thresholds: "classifier" (its probability) or "cascade" '
                       "(the classifier's probability times the segmenter's highest pixel probability on the slice)",
        "chosen_on": '"val": chosen on the validation patients only; "oof" (split.folds > 1): on the out-of-fold '
                     'predictions of every non-test patient',
    }),
    "postprocessing": Group("post-processing of the predicted masks", {
        "min_component_px": "evaluate.min_component_px",
        "keep_largest_component": "whether only the largest 3-D connected component of each patient's mask "
                                  "is kept (evaluate.keep_largest_component; auto: chosen on validation)",
        "fill_holes": "whether the holes each slice's mask encloses are filled, after the components "
                      "(evaluate.fill_holes; auto: chosen on validation)",
        "seg_threshold": "the segmenter's pixel threshold: a pixel is tumour at or above this probability",
        "seg_threshold_rule": 'evaluate.seg_threshold: "trained" (the one the segmenter was trained with), "auto" '
                              "(chosen with the gate on validation: the highest validation mean per-patient Dice) "
                              "or the number given",
        "chosen_on": '"val" (or "oof" with folds) when evaluate.keep_largest_component, evaluate.fill_holes or '
                     "evaluate.seg_threshold is auto (the highest validation mean per-patient Dice at the chosen "
                     'gate), else "params"',
    }),
    "cross_validation": Group("the spread of the validation (out-of-fold) figures over the folds: each fold's "
                              "patients scored by that fold's models, at the one gate and post-processing", {
        "folds": "split.folds: models of each kind (1: a single train/val split, its validation patients one fold)",
        "dice_patient_mean_per_fold": "per fold, the mean per-patient cascade Dice over its patients with tumour",
        "dice_patient_mean_sd": "their standard deviation over folds (null with one fold)",
        "dice_patient_mean_min": "the lowest fold's",
        "dice_patient_mean_max": "the highest fold's",
        "auc_per_fold": "per fold, the slice-level AUC of the gate's slice score over its patients",
    }),
    "val": SPLIT,
    "test": Group("metrics of the test patients (split.folds > 1: scored by the ensemble, the mean of the folds' "
                  "probabilities; every value null when there is no test split, split.test 0 with folds)", {
        **SPLIT.keys, "explain": EXPLAIN}),
})

REGION = Group("one region's nested cascade masks (whole-tumour gate and post-processing) against the reference", {
    "dice_slice_mean": "mean Dice over the slices where the reference has the region",
    "dice_patient_mean": "per-patient 3-D Dice, mean over patients with the region",
    "dice_patient_median": "per-patient 3-D Dice, median over patients with the region",
    "hd95_mean": "95th-percentile Hausdorff distance, mean over patients with the region where it is defined",
    "hd95_median": "95th-percentile Hausdorff distance, median over those patients",
    "hd95_unit": '"mm" when the voxel size is known, else "px"',
    "sensitivity_mean": "voxel sensitivity TP / (TP + FN), mean over patients with the region",
    "specificity_mean": "voxel specificity TN / (TN + FP) over the stored slices, mean over every patient",
    "volume_error_mean": "predicted minus reference volume, mean over patients with the region, in volume_unit",
    "volume_error_abs_mean": "absolute volume error, mean over patients with the region, in volume_unit",
    "volume_unit": '"ml" when the voxel size is known, else "px" (voxels)',
    "n_patients": "patients with the region",
    "n_slices": "slices with the region",
})
# reports/eval/regions.json (data.target "regions" only): a group per split, a REGION per region of pipeline.data.regions.
REGION_METRICS = Group("per-region metrics of a segmenter with one output per region (data.target: regions)", {
    split: Group(f"the {name} patients, a group per region", {region: REGION for region in REGIONS})
    for split, name in (("val", "validation"), ("test", "test"))
})

# Headline key -> its path in METRICS. Short keys: `dvc exp show` must fit a 160-column terminal. The val_ figures
# are the ones to choose a setting by (out of fold with split.folds > 1); the others are the test split's.
HEADLINE = {
    "val_auc": "val.classifier.auc",
    "val_dice_mean": "val.cascade.dice_patient_mean",
    "auc": "test.classifier.auc",
    "auc_classifier_alone": "test.classifier.auc_classifier_alone",
    "sensitivity": "test.cascade_slices.sensitivity",
    "specificity": "test.cascade_slices.specificity",
    "dice_mean": "test.cascade.dice_patient_mean",
    "dice_median": "test.cascade.dice_patient_median",
    "hd95_median": "test.cascade.hd95_median",
}


class SchemaError(ValueError):
    """Metrics whose keys differ from the schema."""


def leaf_paths(schema: Group, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf of `schema`, in definition order."""
    out = []
    for key, spec in schema.keys.items():
        path = f"{prefix}{key}"
        out += leaf_paths(spec, f"{path}.") if isinstance(spec, Group) else [path]
    return out


def value_paths(metrics: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf of a metrics dict (a list value is a leaf)."""
    out = []
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        out += value_paths(value, f"{path}.") if isinstance(value, Mapping) else [path]
    return out


def check(metrics: Mapping[str, Any], schema: Group = METRICS, name: str = "metrics") -> None:
    """Raise SchemaError unless `metrics` has exactly the keys of `schema` (values are not checked)."""
    have, want = value_paths(metrics), leaf_paths(schema)
    missing = [p for p in want if p not in set(have)]
    unexpected = [p for p in have if p not in set(want)]
    if missing or unexpected:
        raise SchemaError(f"{name} do not match pipeline/evaluation/schema.py: missing {missing or 'none'}, "
                          f"not in the schema {unexpected or 'none'}")


def lookup(metrics: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path."""
    value: Any = metrics
    for key in path.split("."):
        value = value[key]
    return value


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of full metrics (checked against METRICS first)."""
    check(metrics)
    return {key: lookup(metrics, path) for key, path in HEADLINE.items()}


def blank(schema: Group) -> dict[str, Any]:
    """A metrics dict with exactly the keys of `schema`, every value None (null): a split with no patients."""
    return {key: blank(spec) if isinstance(spec, Group) else None for key, spec in schema.keys.items()}


def describe(path: str, schema: Group = METRICS) -> str:
    """The description of a dotted path of `schema`."""
    spec: str | Group = schema
    for key in path.split("."):
        spec = spec.keys[key]  # type: ignore[union-attr]
    return spec.doc if isinstance(spec, Group) else spec
