"""The split is by patient: no patient in two splits, every slice accounted for, deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.data.split import (
    assign_splits,
    check_patients_together,
    patient_table,
    read_split,
    read_split_file,
    split_manifest,
)
from pipeline.errors import InputError
from pipeline.params import SplitParams


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


def fake_rescans(n_patients: int = 30, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """``fake_manifest`` where every third patient has a second scan (``..._20050505``) and every
    ninth a third (``..._20090909``), as kaggle_3m folders of one TCGA_<site>_<patient> on other dates."""
    manifest, meta = fake_manifest(n_patients, seed)
    for pid in meta:
        meta[pid]["meta"]["patient"] = pid.rsplit("_", 1)[0]
    extra = []
    for k, pid in enumerate(sorted(meta)):
        for date in ("20050505", "20090909")[: (k % 3 == 0) + (k % 9 == 0)]:
            rescan = f"{pid.rsplit('_', 1)[0]}_{date}"
            rows = manifest[manifest.patient_id == pid].assign(patient_id=rescan)
            rows["tumour_pixels"] = rows.tumour_pixels * (3 if date == "20050505" else 0)  # burden differs by scan
            rows["has_tumour"] = rows.tumour_pixels > 0
            extra.append(rows)
            meta[rescan] = {"meta": {**meta[pid]["meta"]}}
    return pd.concat([manifest, *extra], ignore_index=True), meta


def test_scans_of_one_patient_always_share_a_split():
    manifest, meta = fake_rescans()
    cases = patient_table(manifest, meta)
    assert len(cases) == 44 and cases.patient.nunique() == 30  # 10 second and 4 third scans
    for seed in range(10):
        split = assign_splits(cases, SplitParams(0.6, 0.2, 0.2, seed=seed))
        assert sorted(split.patient_id) == sorted(cases.patient_id)  # split.csv stays keyed on the case id
        joined = split.merge(cases[["patient_id", "patient"]], on="patient_id")
        assert (joined.groupby("patient").split.nunique() == 1).all(), seed
        check_patients_together(split, cases, "data/split.csv")
        sizes = joined.drop_duplicates("patient").split.value_counts()  # fractions count patients, not scans
        assert (sizes["train"], sizes["val"], sizes["test"]) == (18, 6, 6), seed


def test_case_without_patient_meta_is_its_own_patient():
    """BraTS / Decathlon cases (and stores written before meta["patient"]): the case id is the patient."""
    manifest, meta = fake_manifest(n_patients=12)
    cases = patient_table(manifest, meta)
    assert (cases.patient == cases.patient_id).all()
    split = assign_splits(cases, SplitParams(0.6, 0.2, 0.2, seed=5))
    pd.testing.assert_frame_equal(split, assign_splits(cases.drop(columns="patient"), SplitParams(0.6, 0.2, 0.2, seed=5)))


def test_check_patients_together_names_the_patient_and_its_scans():
    manifest, meta = fake_rescans(n_patients=9)
    cases = patient_table(manifest, meta)
    split = assign_splits(cases, SplitParams(0.6, 0.2, 0.2, seed=0))
    first, second = "TCGA_AA_0000_20000101", "TCGA_AA_0000_20050505"
    split.loc[split.patient_id == first, "split"] = "train"
    split.loc[split.patient_id == second, "split"] = "test"
    with pytest.raises(InputError, match="scans of one patient TCGA_AA_0000 are in different splits") as e:
        check_patients_together(split, cases, "splits.csv")
    assert f"{first} (train)" in str(e.value) and f"{second} (test)" in str(e.value)


# --- split.file: the split from a user's CSV ----------------------------------------------------

def write_split_file(path, split: pd.DataFrame) -> str:
    split.to_csv(path, index=False)
    return str(path)


@pytest.fixture
def rescanned() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cases, a valid split of them) for 12 patients, some with two or three scans."""
    manifest, meta = fake_rescans(n_patients=12)
    cases = patient_table(manifest, meta)
    return cases, assign_splits(cases, SplitParams(0.5, 0.25, 0.25, seed=1))


def test_split_file_is_used_as_given(tmp_path, rescanned):
    cases, split = rescanned
    given = split.assign(split=np.where(split.patient_id.str.contains("_000[0-5]_"), "test", "train"))
    given.loc[given.patient_id.str.contains("_0006_|_0007_"), "split"] = "val"
    given = given.sample(frac=1, random_state=0).assign(note="ignored")  # any row order, extra columns ignored
    path = tmp_path / "splits.csv"
    path.write_text("\ufeff" + given.to_csv(index=False))  # a byte-order mark (Excel) is fine
    result = read_split_file(path, cases)
    assert result.patient_id.tolist() == cases.patient_id.tolist()
    expected = given.set_index("patient_id").split
    assert (result.split.values == expected[result.patient_id].values).all()
    check_patients_together(result, cases, path)


