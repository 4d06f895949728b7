"""Stage `split`: assign patients to train/val/test (seeded, or as params.yaml split.file says), with
split.folds > 1 the non-test patients to cross-validation folds, and write data/split.csv."""

from __future__ import annotations

import logging

from pipeline.data.slices import SliceStore
from pipeline.data.split import assign_folds, assign_splits, patient_table, read_split_file, split_manifest
from pipeline.params import Params
from pipeline.paths import SLICES_DIR, SPLIT_CSV
from pipeline.writing import atomic_path

log = logging.getLogger(__name__)

# What the stage reads and writes besides code: dvc.yaml declares exactly these (tests/test_dvc_graph.py).
READS = (SLICES_DIR,)
WRITES = (SPLIT_CSV,)
# Read when set, but no DVC dep (it may be unset): params.yaml's `split` section is.
READS_FROM_PARAMS = ("${split.file}",)


def run(params: Params) -> None:
    store = SliceStore(SLICES_DIR)
    cases = patient_table(store.manifest, store.patients)
    if params.split.file:
        split = read_split_file(params.split.file, cases, params.split.folds)  # split.train/val/test/seed are not used
    else:
        split = assign_splits(cases, params.split)
    if params.split.folds > 1:  # the test patients stay; the others are dealt into folds
        split = assign_folds(cases, split, params.split.folds, params.split.seed)
    with atomic_path(SPLIT_CSV) as tmp:
        split.to_csv(tmp, index=False)
    counts = split_manifest(store.manifest, split).groupby("split").agg(
        patients=("patient_id", "nunique"), slices=("slice_index", "size"), positive=("has_tumour", "sum"))
    log.info("split written to %s:\n%s", SPLIT_CSV, counts.to_string())
