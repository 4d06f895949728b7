"""What both training stages share: seeding, the data they train on, callbacks, dvclive, saving.

Backend-neutral (Keras 3 only): the same code trains under TensorFlow or JAX.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
from dvclive import Live

from pipeline.errors import InputError
from pipeline.models.devices import use_devices
from pipeline.params import TrainParams
from pipeline.data.slices import SliceStore
from pipeline.data.split import read_split, split_manifest
from pipeline.writing import atomic_path

log = logging.getLogger(__name__)


def setup(train: TrainParams) -> None:
    """Seed Python, NumPy and the backend; choose the precision policy and the devices (``train.devices``)."""
    seed_everything(train.seed)
    keras.mixed_precision.set_global_policy("mixed_float16" if train.mixed_precision else "float32")
    use_devices(train.devices, train.batch_size)


def seed_everything(seed: int) -> None:
    """``keras.utils.set_random_seed`` without importing TensorFlow into a process that has not loaded it.

    Keras' function seeds TensorFlow whenever it is installed, so under JAX it imported TensorFlow at
    the start of every training stage (seconds, thread pools, and on a GPU machine a second CUDA
    stack). TensorFlow is seeded when it is loaded (the TensorFlow backend loads it with Keras), and
    PyTorch likewise (the torch backend); otherwise Python's and NumPy's generators are all the
    pipeline draws from: Keras takes layer initialiser and dropout seeds from Python's ``random``,
    batches and augmentation use NumPy.
    """
    if "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


# BatchNormalization's moving averages with Keras' default momentum 0.99 trail far behind the
# weights of a network trained from scratch on a few dozen steps an epoch: validation then
# swings between all-positive and all-negative. 0.9 tracks them within ~20 steps (measured on the
# demo: ResNet50 from random init at 64 px reached val AUC 0.92 in 14 epochs with 0.9, and stayed
# near chance with 0.99). Pretrained backbones keep their own statistics and momentum.
SCRATCH_BN_MOMENTUM = 0.9


def set_batchnorm_momentum(model: keras.Model, momentum: float = SCRATCH_BN_MOMENTUM) -> int:
    """Set the momentum of every BatchNormalization layer; returns how many were changed."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


def training_rows(store: SliceStore, split_csv: str | Path) -> dict[str, pd.DataFrame]:
    """Manifest rows of the train and val patients: {"train": rows, "val": rows}.

    Test patients are dropped here, so no stage that trains or tunes can see them.
    """
    rows = split_manifest(store.manifest, read_split(str(split_csv)))
    parts = {name: rows[rows.split == name].reset_index(drop=True) for name in ("train", "val")}
    for name, part in parts.items():
        if part.empty:
            raise InputError(split_csv, f"the {name} split has no slices")
    return parts


class LiveLogger(keras.callbacks.Callback):
    """Log every epoch's metrics to dvclive as train/<name> and val/<name>, plus the learning rate.

    Backend-neutral replacement for dvclive.keras (which is tied to tf.keras). ``epoch_offset``
    continues the step count across several ``fit`` calls (e.g. warm-up then fine-tuning).
    """

    def __init__(self, live: Live):
        super().__init__()
        self.live = live

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for name, value in (logs or {}).items():
            if name == "learning_rate":
                self.live.log_metric("learning_rate", float(value))
            elif name.startswith("val_"):
                self.live.log_metric(f"val/{name[4:]}", float(value))
            else:
                self.live.log_metric(f"train/{name}", float(value))
        self.live.next_step()


class BestWeights(keras.callbacks.Callback):
    """Track the best epoch on a validation metric across several fit calls; stop after `patience`.

    Unlike EarlyStopping, one instance survives warm-up and fine-tuning phases; call
    ``restore()`` after the last phase to put the best weights back.
    """

    def __init__(self, monitor: str, patience: int, mode: str = "max"):
        super().__init__()
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.best: float | None = None
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None
        self.wait = 0
        self.stopped = False

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self._better(float(value)):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                log.info("early stopping: %s has not improved for %d epochs", self.monitor, self.patience)
                self.model.stop_training = True
                self.stopped = True

    def restore(self) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            log.info("restored the best weights: epoch %d, %s = %.4f", self.best_epoch + 1, self.monitor, self.best)


class EpochTimer(keras.callbacks.Callback):
    """Measure training images/s per epoch (for the logs and the sidecar)."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        rate = self.images_per_epoch / (time.perf_counter() - self._start)
        self.rates.append(rate)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        log.info("epoch %d: %s (%.1f img/s incl. validation)", epoch + 1, shown, rate)


@dataclass
class TrainingRun:
    """Callbacks and bookkeeping for one model's training, shared by its phases."""

    live: Live
    best: BestWeights
    timer: EpochTimer
    reduce_lr: keras.callbacks.Callback
    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def start(cls, live_dir: str | Path, monitor: str, patience: int, images_per_epoch: int) -> TrainingRun:
        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
        return cls(
            live=live,
            best=BestWeights(monitor, patience),
            timer=EpochTimer(images_per_epoch),
            reduce_lr=keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.5,
                                                        patience=max(1, patience // 2), min_lr=1e-6),
        )

    def fit(self, model: keras.Model, train_data: Any, val_data: Any, epochs: int, **kwargs: Any) -> None:
        """Train for `epochs` more epochs (continuing the epoch count of earlier phases)."""
        if epochs <= 0 or self.best.stopped:
            return
        history = model.fit(
            train_data, validation_data=val_data, initial_epoch=self.epochs_done,
            epochs=self.epochs_done + epochs, verbose=0,
            callbacks=[self.timer, self.best, self.reduce_lr, LiveLogger(self.live)], **kwargs,
        )
        for name, values in history.history.items():
            self.history.setdefault(name, []).extend(float(v) for v in values)
        self.epochs_done += len(history.epoch)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Restore the best weights, log the summary metrics, close dvclive; returns the summary."""
        self.best.restore()
        summary = {
            **summary,
            "best_epoch": self.best.best_epoch + 1,
            f"best_{self.best.monitor}": self.best.best,
            "epochs_trained": self.epochs_done,
            "train_images_per_s": float(np.median(self.timer.rates)) if self.timer.rates else None,
        }
        for key, value in summary.items():
            if isinstance(value, (bool, int, float)) and value is not None:
                self.live.summary[key] = value
        self.live.end()
        return summary


def save_model(model: keras.Model, path: str | Path, sidecar: dict[str, Any]) -> None:
    """Save `model` as .keras and its sidecar JSON next to it (same stem, .json), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        model.save(tmp)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2, default=str))
    log.info("saved %s (+ %s)", path, path.with_suffix(".json").name)


def store_intensity(store: SliceStore) -> dict[str, Any]:
    """How the store's uint8 intensities were made (shared by every patient; a mix is an error)."""
    found = {json.dumps(p["meta"].get("intensity", {"mode": "as_stored", "clip_percentiles": None}), sort_keys=True)
             for p in store.patients.values()}
    if len(found) != 1:
        raise InputError(store.root, f"patients were ingested with different intensity scalings: {sorted(found)}")
    return json.loads(found.pop())


def store_channels(store: SliceStore) -> list[str]:
    """The channel names shared by every patient in the store (a mix is an error)."""
    names = {tuple(p["channels"]) for p in store.patients.values()}
    if len(names) != 1:
        raise InputError(store.root, f"patients have different channel orders: {sorted(names)}")
    return list(names.pop())
