"""Stage `ingest`: read data.root with the data.source reader into the slice store data/slices."""

from __future__ import annotations

import logging
import time

from pipeline.params import Params
from pipeline.paths import SLICES_DIR
from pipeline.slices import write_store
from pipeline.sources import read_cases

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    start = time.perf_counter()
    manifest = write_store(read_cases(params.data), SLICES_DIR)
    seconds = time.perf_counter() - start
    log.info(
        "ingested %d patients, %d slices (%d with tumour) from %s in %.1f s (%.0f slices/s)",
        manifest.patient_id.nunique(), len(manifest), int(manifest.has_tumour.sum()), params.data.root,
        seconds, len(manifest) / seconds,
    )
