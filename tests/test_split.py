"""The split is by patient: no patient in two splits, every slice accounted for, deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.params import SplitParams
from pipeline.split import assign_splits, patient_table, read_split, split_manifest


def fake_manifest(n_patients: int = 40, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    rows, meta = [], {}
    for p in range(n_patients):
        pid = f"TCGA_{'ABCD'[p % 4]}{'ABCD'[p % 4]}_{p:04d}_20000101"
        n = int(rng.integers(10, 30))
        burden = 0 if p % 7 == 0 else int(rng.integers(1, 2000))
        positive = rng.random(n) < (0.35 if burden else 0)
        rows.append(pd.DataFrame({
            "patient_id": pid, "slice_index": np.arange(n), "has_tumour": positive,
            "tumour_pixels": np.where(positive, burden, 0),
        }))
        meta[pid] = {"meta": {"institution": "ABCD"[p % 4] * 2}}
    return pd.concat(rows, ignore_index=True), meta


def test_patients_never_in_two_splits_and_slices_add_up():
    manifest, meta = fake_manifest()
    split = assign_splits(patient_table(manifest, meta), SplitParams(0.6, 0.2, 0.2, seed=1))
    assert not split.patient_id.duplicated().any()
    assert set(split.patient_id) == set(manifest.patient_id)
    joined = split_manifest(manifest, split)
    assert len(joined) == len(manifest)
    # every slice of a patient is in that patient's split
    assert (joined.groupby("patient_id").split.nunique() == 1).all()
    counts = joined.split.value_counts()
    assert counts.sum() == len(manifest)
    sizes = split.split.value_counts()
    assert sizes["train"] == 24 and sizes["val"] == 8 and sizes["test"] == 8


def test_split_is_stratified_and_seeded():
    manifest, meta = fake_manifest()
    table = patient_table(manifest, meta)
    a = assign_splits(table, SplitParams(0.6, 0.2, 0.2, seed=3))
    b = assign_splits(table, SplitParams(0.6, 0.2, 0.2, seed=3))
    c = assign_splits(table, SplitParams(0.6, 0.2, 0.2, seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    merged = a.merge(table, on="patient_id")
    for name in ("val", "test"):  # tumour-free and tumour patients reach every split
        burdens = set(merged[merged.split == name].burden)
        assert {"none", "low", "high"} <= burdens


def test_tiny_cohort_still_gets_val_and_test():
    manifest, meta = fake_manifest(n_patients=3)
    split = assign_splits(patient_table(manifest, meta), SplitParams(0.8, 0.1, 0.1, seed=0))
    assert sorted(split.split) == ["test", "train", "val"]


def test_read_split_rejects_a_patient_in_two_splits(tmp_path):
    path = tmp_path / "split.csv"
    pd.DataFrame({"patient_id": ["a", "a"], "split": ["train", "test"]}).to_csv(path, index=False)
    with pytest.raises(Exception, match="one row per patient"):
        read_split(str(path))
