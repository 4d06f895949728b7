"""Benchmark: LGG kaggle_3m ingest throughput through the LGG reader.

    python benchmarks/bench_read_lgg.py [KAGGLE_3M_ROOT] [--image-size 256] [--repeat 3] [--store]

Reads every case (image + mask TIFFs, checked and stacked) and prints one JSON line:
{"benchmark": "read_lgg", "slices": N, "seconds": t, "slices_per_s": x} (best of --repeat runs).
--store also writes the slice store (pipeline.data.slices.write_store) to a temporary folder and
reports that as "ingest_lgg". Default root: ../shared/data/lgg/kaggle_3m next to the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from pipeline.data.slices import write_store
from pipeline.data.sources import read_cases
from pipeline.params import DataParams

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lgg" / "kaggle_3m"
log = logging.getLogger("bench_read_lgg")


def run_once(data: DataParams, store: bool) -> tuple[int, float]:
    """(slices, seconds) for one pass over the root."""
    start = time.perf_counter()
    if store:
        with tempfile.TemporaryDirectory() as tmp:
            slices = len(write_store(read_cases(data), Path(tmp) / "slices"))
            seconds = time.perf_counter() - start  # the temporary store's deletion is not ingest
    else:
        slices = sum(len(case.image) for case in read_cases(data))
        seconds = time.perf_counter() - start
    return slices, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT, help="a kaggle_3m root folder")
    parser.add_argument("--image-size", type=int, default=256, help="stored slice size in pixels")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is reported")
    parser.add_argument("--store", action="store_true", help="also write the slice store (full ingest)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = DataParams(source="lgg", root=str(args.root), image_size=args.image_size, channels=("t1", "flair", "t1gd"),
                      clip_percentiles=(0.5, 99.5), min_brain_fraction=0.05, on_error="fail")
    runs = [run_once(data, args.store) for _ in range(args.repeat)]
    for i, (slices, seconds) in enumerate(runs):
        log.info("run %d: %d slices in %.3f s", i + 1, slices, seconds)
    slices, seconds = min(runs, key=lambda run: run[1])
    print(json.dumps({
        "benchmark": "ingest_lgg" if args.store else "read_lgg",
        "slices": slices,
        "seconds": round(seconds, 4),
        "slices_per_s": round(slices / seconds, 1),
    }))


if __name__ == "__main__":
    main()
