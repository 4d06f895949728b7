"""Benchmark: random batches read from the slice store (memory-mapped, page cache warm).

Builds a store of synthetic cases of the real shape (default 40 patients x 40 slices of
256 x 256 x 3, and the same at 128) in a temporary folder, then reads batches of 32 slices drawn
at random across all patients, as shuffled training does. Prints one JSON line per image size:

    {"benchmark": "store_random_batches", "image_size": 256, "batch": 32, "slices_per_s": ...}

Target: >= 5000 slices/s at 256 px.

    python benchmarks/bench_store.py [--patients 40] [--slices 40] [--sizes 256 128] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.case import LGG_CHANNELS, Case  # noqa: E402
from pipeline.data.slices import SliceStore, write_store  # noqa: E402

log = logging.getLogger("bench_store")


def synthetic_case(patient_id: str, n_slices: int, size: int, rng: np.random.Generator) -> Case:
    """A brain-like case: an ellipse of textured tissue per slice, a bright tumour blob on ~40% of slices.

    image uint8 [n_slices, size, size, 3], labels uint8 [n_slices, size, size] (0 or 1).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    brain = (xx / 0.38) ** 2 + (yy / 0.45) ** 2 < 1
    image = np.zeros((n_slices, size, size, 3), np.uint8)
    labels = np.zeros((n_slices, size, size), np.uint8)
    for d in range(n_slices):
        tissue = rng.normal(90, 20, (size, size, 3)).clip(0, 255) * brain[..., None]
        if rng.random() < 0.4:
            cx, cy, r = rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), rng.uniform(0.04, 0.12)
            tumour = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
            tissue[tumour] += 80
            labels[d][tumour] = 1
        image[d] = tissue.clip(0, 255).astype(np.uint8)
    return Case(patient_id=patient_id, image=image, labels=labels, source="lgg", channels=LGG_CHANNELS,
                slice_numbers=np.arange(1, n_slices + 1))


def synthetic_cases(n_patients: int, n_slices: int, size: int, seed: int = 0) -> Iterator[Case]:
    """``n_patients`` synthetic cases (ids P000, P001, ...), generated one at a time."""
    rng = np.random.default_rng(seed)
    for p in range(n_patients):
        yield synthetic_case(f"P{p:03d}", n_slices, size, rng)


def build_store(root: Path, n_patients: int, n_slices: int, size: int, seed: int = 0) -> SliceStore:
    """Write a synthetic store at ``root`` and open it."""
    write_store(synthetic_cases(n_patients, n_slices, size, seed), root)
    return SliceStore(root)


def random_batches_per_s(store: SliceStore, batch: int, seconds: float, seed: int = 0) -> float:
    """Slices/s reading batches of ``batch`` (patient, slice) pairs drawn at random from the manifest."""
    rng = np.random.default_rng(seed)
    pids = store.manifest["patient_id"].to_numpy()
    idxs = store.manifest["slice_index"].to_numpy()
    store.read_rows(store.manifest.iloc[:batch])  # open the memory maps
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        pick = rng.integers(0, len(pids), batch)
        pick = pick[np.lexsort((idxs[pick], pids[pick]))]  # as SliceBatches does: patient by patient
        store.read(pids[pick].tolist(), idxs[pick].tolist())
        n += batch
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = build_store(Path(tmp) / "slices", args.patients, args.slices, size)
            rate = random_batches_per_s(store, args.batch, args.seconds)
        print(json.dumps({"benchmark": "store_random_batches", "image_size": size, "batch": args.batch,
                          "patients": args.patients, "slices": len(store.manifest),
                          "slices_per_s": round(rate, 1)}))


if __name__ == "__main__":
    main()
