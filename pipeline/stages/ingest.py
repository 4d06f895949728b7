"""Stage `ingest`: read data.root with the data.source reader into the slice store data/slices."""

from __future__ import annotations

import logging
import time

from pipeline.data.slices import write_store
from pipeline.data.sources import list_case_paths, read_cases
from pipeline.params import Params
from pipeline.paths import SLICES_DIR
from pipeline.writing import check_no_overlap

log = logging.getLogger(__name__)

# What the stage reads and writes besides code: dvc.yaml declares exactly these (tests/test_dvc_graph.py).
READS = ("${data.root}",)  # params.data.root, as dvc.yaml interpolates it
WRITES = (SLICES_DIR,)


def run(params: Params) -> None:
    # Never write over the data it reads: the root, each case (links resolved) and what a case folder holds.
    cases = list_case_paths(params.data)
    inside = [entry for case in cases if case.is_dir() for entry in case.iterdir()]
    check_no_overlap(SLICES_DIR, [params.data.root, *cases, *inside], "the slice store")
    start = time.perf_counter()
    manifest = write_store(read_cases(params.data), SLICES_DIR)
    seconds = time.perf_counter() - start
    log.info(
        "ingested %d patients, %d slices (%d with tumour) from %s in %.1f s (%.0f slices/s)",
        manifest.patient_id.nunique(), len(manifest), int(manifest.has_tumour.sum()), params.data.root,
        seconds, len(manifest) / seconds,
    )
