"""Benchmark: the training input pipeline (store -> SliceBatches -> augmentation), alone and under fit.

Without --model: slices/s of augmented, shuffled "mask" batches (the heavier target) at each
--sizes, model left out. One JSON line per size:

    {"benchmark": "batches", "image_size": 256, "batch": 32, "augment_threads": 2,
     "augment_1thread_slices_per_s": ..., "augment_slices_per_s": ..., "serial_slices_per_s": ...,
     "serial_slices_per_cpu_s": ..., "enqueued_slices_per_s": ..., "workers": 1, ...}

augment_1thread: ``augment_batch`` alone on uint8 batches in memory, on one thread (what one core
gives); augment: the same on ``AUGMENT_THREADS`` threads (one per usable core, the default;
``PIPELINE_AUGMENT_THREADS=N`` in the environment sets it, for the pool that SliceBatches uses too).
enqueued is the issue's figure (target >= 2000 slices/s at 256 px on the 2-core machine).
augment and serial: slices per wall second (median over
calls) and per CPU second of the process (``*_per_cpu_s``: what a core gives when it is yours,
meaningful when other jobs share the machine). serial: ``SliceBatches[i]`` in a loop (read + augment +
targets) on the calling thread. enqueued: through Keras' PyDataset adapter with --workers /
--multiprocessing / --queue (default: pipeline.models.batches' defaults), as ``fit`` runs it; with one
worker and no multiprocessing that is a plain generator on the calling thread.

With --model resnet50|resunet: the issue's headline, training throughput with the real input
pipeline vs the same model's ``fit`` on in-memory tensors of the same shape (target ratio >= 0.85):

    {"benchmark": "train_throughput", "model": "resnet50", "size": 128, "in_memory_img_s": ...,
     "pipeline_img_s": ..., "ratio": ...}

The first ``fit`` of each kind runs one untimed warm-up epoch (tracing, first allocations); then
--epochs timed epochs of --steps batches per fit; in-memory and pipeline fits alternate --repeats
times on the same model. img/s come from the median step time, a step timed from the end of the
previous one, so it includes fetching the batch (``epoch_mean_ratio``: from mean epoch times,
start-up of every epoch included); process CPU seconds per image (all threads) are reported too,
since they stay meaningful when other jobs share the machine (``load_avg_1min``: before, after).

    python benchmarks/bench_batches.py [--sizes 128 256]
    python benchmarks/bench_batches.py --model resnet50 --size 128 --steps 4
    python benchmarks/bench_batches.py --model resunet --size 256 --steps 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
from bench_store import build_store  # noqa: E402

from pipeline.models.augment import AUGMENT_THREADS, augment_batch  # noqa: E402
from pipeline.models.batches import (  # noqa: E402
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_USE_MULTIPROCESSING,
    DEFAULT_WORKERS,
    SliceBatches,
    in_memory,
)
from pipeline.params import AugmentParams  # noqa: E402

log = logging.getLogger("bench_batches")

# The values in params.yaml.
AUGMENT = AugmentParams(enabled=True, flip=True, rotate_deg=10.0, shift=0.05, zoom=0.1, brightness=0.1, contrast=0.1)


# --- input pipeline alone -----------------------------------------------------------------------

def augment_rate(size: int, batch: int, seconds: float, threads: int) -> tuple[float, float]:
    """Slices/s of ``augment_batch`` (with mask) on in-memory uint8 batches, on ``threads`` threads."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    masks = (rng.random((batch, size, size)) < 0.1).astype(np.uint8)
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as the augmentation pool sets it
    try:
        return _rate(lambda: augment_batch(images, masks, rng, AUGMENT, threads=threads), batch, seconds)
    finally:
        cv2.setNumThreads(opencv_threads)


def serial_rate(ds: SliceBatches, seconds: float) -> tuple[float, float]:
    """Slices/s of ``ds[i]`` called in a loop on this thread."""
    i = iter(range(10**9))
    return _rate(lambda: ds[next(i) % len(ds)], ds.batch_size, seconds)


