"""Benchmark: seconds to read one BraTS 2021 case folder and one Decathlon 4D case into a Case.

    python benchmarks/bench_read_brats.py [BRATS_CASE_FOLDER] [DECATHLON_ROOT] [--image-size 256] [--repeat 3]

Prints one JSON line: {"benchmark": "read_brats", "brats2021_case_seconds": t,
"decathlon_case_seconds": t, "slices": D} (best of --repeat runs, 3 sequences + labels each).
Defaults: the BraTS2021_00006 sample in ../shared/data/brats next to the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.data.case import Case
from pipeline.data.sources import read_brats2021_case, read_decathlon_case, reading_task
from pipeline.data.sources.brats import decathlon_pairs
from pipeline.params import DataParams

SHARED_BRATS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats"
log = logging.getLogger("bench_read_brats")


def best_seconds(read: Callable[[], Case], repeat: int) -> tuple[float, Case]:
    """Fastest of ``repeat`` calls, and the Case of the last call."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        case = read()
        times.append(time.perf_counter() - start)
    log.info("%s: %s s", case.patient_id, ", ".join(f"{t:.3f}" for t in times))
    return min(times), case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("brats_case", nargs="?", type=Path, default=SHARED_BRATS / "BraTS2021" / "BraTS2021_00006")
    parser.add_argument("decathlon_root", nargs="?", type=Path, default=SHARED_BRATS / "Task01_BrainTumour")
    parser.add_argument("--image-size", type=int, default=256, help="stored slice size in pixels")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is reported")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = DataParams(source="brats2021", root=str(args.brats_case.parent), image_size=args.image_size,
                      channels=("t1", "flair", "t1gd"), clip_percentiles=(0.5, 99.5), min_brain_fraction=0.05,
                      on_error="fail")
    task = reading_task(data)
    brats_seconds, case = best_seconds(lambda: read_brats2021_case(args.brats_case, task, data.min_brain_fraction,
                                                                           require_labels=True),
                                       args.repeat)
    image, label = decathlon_pairs(args.decathlon_root)[0]
    decathlon_seconds, _ = best_seconds(lambda: read_decathlon_case(image, task, data.min_brain_fraction, label), args.repeat)
    print(json.dumps({
        "benchmark": "read_brats",
        "brats2021_case_seconds": round(brats_seconds, 3),
        "decathlon_case_seconds": round(decathlon_seconds, 3),
        "slices": len(case.image),
    }))


if __name__ == "__main__":
    main()