@pytest.mark.parametrize("damage, message", [
    ("unknown", r"1 patient\(s\) not in the slice store: \['TCGA_ZZ_9999_20000101'\]"),
    ("patient_not_scan", r"TCGA_AA_0000 is a patient: list each of its scans by case id"),
    ("missing", r"1 patient\(s\) of the slice store not listed: \['TCGA_BB_0001_20000101'\]"),
    ("duplicate", r"patient TCGA_BB_0001_20000101 is listed more than once \(lines \d+, \d+\)"),
    ("bad_name", r"line \d+: split 'training' of TCGA_BB_0001_20000101 is not one of train, val, test"),
    ("empty_id", r"line \d+: empty patient_id"),
    ("columns", r"needs the columns patient_id, split; found \['case', 'fold'\]"),
    ("scans_apart", r"scans of one patient TCGA_AA_0000 are in different splits"),
    ("no_val", r"no patient in val"),
    ("garbage", r"not a readable CSV table"),
    ("empty", r"not a readable CSV table"),
    ("absent", r"no such split file \(params.yaml split.file\)"),
    ("folder", r"not a readable CSV table"),
])
def test_bad_split_file_is_one_line_naming_the_file(tmp_path, rescanned, damage, message):
    cases, split = rescanned
    path = tmp_path / "splits.csv"
    other = "TCGA_BB_0001_20000101"
    if damage == "unknown":
        split = pd.concat([split, pd.DataFrame({"patient_id": ["TCGA_ZZ_9999_20000101"], "split": ["train"]})])
    elif damage == "patient_not_scan":
        split = pd.concat([split[~split.patient_id.str.startswith("TCGA_AA_0000_")],
                           pd.DataFrame({"patient_id": ["TCGA_AA_0000"], "split": ["train"]})])
    elif damage == "missing":
        split = split[split.patient_id != other]
    elif damage == "duplicate":
        split = pd.concat([split, split[split.patient_id == other]])
    elif damage == "bad_name":
        split.loc[split.patient_id == other, "split"] = "training"
    elif damage == "empty_id":
        split.loc[split.patient_id == other, "patient_id"] = ""
    elif damage == "columns":
        split = split.rename(columns={"patient_id": "case", "split": "fold"})
    elif damage == "scans_apart":
        split.loc[split.patient_id == "TCGA_AA_0000_20000101", "split"] = "train"
        split.loc[split.patient_id == "TCGA_AA_0000_20050505", "split"] = "test"
    elif damage == "no_val":
        split.loc[split.split == "val", "split"] = "test"
    if damage == "garbage":
        path.write_bytes(b"\xff\xfe\x00\x81 not,a\ncsv\x00\x00\n\"unterminated")
    elif damage == "empty":
        path.write_text("")
    elif damage == "folder":
        path.mkdir()
    elif damage != "absent":
        write_split_file(path, split)
    with pytest.raises(InputError, match=message) as e:
        read_split_file(path, cases)
    assert e.value.path == path and str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_split_stage_uses_split_file_and_keeps_the_old_split_on_a_bad_one(tmp_path, monkeypatch):
    from dataclasses import replace
    from pathlib import Path

    from pipeline.data.case import LGG_CHANNELS, Case
    from pipeline.data.slices import write_store
    from pipeline.params import load_params
    from pipeline.stages import split as split_stage

    monkeypatch.chdir(tmp_path)
    ids = ["TCGA_CS_0001_20000101", "TCGA_CS_0001_20030303", "TCGA_CS_0002_20000101", "TCGA_CS_0003_20000101"]
    write_store([Case(pid, np.full((2, 8, 8, 3), k, np.uint8), np.zeros((2, 8, 8), np.uint8), "lgg", LGG_CHANNELS,
                      np.arange(2), meta={"patient": pid.rsplit("_", 1)[0], "institution": "CS"})
                 for k, pid in enumerate(ids)], "data/slices")
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    pd.DataFrame({"patient_id": ids, "split": ["train", "train", "val", "test"]}).to_csv("mine.csv", index=False)
    split_stage.run(replace(params, split=replace(params.split, file="mine.csv")))
    written = read_split("data/split.csv")
    assert dict(zip(written.patient_id, written.split)) == dict(zip(ids, ["train", "train", "val", "test"]))
    before = Path("data/split.csv").read_bytes()
    pd.DataFrame({"patient_id": ids, "split": ["train", "test", "val", "test"]}).to_csv("mine.csv", index=False)
    with pytest.raises(InputError, match="mine.csv: scans of one patient TCGA_CS_0001 are in different splits"):
        split_stage.run(replace(params, split=replace(params.split, file="mine.csv")))
    assert Path("data/split.csv").read_bytes() == before