def enqueued_rate(ds: SliceBatches, seconds: float) -> float:
    """Slices/s through Keras' PyDataset adapter (its worker pool and queue), as fit() consumes it."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(ds, shuffle=False)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        adapter.on_epoch_begin()
        for batch in adapter.get_numpy_iterator():
            n += len(batch[0])
        adapter.on_epoch_end()
    return n / (time.perf_counter() - start)


def _rate(fn: Any, per_call: int, seconds: float) -> tuple[float, float]:
    """(slices per wall second, median over calls; slices per CPU second of this process) for ``fn``.

    The CPU figure is what one core gives when nothing else runs on it: robust to other jobs.
    """
    fn()
    times: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu
    return per_call / float(np.median(times)), per_call * len(times) / cpu


def bench_pipeline(args: argparse.Namespace) -> None:
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = build_store(Path(tmp) / "slices", args.patients, args.slices, size)
            # Epochs of >= 64 batches, so that the enqueuer's per-epoch start and stop do not dominate.
            rows = pd.concat([store.manifest] * -(-64 * args.batch // len(store.manifest)), ignore_index=True)
            ds = SliceBatches(store, rows, args.batch, "mask", AUGMENT, shuffle=True, seed=0,
                              **_pydataset_kwargs(args))
            one_thread, _ = augment_rate(size, args.batch, args.seconds, threads=1)
            all_threads, _ = augment_rate(size, args.batch, args.seconds, threads=AUGMENT_THREADS)
            serial_wall, serial_cpu = serial_rate(ds, args.seconds)
            result = {
                "benchmark": "batches", "image_size": size, "batch": args.batch, "target": "mask", "augment": True,
                "augment_threads": AUGMENT_THREADS,
                "augment_1thread_slices_per_s": round(one_thread, 1),
                "augment_slices_per_s": round(all_threads, 1),
                "serial_slices_per_s": round(serial_wall, 1),
                "serial_slices_per_cpu_s": round(serial_cpu, 1),
                "enqueued_slices_per_s": round(enqueued_rate(ds, args.seconds), 1),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                **_pydataset_kwargs(args),
            }
        print(json.dumps(result))


# --- training throughput --------------------------------------------------------------------------

class EpochTimer(keras.callbacks.Callback):
    """Per epoch: wall-clock and process CPU seconds (all threads), and the wall time of each step.

    A step's time runs from the end of the previous step (or the epoch's start) to its own end, so
    it includes fetching its batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self.step_seconds: list[list[float]] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start, self._cpu = time.perf_counter(), time.process_time()
        self._last = self._start
        self.step_seconds.append([])

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self.step_seconds[-1].append(now - self._last)
        self._last = now

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu)


def build_model(name: str, size: int) -> tuple[keras.Model, str, str]:
    """(model, target, where the model came from): the project's nets, or a stand-in of the same kind."""
    if name == "resnet50":
        try:
            from pipeline.models.nets.classifier import build_classifier
        except ImportError:
            return _standin_resnet50(size), "label", "stand-in keras.applications.ResNet50 + head"
        built = build_classifier(size, "resnet50", weights="none")
        return (built[0] if isinstance(built, tuple) else built), "label", "pipeline.models.nets.classifier"
    try:
        from pipeline.models.nets.resunet import build_resunet
    except ImportError:
        return _standin_resunet(size), "mask", "stand-in ResUNet 16-32-64-128-256"
    return build_resunet(size), "mask", "pipeline.models.nets.resunet"


def _standin_resnet50(size: int) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dropout(0.3)(base(inputs)))
    return keras.Model(inputs, outputs, name="resnet50_standin")


def _standin_resunet(size: int, filters: tuple[int, ...] = (16, 32, 64, 128, 256)) -> keras.Model:
    layers = keras.layers

    def res_block(x: Any, f: int, stride: int) -> Any:
        shortcut = layers.BatchNormalization()(layers.Conv2D(f, 1, strides=stride)(x))
        y = layers.Activation("relu")(layers.BatchNormalization()(x))
        y = layers.Conv2D(f, 3, strides=stride, padding="same")(y)
        y = layers.Activation("relu")(layers.BatchNormalization()(y))
        y = layers.Conv2D(f, 3, padding="same")(y)
        return layers.Add()([shortcut, y])

    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    skips = []
    for i, f in enumerate(filters):
        x = res_block(x, f, 1 if i == 0 else 2)
        skips.append(x)
    for f, skip in zip(reversed(filters[:-1]), reversed(skips[:-1]), strict=True):
        x = layers.Concatenate()([layers.UpSampling2D()(x), skip])
        x = res_block(x, f, 1)
    outputs = layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="resunet_standin")


