"""Stage `demo`: write the synthetic demo patients in the kaggle_3m layout to data/demo/kaggle_3m."""

from __future__ import annotations

import logging
import time

from pipeline.data.demo import write_demo
from pipeline.params import Params
from pipeline.paths import DEMO_DIR

log = logging.getLogger(__name__)

# What the stage reads and writes besides code: dvc.yaml declares exactly these (tests/test_dvc_graph.py).
READS = ()
WRITES = (DEMO_DIR,)


def run(params: Params) -> None:
    start = time.perf_counter()
    ids = write_demo(DEMO_DIR / "kaggle_3m", params.demo)
    log.info("wrote %d demo patients to %s in %.1f s", len(ids), DEMO_DIR / "kaggle_3m", time.perf_counter() - start)
