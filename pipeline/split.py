"""Patient-level train/val/test split, stratified by tumour burden (and institution when possible).

Every slice of a patient goes where the patient goes: the split is a table of patients, never of
slices. ``assign_splits`` is deterministic for a given seed.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.params import SplitParams

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def patient_table(manifest: pd.DataFrame, patients_meta: dict | None = None) -> pd.DataFrame:
    """One row per patient: n_slices, n_positive, tumour_pixels, burden (none/low/high), institution."""
    table = manifest.groupby("patient_id", sort=True).agg(
        n_slices=("slice_index", "size"),
        n_positive=("has_tumour", "sum"),
        tumour_pixels=("tumour_pixels", "sum"),
    ).reset_index()
    positive = table.tumour_pixels > 0
    median = table.loc[positive, "tumour_pixels"].median() if positive.any() else 0
    table["burden"] = np.where(~positive, "none", np.where(table.tumour_pixels <= median, "low", "high"))
    institutions = {pid: (m.get("meta") or {}).get("institution") for pid, m in (patients_meta or {}).items()}
    table["institution"] = table.patient_id.map(institutions).fillna("")
    return table


def assign_splits(patients: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    """Assign each patient to train/val/test.

    patients: a ``patient_table`` (columns patient_id, burden, institution).
    Strata are burden x institution when every such stratum has at least 3 patients, else burden.
    Within the stratified, seeded order each patient goes to the split furthest below its
    target fraction, so every stratum is spread over the splits in proportion.
    Returns columns patient_id, split.
    """
    n = len(patients)
    if n < 3:
        raise InputError("data/slices", f"only {n} patients: a train/val/test split needs at least 3")
    rng = np.random.default_rng(params.seed)
    strata = patients.burden.astype(str)
    with_inst = strata + "/" + patients.institution.astype(str)
    if patients.institution.astype(bool).all() and with_inst.value_counts().min() >= 3:
        strata = with_inst
    order: list[int] = []
    for _, group in sorted(patients.groupby(strata).groups.items()):
        idx = np.array(sorted(group))
        order.extend(rng.permutation(idx).tolist())
    targets = np.array([params.train, params.val, params.test])
    counts = np.zeros(3)
    split = np.empty(n, dtype=object)
    for k, i in enumerate(order, start=1):
        j = int(np.argmax(targets * k - counts))
        split[i] = SPLITS[j]
        counts[j] += 1
    # Guarantee a non-empty val and test split for small cohorts when the fraction asks for one.
    for j, name in enumerate(SPLITS[1:], start=1):
        if targets[j] > 0 and counts[j] == 0:
            donor = order[-1] if split[order[-1]] == "train" else next(i for i in reversed(order) if split[i] == "train")
            split[donor] = name
            counts[j] += 1
            counts[0] -= 1
    result = pd.DataFrame({"patient_id": patients.patient_id.values, "split": split})
    for name in SPLITS:
        log.info("%s: %d patients", name, int((result.split == name).sum()))
    return result


def split_manifest(manifest: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """The manifest with a `split` column joined by patient (every slice follows its patient)."""
    merged = manifest.merge(split, on="patient_id", how="left", validate="many_to_one")
    missing = merged.split.isna()
    if missing.any():
        raise InputError("data/split.csv", f"no split for patient(s) {sorted(merged.patient_id[missing].unique())[:5]}")
    return merged


def read_split(path: str = "data/split.csv") -> pd.DataFrame:
    """Read split.csv (columns patient_id, split) and check it is a partition of patients."""
    try:
        split = pd.read_csv(path, dtype={"patient_id": str})
    except FileNotFoundError:
        raise InputError(path, "no split file; run `python -m pipeline split` first") from None
    if set(split.columns) != {"patient_id", "split"} or split.patient_id.duplicated().any():
        raise InputError(path, "must have columns patient_id, split and one row per patient")
    bad = set(split.split) - set(SPLITS)
    if bad:
        raise InputError(path, f"unknown split name(s) {sorted(bad)}")
    return split