def bce_dice(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy + soft Dice loss (eps 1) over [B, H, W, 1] masks."""
    ops = keras.ops
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    dice = (2 * inter + 1) / (ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3)) + 1)
    return bce + 1 - ops.mean(dice)


def bench_training(args: argparse.Namespace) -> None:
    keras.utils.set_random_seed(0)
    load_before = os.getloadavg()[0]
    n = args.steps * args.batch
    n_patients = max(2, -(-n // args.slices))
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp) / "slices", n_patients, args.slices, args.size)
        model, target, origin = build_model(args.model, args.size)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="binary_crossentropy" if target == "label" else bce_dice)
        rows = store.manifest.iloc[:n]
        x, y = in_memory(store, rows, target)
        batches = SliceBatches(store, rows, args.batch, target, AUGMENT, shuffle=True, seed=0, **_pydataset_kwargs(args))
        assert len(batches) == args.steps
        wall: dict[str, list[float]] = {"in_memory": [], "pipeline": []}
        cpu: dict[str, list[float]] = {"in_memory": [], "pipeline": []}
        steps: dict[str, list[float]] = {"in_memory": [], "pipeline": []}
        for r in range(args.repeats):
            warmup = 1 if r == 0 else 0  # the first fit of each kind traces the step function
            for name in ("in_memory", "pipeline"):
                timer, epochs = EpochTimer(), warmup + args.epochs
                if name == "in_memory":
                    model.fit(x, y, batch_size=args.batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
                else:
                    model.fit(batches, epochs=epochs, verbose=0, callbacks=[timer])
                wall[name] += timer.seconds[warmup:]
                cpu[name] += timer.cpu_seconds[warmup:]
                steps[name] += [t for epoch in timer.step_seconds[warmup:] for t in epoch]
                log.info("repeat %d %s: epochs %s s wall, %s s CPU", r, name,
                         np.round(timer.seconds[warmup:], 2), np.round(timer.cpu_seconds[warmup:], 2))
    # Median step (batch fetch + train step): other jobs on a shared machine slow steps down at random.
    img_s = {name: args.batch / float(np.median(t)) for name, t in steps.items()}
    cpu_per_img = {name: sum(t) / (n * len(t)) for name, t in cpu.items()}
    print(json.dumps({
        "benchmark": "train_throughput", "model": args.model, "size": args.size,
        "in_memory_img_s": round(img_s["in_memory"], 2), "pipeline_img_s": round(img_s["pipeline"], 2),
        "ratio": round(img_s["pipeline"] / img_s["in_memory"], 3),
        "epoch_mean_ratio": round(sum(wall["in_memory"]) / len(wall["in_memory"]) / (sum(wall["pipeline"]) / len(wall["pipeline"])), 3),
        # CPU seconds per image of the whole process (all threads): robust to other load on the machine.
        "in_memory_cpu_s_per_img": round(cpu_per_img["in_memory"], 4),
        "pipeline_cpu_s_per_img": round(cpu_per_img["pipeline"], 4),
        "cpu_ratio": round(cpu_per_img["in_memory"] / cpu_per_img["pipeline"], 3),
        "batch": args.batch, "steps": args.steps, "timed_epochs": len(wall["pipeline"]), "model_source": origin,
        "backend": keras.backend.backend(), "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], **_pydataset_kwargs(args),
    }))


def _pydataset_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"workers": args.workers, "use_multiprocessing": args.multiprocessing, "max_queue_size": args.queue}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["resnet50", "resunet"], help="time fit(); without it, the pipeline alone")
    ap.add_argument("--size", type=int, default=128, help="with --model: image size (px)")
    ap.add_argument("--steps", type=int, default=4, help="with --model: batches per timed epoch")
    ap.add_argument("--epochs", type=int, default=1, help="with --model: timed epochs after the warm-up epoch")
    ap.add_argument("--repeats", type=int, default=3, help="with --model: in-memory / pipeline alternations")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="without --model: image sizes")
    ap.add_argument("--patients", type=int, default=16, help="without --model: patients in the store")
    ap.add_argument("--slices", type=int, default=32, help="slices per patient")
    ap.add_argument("--seconds", type=float, default=3.0, help="without --model: seconds per measurement")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 16 with --model, else 32)")
    ap.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    ap.add_argument("--multiprocessing", action=argparse.BooleanOptionalAction, default=DEFAULT_USE_MULTIPROCESSING)
    ap.add_argument("--queue", type=int, default=DEFAULT_MAX_QUEUE_SIZE, help="max_queue_size")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.batch is None:
        args.batch = 16 if args.model else 32
    if args.model:
        bench_training(args)
    else:
        bench_pipeline(args)


if __name__ == "__main__":
    main()
