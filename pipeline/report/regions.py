"""The report's "Regions" section (data.target "regions" only): one table per region side by side, test and
validation figures from eval/regions.json, and the region overlays of eval/region_cases.json."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.report.formatting import MISSING, count, num
from pipeline.report.inputs import ReportInputs, reported_splits

# (key in a region's figures, row label, decimals; None: a count)
_ROWS = (
    ("dice_slice_mean", "Dice per slice, mean", 3),
    ("dice_patient_mean", "Dice per patient, mean", 3),
    ("dice_patient_median", "Dice per patient, median", 3),
    ("hd95_median", "HD95, median ({hd})", 1),
    ("sensitivity_mean", "Sensitivity (voxels), mean", 3),
    ("specificity_mean", "Specificity (voxels), mean", 4),
    ("volume_error_mean", "Volume error, mean ({vol})", 2),
    ("volume_error_abs_mean", "Volume error, |mean| ({vol})", 2),
    ("n_patients", "Patients with the region", None),
)


def regions_section(inputs: ReportInputs, images: Callable[[Any], str | None]) -> dict[str, Any] | None:
    """Template values of the section; None when the run has no per-region metrics (data.target whole_tumour)."""
    shown = reported_splits(inputs.metrics)  # no test split: the out-of-fold figures alone
    columns = [inputs.region_metrics.get(split) or {} for split in shown]
    if not all(isinstance(c, Mapping) for c in columns) or not columns[0]:
        return None
    tables = []
    for region, figures in columns[0].items():
        beside = [c.get(region, {}) for c in columns[1:]]
        units = {"hd": figures.get("hd95_unit", "px"), "vol": figures.get("volume_unit", "px")}
        rows = [{"label": label.format(**units),
                 "cells": [count(d.get(key)) if digits is None else num(d.get(key), digits) for d in (figures, *beside)]}
                for key, label, digits in _ROWS]
        tables.append({"region": region, "name": region.replace("_", " "), "rows": rows})
    cases = [{"rank": str(c.get("rank", "")).capitalize(), "patient_id": str(c.get("patient_id", MISSING)),
              "dice": ", ".join(f"{r.replace('_', ' ')} {num(d)}" for r, d in (c.get("dice") or {}).items()),
              "png": images(c.get("png"))} for c in inputs.region_cases if isinstance(c, Mapping)]
    return {"tables": tables, "cases": cases,
            "columns": ["test", "validation"] if len(shown) == 2 else ["out of fold (no test split)"],
            "patients": "test patients" if len(shown) == 2 else "out-of-fold patients"}
