"""Stage `split`: assign patients to train/val/test and write data/split.csv."""

from __future__ import annotations

import logging

from pipeline.params import Params
from pipeline.paths import SLICES_DIR, SPLIT_CSV
from pipeline.slices import SliceStore
from pipeline.split import assign_splits, patient_table, split_manifest
from pipeline.writing import atomic_path

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    store = SliceStore(SLICES_DIR)
    split = assign_splits(patient_table(store.manifest, store.patients), params.split)
    with atomic_path(SPLIT_CSV) as tmp:
        split.to_csv(tmp, index=False)
    counts = split_manifest(store.manifest, split).groupby("split").agg(
        patients=("patient_id", "nunique"), slices=("slice_index", "size"), positive=("has_tumour", "sum"))
    log.info("split written to %s:\n%s", SPLIT_CSV, counts.to_string())
