"""Patient-level train/val/test split, stratified by tumour burden (and institution when possible).

Every slice of a patient goes where the patient goes: the split is a table of patients, never of
slices, and two scans of one patient (kaggle_3m folders ``TCGA_<site>_<patient>_<date>``) go
together. ``assign_splits`` is deterministic for a given seed; ``read_split_file`` takes the split
from a user's CSV instead (``split.file``, like nnU-Net's splits_final.json).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.params import SplitParams

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def patient_table(manifest: pd.DataFrame, patients_meta: dict | None = None) -> pd.DataFrame:
    """One row per stored case (``patient_id``, the store's case id): patient, n_slices, n_positive,
    tumour_pixels, burden (none/low/high), institution.

    ``patient`` is the person the scan belongs to, from the case's ``meta["patient"]`` (kaggle_3m:
    ``TCGA_<site>_<patient>`` of the folder ``TCGA_<site>_<patient>_<date>``); a case without one
    (BraTS, Decathlon, older stores) is its own patient. The split keeps a patient's scans together.
    """
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
    persons = {pid: (m.get("meta") or {}).get("patient") for pid, m in (patients_meta or {}).items()}
    table.insert(1, "patient", table.patient_id.map(persons).fillna(table.patient_id).astype(str))
    return table


def by_patient(cases: pd.DataFrame) -> pd.DataFrame:
    """A ``patient_table`` of cases -> one row per patient (columns patient, n_cases, tumour_pixels, burden,
    institution): what the split assigns. A table without a ``patient`` column has one case a patient."""
    cases = cases.assign(patient=cases["patient"] if "patient" in cases else cases.patient_id)
    table = cases.groupby("patient", sort=True).agg(
        n_cases=("patient_id", "size"), tumour_pixels=("tumour_pixels", "sum"), institution=("institution", "first"),
    ).reset_index()
    positive = table.tumour_pixels > 0
    median = table.loc[positive, "tumour_pixels"].median() if positive.any() else 0
    table["burden"] = np.where(~positive, "none", np.where(table.tumour_pixels <= median, "low", "high"))
    return table


def assign_splits(cases: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    """Assign each patient, with all of its scans, to train/val/test.

    cases: a ``patient_table`` (columns patient_id, patient, tumour_pixels, institution; without
    ``patient`` every case is its own patient). Patients (``by_patient``: burden over all their
    scans) are what is split. Strata are burden x institution when every such stratum has at least
    3 patients, else burden. Within the stratified, seeded order each patient goes to the split
    furthest below its target fraction, so every stratum is spread over the splits in proportion.
    Returns columns patient_id (the case id), split: one row per case, in the order of ``cases``.
    """
    patients = by_patient(cases)
    n = len(patients)
    if n < 3:
        raise InputError("data/slices", f"only {n} patients: a train/val/test split needs at least 3")
    order = stratified_order(patients, np.random.default_rng(params.seed))
    targets = np.array([params.train, params.val, params.test])
    counts = np.zeros(3)
    split = np.empty(n, dtype=object)
    for j, i in zip(deal(order, targets), order, strict=True):
        split[i] = SPLITS[j]
        counts[j] += 1
    # Guarantee a non-empty val and test split for small cohorts when the fraction asks for one.
    for j, name in enumerate(SPLITS[1:], start=1):
        if targets[j] > 0 and counts[j] == 0:
            donor = order[-1] if split[order[-1]] == "train" else next(i for i in reversed(order) if split[i] == "train")
            split[donor] = name
            counts[j] += 1
            counts[0] -= 1
    of_patient = dict(zip(patients.patient, split, strict=True))
    person = cases["patient"] if "patient" in cases else cases.patient_id
    result = pd.DataFrame({"patient_id": cases.patient_id.values, "split": person.map(of_patient).values})
    for name in SPLITS:
        log.info("%s: %d patients, %d scans", name, int((split == name).sum()), int((result.split == name).sum()))
    return result


def stratified_order(patients: pd.DataFrame, rng: np.random.Generator) -> list[int]:
    """Row positions of a ``by_patient`` table, stratum after stratum, shuffled within each stratum.

    Strata are burden x institution when every such stratum has at least 3 patients, else burden.
    """
    strata = patients.burden.astype(str)
    with_inst = strata + "/" + patients.institution.astype(str)
    if patients.institution.astype(bool).all() and with_inst.value_counts().min() >= 3:
        strata = with_inst
    order: list[int] = []
    for _, group in sorted(patients.groupby(strata).groups.items()):
        idx = np.array(sorted(group))
        order.extend(rng.permutation(idx).tolist())
    return order


def deal(order: list[int], targets: np.ndarray) -> list[int]:
    """For each patient of `order` in turn, the group (index into `targets`, fractions) furthest below its
    target so far: every stratum is spread over the groups in proportion."""
    counts = np.zeros(len(targets))
    groups = []
    for k, _ in enumerate(order, start=1):
        j = int(np.argmax(targets * k - counts))
        groups.append(j)
        counts[j] += 1
    return groups


def assign_folds(cases: pd.DataFrame, split: pd.DataFrame, folds: int, seed: int) -> pd.DataFrame:
    """Cross-validation folds over the non-test patients: `split` (columns patient_id, split; a row per case
    of `cases`, a ``patient_table``) with every non-test case's split set to "train" and a ``fold`` column
    (0..folds-1; missing for test cases). A patient's scans share a fold; folds are stratified like the
    split (``stratified_order``, a seeded stream of its own) and differ in size by at most one patient
    per stratum. The test patients are those of `split`, unchanged.
    """
    non_test = split[split.split != "test"]
    pool = cases[cases.patient_id.isin(non_test.patient_id)].reset_index(drop=True)
    patients = by_patient(pool)
    if len(patients) < folds:
        raise InputError("data/split.csv", f"only {len(patients)} non-test patients for {folds} folds "
                                           "(split.folds): each fold needs at least one patient")
    order = stratified_order(patients, np.random.default_rng([seed, folds]))
    fold_of_patient = {patients.patient[i]: j for j, i in zip(deal(order, np.full(folds, 1 / folds)), order,
                                                              strict=True)}
    persons = split.patient_id.map(cases.set_index("patient_id")["patient"]) if "patient" in cases else split.patient_id
    fold = persons.map(fold_of_patient).where(split.split != "test")
    out = split.assign(split=np.where(split.split == "test", "test", "train"), fold=fold.astype("Int64"))
    sizes = out.dropna(subset=["fold"]).groupby("fold").patient_id.size()
    log.info("%d folds over %d non-test patients (scans per fold: %s)", folds, len(patients), sizes.to_dict())
    return out


def fold_count(split: pd.DataFrame) -> int:
    """Cross-validation folds of a split table: 1 without a ``fold`` column (a single train/val split)."""
    return int(split.fold.max()) + 1 if "fold" in split and split.fold.notna().any() else 1


def fold_split(split: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The train/val/test split that fold model `fold` trains with: the patients of fold `fold` are its
    "val" (monitored, never trained on), the other non-test patients "train", test unchanged.
    Columns patient_id, split (the ``fold`` column dropped)."""
    if "fold" not in split:
        raise ValueError("the split has no folds")
    in_fold = split.fold.eq(fold).fillna(False).to_numpy(bool)
    names = np.where(split.split == "test", "test", np.where(in_fold, "val", "train"))
    return pd.DataFrame({"patient_id": split.patient_id.values, "split": names})