def test_split_file_without_test_patients_is_refused(tmp_path, rescanned):
    cases, split = rescanned
    path = write_split_file(tmp_path / "splits.csv", split.replace({"split": {"test": "train"}}))
    with pytest.raises(InputError, match="no patient in test: evaluate needs test patients"):
        read_split_file(path, cases)
    assert not (read_split_file(path, cases, folds=5).split == "test").any()  # folds: out of fold only


# ----------------------------------------------------------------------------------- cross-validation folds


def two_scan_manifest() -> tuple[pd.DataFrame, dict]:
    """fake_manifest with every 5th patient's scan duplicated as a second scan (another date) of that patient."""
    manifest, meta = fake_manifest()
    extra = []
    for pid in sorted(manifest.patient_id.unique())[::5]:
        second = pid.replace("_20000101", "_20010101")
        extra.append(manifest[manifest.patient_id == pid].assign(patient_id=second))
        meta[second] = {"meta": dict(meta[pid]["meta"])}
    manifest = pd.concat([manifest, *extra], ignore_index=True)
    for pid in meta:
        meta[pid]["meta"]["patient"] = pid.rsplit("_", 1)[0]
    return manifest, meta


def test_folds_partition_the_non_test_patients_and_keep_the_test_split():
    from pipeline.data.split import assign_folds, fold_count

    manifest, meta = two_scan_manifest()
    cases = patient_table(manifest, meta)
    params = SplitParams(0.6, 0.2, 0.2, seed=1)
    single = assign_splits(cases, params)
    folded = assign_folds(cases, single, 5, params.seed)

    assert fold_count(folded) == 5 and fold_count(single) == 1
    test = folded.split == "test"
    assert (folded.patient_id[test] == single.patient_id[single.split == "test"]).all()  # the same test patients
    assert folded.fold[test].isna().all()  # test patients are in no fold
    assert set(folded.split[~test]) == {"train"} and folded.fold[~test].notna().all()
    # a patient (both of its scans) is in exactly one fold
    person = folded.patient_id.map(cases.set_index("patient_id").patient)
    assert (folded[~test].groupby(person[~test]).fold.nunique() == 1).all()
    assert (person.value_counts() == 2).sum() > 0  # the test did cover two-scan patients
    # folds are balanced: patient counts differ by at most one per stratum (3 burden strata here)
    per_fold = folded[~test].assign(person=person).groupby("fold").person.nunique()
    assert per_fold.max() - per_fold.min() <= 3 and len(per_fold) == 5
    # seeded
    pd.testing.assert_frame_equal(folded, assign_folds(cases, single, 5, params.seed))
    assert not folded.equals(assign_folds(cases, single, 5, params.seed + 1))


def test_fold_training_rows_never_hold_their_own_folds_patients(tmp_path):
    from pipeline.data.split import assign_folds, fold_split

    manifest, meta = two_scan_manifest()
    cases = patient_table(manifest, meta)
    folded = assign_folds(cases, assign_splits(cases, SplitParams(0.6, 0.2, 0.2, seed=2)), 4, 2)
    path = tmp_path / "split.csv"
    folded.to_csv(path, index=False)
    read = read_split(str(path))  # the CSV round trip keeps the folds (test rows: an empty fold)
    assert read.fold.isna().sum() == (read.split == "test").sum()
    person = cases.set_index("patient_id").patient
    for fold in range(4):
        rows = split_manifest(manifest, fold_split(read, fold))
        train, val = rows[rows.split == "train"], rows[rows.split == "val"]
        own = set(read.patient_id[read.fold == fold])
        assert set(val.patient_id) == own
        assert not set(train.patient_id) & own
        assert not set(train.patient_id.map(person)) & set(val.patient_id.map(person))  # no patient on both sides
        assert not set(rows.patient_id[rows.split != "test"]) & set(read.patient_id[read.split == "test"])


def test_read_split_rejects_bad_folds(tmp_path):
    path = tmp_path / "split.csv"
    pd.DataFrame({"patient_id": ["a", "b", "c"], "split": ["train", "train", "test"],
                  "fold": [0, None, None]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="fold must be a whole number"):
        read_split(str(path))
    pd.DataFrame({"patient_id": ["a", "b", "c"], "split": ["train", "train", "test"],
                  "fold": [0, 2, None]}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"fold\(s\) \[1\] have no patient"):
        read_split(str(path))
