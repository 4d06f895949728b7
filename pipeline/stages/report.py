"""Stage `report`: build the self-contained HTML report reports/index.html."""

from __future__ import annotations

import logging

from pipeline.params import Params
from pipeline.paths import (
    EVAL_DIR,
    MODELS_DIR,
    REPORT_HTML,
    REPORTS_DIR,
    SLICES_DIR,
    SPLIT_CSV,
    TRAIN_CLASSIFIER_DIR,
    TRAIN_SEGMENTER_DIR,
)
from pipeline.report import build_report

log = logging.getLogger(__name__)

# What the stage reads and writes besides code: dvc.yaml declares exactly these (tests/test_dvc_graph.py).
READS = (EVAL_DIR, TRAIN_CLASSIFIER_DIR / "metrics.json", TRAIN_CLASSIFIER_DIR / "plots" / "metrics",
         TRAIN_SEGMENTER_DIR / "metrics.json", TRAIN_SEGMENTER_DIR / "plots" / "metrics",
         SLICES_DIR / "manifest.csv", SLICES_DIR / "skipped.csv", SPLIT_CSV,
         MODELS_DIR / "classifier.json", MODELS_DIR / "segmenter.json")
WRITES = (REPORT_HTML,)


def run(params: Params) -> None:
    out = build_report(REPORTS_DIR, SLICES_DIR, SPLIT_CSV, MODELS_DIR, params, REPORT_HTML)
    log.info("open %s in a browser (it needs no network)", out)