def split_manifest(manifest: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """The manifest with a `split` column joined by patient (every slice follows its patient)."""
    merged = manifest.merge(split, on="patient_id", how="left", validate="many_to_one")
    missing = merged.split.isna()
    if missing.any():
        raise InputError("data/split.csv", f"no split for patient(s) {sorted(merged.patient_id[missing].unique())[:5]}")
    return merged


def read_split(path: str = "data/split.csv") -> pd.DataFrame:
    """Read split.csv (columns patient_id, split, and with split.folds > 1 fold) and check it is a partition of
    patients; with folds, that every non-test case has a fold 0..k-1 and no test case has one."""
    try:
        split = pd.read_csv(path, dtype={"patient_id": str})
    except FileNotFoundError:
        raise InputError(path, "no split file; run `python -m pipeline split` first") from None
    if set(split.columns) not in ({"patient_id", "split"}, {"patient_id", "split", "fold"}) \
            or split.patient_id.duplicated().any():
        raise InputError(path, "must have columns patient_id, split (and fold) and one row per patient")
    bad = set(split.split) - set(SPLITS)
    if bad:
        raise InputError(path, f"unknown split name(s) {sorted(bad)}")
    if "fold" in split:
        test = split.split == "test"
        fold = pd.to_numeric(split.fold, errors="coerce")
        if fold[test].notna().any() or fold[~test].isna().any() or (fold[~test] % 1 != 0).any() \
                or (fold[~test] < 0).any():
            raise InputError(path, "fold must be a whole number >= 0 for every non-test patient and empty for "
                                   "test patients")
        split["fold"] = fold.astype("Int64")
        missing = sorted(set(range(fold_count(split))) - set(split.fold.dropna()))
        if missing:
            raise InputError(path, f"fold(s) {missing} have no patient")
    return split


def check_patients_together(split: pd.DataFrame, cases: pd.DataFrame, where: str | Path) -> None:
    """InputError naming ``where`` when the scans of one patient are in different splits.

    split: columns patient_id (case id), split; cases: a ``patient_table`` (patient_id -> patient).
    """
    person = cases.set_index("patient_id")["patient"] if "patient" in cases else pd.Series(dtype=str)
    joined = split.assign(patient=split.patient_id.map(person).fillna(split.patient_id))
    spread = joined.groupby("patient", sort=True).split.nunique()
    if (spread > 1).any():
        patient = spread.index[spread > 1][0]
        scans = joined[joined.patient == patient].sort_values("patient_id")
        listing = ", ".join(f"{pid} ({name})" for pid, name in zip(scans.patient_id, scans.split, strict=True))
        raise InputError(where, f"scans of one patient {patient} are in different splits: {listing}; "
                                "a patient's scans must share one split")


def read_split_file(path: str | Path, cases: pd.DataFrame, folds: int = 1) -> pd.DataFrame:
    """The split a user gives in a CSV file (params.yaml ``split.file``) instead of the random one.

    path: CSV with columns patient_id (the slice store's case ids, as in data/split.csv) and split
    (train | val | test); other columns are ignored. cases: the store's ``patient_table``.
    Every case of the store must be listed exactly once, with a known split name, the scans of one
    patient in one split, and train and val not empty, test too unless ``folds`` > 1 (split.folds: then the
    out-of-fold figures are the evaluation); otherwise InputError naming the file.
    Returns columns patient_id, split, one row per case in the order of ``cases``.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(path, "no such split file (params.yaml split.file)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # pandas' ParserError, EmptyDataError are ValueErrors
        raise InputError(path, f"not a readable CSV table ({' '.join(str(e).split())})") from None
    if not {"patient_id", "split"} <= set(table.columns):
        raise InputError(path, f"needs the columns patient_id, split; found {list(table.columns)}")
    ids = table.patient_id.str.strip().tolist()
    names = table.split.str.strip().tolist()
    for line, (pid, name) in enumerate(zip(ids, names, strict=True), start=2):  # line 1 is the header
        if not pid:
            raise InputError(path, f"line {line}: empty patient_id")
        if name not in SPLITS:
            raise InputError(path, f"line {line}: split {name!r} of {pid} is not one of {', '.join(SPLITS)}")
    lines: dict[str, list[int]] = {}
    for line, pid in enumerate(ids, start=2):
        lines.setdefault(pid, []).append(line)
    twice = [pid for pid, at in lines.items() if len(at) > 1]
    if twice:
        raise InputError(path, f"patient {twice[0]} is listed more than once (lines "
                               f"{', '.join(map(str, lines[twice[0]]))})")
    known = set(cases.patient_id)
    unknown = [pid for pid in ids if pid not in known]
    if unknown:
        persons = set(cases["patient"]) if "patient" in cases else set()
        hint = (f" ({unknown[0]} is a patient: list each of its scans by case id)" if unknown[0] in persons else "")
        raise InputError(path, f"{len(unknown)} patient(s) not in the slice store: {unknown[:5]}{hint}")
    missing = sorted(known - set(ids))
    if missing:
        raise InputError(path, f"{len(missing)} patient(s) of the slice store not listed: {missing[:5]}")
    given = dict(zip(ids, names, strict=True))
    split = pd.DataFrame({"patient_id": cases.patient_id.values, "split": cases.patient_id.map(given).values})
    check_patients_together(split, cases, path)
    for name in ("train", "val"):
        if not (split.split == name).any():
            raise InputError(path, f"no patient in {name}: training needs train and val patients")
    if folds == 1 and not (split.split == "test").any():
        raise InputError(path, "no patient in test: evaluate needs test patients to score (or split.folds > 1)")
    log.info("split from %s: %s", path, split.split.value_counts().reindex(list(SPLITS), fill_value=0).to_dict())
    return split
