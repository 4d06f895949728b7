"""Stage `report`: build the self-contained HTML report reports/index.html."""

from __future__ import annotations

import logging

from pipeline.params import Params
from pipeline.paths import MODELS_DIR, REPORT_HTML, REPORTS_DIR, SLICES_DIR, SPLIT_CSV
from pipeline.report import build_report

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    out = build_report(REPORTS_DIR, SLICES_DIR, SPLIT_CSV, MODELS_DIR, params, REPORT_HTML)
    log.info("open %s in a browser (it needs no network)", out)
