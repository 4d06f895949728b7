"""What both training stages share: seeding, determinism, the data they train on, the schedule, callbacks,
dvclive, saving.

Backend-neutral (Keras 3 only): the same code trains under TensorFlow or JAX; the one backend-specific
piece is ``enable_deterministic_ops``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
from dvclive import Live

from pipeline.data.slices import SliceStore
from pipeline.data.split import fold_count, fold_split, read_split, split_manifest
from pipeline.errors import InputError
from pipeline.models import checkpoint
from pipeline.models.devices import use_devices
from pipeline.params import TrainParams
from pipeline.paths import fold_live_dir, fold_model
from pipeline.writing import atomic_path

log = logging.getLogger(__name__)


def setup(train: TrainParams) -> None:
    """Seed Python, NumPy and the backend; deterministic ops (``train.deterministic``); the precision policy;
    the devices (``train.devices``)."""
    seed_everything(train.seed)
    if train.deterministic:
        enable_deterministic_ops()
    keras.mixed_precision.set_global_policy(train.precision_policy)
    use_devices(train.devices, train.batch_size)


def enable_deterministic_ops() -> str:
    """Make the backend's ops deterministic, so one seed gives the same weights on one machine; returns what
    was done. The only backend-specific code of training.

    TensorFlow: ``tf.config.experimental.enable_op_determinism()`` (an op with no deterministic kernel,
    on a GPU, then raises rather than varies: set ``train.deterministic: false`` there), and Grappler's
    memory optimizer off (``disable_memory_optimizer``). JAX on the CPU is deterministic as it is; on a GPU,
    XLA_FLAGS=--xla_gpu_deterministic_ops=true must be set before JAX starts. PyTorch:
    ``torch.use_deterministic_algorithms(True, warn_only=True)``.
    """
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        disable_memory_optimizer()
        return "tensorflow: enable_op_determinism, no memory optimizer"
    if backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
        return "torch: use_deterministic_algorithms"
    return f"{backend}: deterministic as it is on the CPU"


def disable_memory_optimizer() -> None:
    """Turn off TensorFlow's Grappler memory optimizer for the ``tf.function`` calls made after this one.

    Its scheduling pass rewrites an ``AddN`` of three or more tensors (the gradient contributions a tensor gets
    from its consumers: BatchNormalization's input after a conv and an activation has three) into a temporary
    variable that ``AssignAdd``s them in the order they arrive, whenever the graph's estimated peak memory
    exceeds 80% of Grappler's figure for the device's memory (ResNet50 and the ResUNet at 128 px, batch 16,
    on the CPU). Which arrives first depends on thread timing, so on a loaded CPU one seed gave different
    ResUNet weights (a last-bit difference in the first step, grown by training). ``enable_op_determinism``
    covers kernels, not graph rewrites, and TensorFlow has no public switch for this pass, so it is set in
    the eager context's base ``ConfigProto``: later calls on this thread, and on threads that have not yet
    called a ``tf.function``, use it (call it before starting other threads). The cost is the peak memory
    the pass would save.
    """
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    eager = context.context()
    base = config_pb2.ConfigProto()
    if eager._config is not None:
        base.CopyFrom(eager._config)
    base.graph_options.rewrite_options.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
    eager._config = base
    eager._thread_local_data.function_call_options = None  # as set_optimizer_experimental_options does


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


def training_rows(store: SliceStore, split_csv: str | Path, fold: int | None = None) -> dict[str, pd.DataFrame]:
    """Manifest rows of the train and val patients: {"train": rows, "val": rows}.

    fold: with cross-validation folds in the split, fold model `fold`'s rows (``fold_split``: its own fold's
    patients are "val", the other folds' "train"). Test patients are dropped here, so no stage that trains
    or tunes can see them.
    """
    split = read_split(str(split_csv))
    if fold is not None:
        split = fold_split(split, fold)
    elif "fold" in split:
        raise InputError(split_csv, "has cross-validation folds (split.folds > 1): the models train fold by fold")
    rows = split_manifest(store.manifest, split)
    parts = {name: rows[rows.split == name].reset_index(drop=True) for name in ("train", "val")}
    for name, part in parts.items():
        if part.empty:
            raise InputError(split_csv, f"the {name} split has no slices")
    return parts


def train_folds(split_csv: str | Path, model: Path, folder: Path, live_dir: Path,
                train_one: Callable[[int | None, int], None]) -> None:
    """Train the models a training stage trains, from the split: ``train_one(None, 1)`` for a single split,
    else ``train_one(fold, k)`` for the folds 0..k-1 (``training_rows``' fold argument), whose models are
    ``fold_model(model, fold)``. Empties ``folder`` (models/folds/<kind>) and ``live_dir``/folds first, and
    leaves them (empty with one split), so a stage's outputs never mix runs with different fold counts.
    A fold finished before an interruption of this stage is restored instead of trained again, and each
    fold trained is kept until all are (``checkpoint.keep_fold``)."""
    k = fold_count(read_split(str(split_csv)))
    for path in (folder, live_dir / "folds"):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    if k == 1:
        checkpoint.remove_folds(live_dir)  # fold models kept by an earlier, interrupted run with folds
        train_one(None, 1)
        return
    log.info("cross-validation: training %d fold models", k)
    for fold in range(k):
        if not checkpoint.restore_fold(live_dir, fold, k):
            train_one(fold, k)
            saved = fold_model(model, fold)
            checkpoint.keep_fold(live_dir, fold, [saved, saved.with_suffix(".json"), fold_live_dir(live_dir, fold)])
    checkpoint.remove_folds(live_dir)


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


def poly_lr(base: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """nnU-Net's poly decay: the learning rate of epoch `epoch` (0-based) of `epochs`, base x (1 - epoch/epochs)^power."""
    return float(base * (1.0 - min(epoch, epochs) / epochs) ** power)


class PolyDecay(keras.callbacks.Callback):
    """The fixed schedule's learning rate: ``poly_lr`` per epoch, the epoch counted over all phases (``fit``'s
    epoch index continues across them through initial_epoch), of `epochs` in all.

    The base is the optimizer's learning rate when it is first seen: each phase compiles its own optimizer
    (warm-up at train.lr, fine-tuning at a fraction of it), and each decays along the one curve.
    Logs ``learning_rate`` for dvclive.
    """

    def __init__(self, epochs: int, power: float = 0.9):
        super().__init__()
        self.epochs, self.power = epochs, power
        self._optimizer: Any = None
        self.base = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        optimizer = self.model.optimizer
        if optimizer is not self._optimizer:  # a new phase: its compiled learning rate is the base
            self._optimizer = optimizer
            self.base = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        optimizer.learning_rate = poly_lr(self.base, epoch, self.epochs, self.power)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class BestWeights(keras.callbacks.Callback):
    """Track the best epoch on a validation metric across several fit calls; stop after `patience`.

    Unlike EarlyStopping, one instance survives warm-up and fine-tuning phases; call
    ``restore()`` after the last phase to put the best weights back. patience None: only observe
    (the fixed schedule: never stops, keeps no weights, ``restore`` does nothing).
    """

    def __init__(self, monitor: str, patience: int | None, mode: str = "max"):
        super().__init__()
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.best: float | None = None
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None
        self.wait = 0
        self.stopped = False
        self.last: float | None = None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        self.last = float(value)
        if self._better(float(value)):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            if self.patience is not None:
                self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.patience is not None and self.wait >= self.patience:
                log.info("early stopping: %s has not improved for %d epochs", self.monitor, self.patience)
                self.model.stop_training = True
                self.stopped = True

    def restore(self) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            log.info("restored the best weights: epoch %d, %s = %.4f", self.best_epoch + 1, self.monitor, self.best)


class WeightAverage(keras.callbacks.Callback):
    """The mean of the model's weights at the ends of the last `epochs` of `total` epochs (counted over all
    phases): the uniform mean of stochastic weight averaging (Izmailov et al. 2018), here along the poly
    decay's last, small steps. Unlike SWA, BatchNormalization's statistics are averaged with the weights (as
    timm's model EMA does), not recomputed; integer variables keep their last value. ``apply()`` puts the
    mean into the model. The training log's validation metrics are the last epoch's weights', not the mean's.
    """

    def __init__(self, epochs: int, total: int):
        super().__init__()
        if not 1 <= epochs <= total:
            raise ValueError(f"cannot average the last {epochs} of {total} epochs")
        self.epochs, self.total = epochs, total
        self.mean: list[np.ndarray] | None = None  # float64, one per model.weights
        self.count = 0  # epochs in the mean so far

    def counted(self, epochs_done: int) -> int:
        """How many epochs are in the mean after `epochs_done` epochs."""
        return max(0, epochs_done - (self.total - self.epochs))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        count = self.counted(epoch + 1)
        if not count:
            return
        weights = self.model.get_weights()
        if self.mean is None:
            self.mean = [np.zeros(w.shape, np.float64) for w in weights]
        self.count = count
        for mean, w in zip(self.mean, weights, strict=True):
            mean += (w - mean) / self.count  # the running mean, in float64

    def apply(self) -> None:
        if self.mean is None:
            return
        last = self.model.get_weights()
        self.model.set_weights([m.astype(w.dtype) if keras.backend.is_float_dtype(w.dtype) else w
                                for m, w in zip(self.mean, last, strict=True)])
        log.info("kept the mean of the weights after the last %d epochs (%d to %d)", self.count,
                 self.total - self.count + 1, self.total)


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
    """Callbacks and bookkeeping for one model's training, shared by its phases.

    schedule "fixed": exactly `epochs` epochs with ``PolyDecay``; the last weights are kept (or, with
    `average`, the mean of the last epochs' weights) and the validation metric is only logged.
    "early_stop": ``BestWeights`` stops after `patience` epochs without improvement, ReduceLROnPlateau
    halves the rate, and the best epoch's weights are kept.
    """

    live: Live
    best: BestWeights
    timer: EpochTimer
    lr_schedule: keras.callbacks.Callback
    schedule: str = "early_stop"
    epochs: int | None = None  # planned, over all phases
    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    checkpoint_dir: Path | None = None  # .checkpoints/<live dir> (pipeline.models.checkpoint); None: none kept
    resume_state: dict[str, Any] | None = None  # the checkpoint to resume from, until restored
    average: WeightAverage | None = None  # fixed schedule: the last epochs' weights averaged (train.average_last)
    phases: int = 0  # fit calls so far

    @classmethod
    def start(cls, live_dir: str | Path, monitor: str, patience: int, images_per_epoch: int,
              schedule: str = "early_stop", epochs: int | None = None, average_last: float = 0.0) -> TrainingRun:
        """`average_last` (fixed schedule): keep the mean of the weights after the last fraction of `epochs`
        (rounded to the nearest epoch, at least one) instead of the last weights."""
        folder = checkpoint.folder_for(live_dir)
        state = checkpoint.read(folder)
        if state is not None:
            checkpoint.restore_live(folder, live_dir)
        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None, resume=state is not None)
        if schedule == "fixed":
            if not epochs:
                raise ValueError("the fixed schedule needs its number of epochs")
            best, lr_schedule = BestWeights(monitor, None), PolyDecay(epochs)
        elif average_last:
            raise ValueError("only the fixed schedule averages its last epochs")
        else:
            best = BestWeights(monitor, patience)
            lr_schedule = keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.5,
                                                            patience=max(1, patience // 2), min_lr=1e-6)
        average = WeightAverage(max(1, round(average_last * epochs)), epochs) if average_last else None
        kept = f"the mean of the last {average.epochs} epochs' weights kept" if average else "the last weights kept"
        log.info("schedule %s: %s", schedule, f"{epochs} epochs, poly learning-rate decay, {kept}"
                 if schedule == "fixed" else f"up to {epochs} epochs, early stopping on {monitor} "
                                             f"(patience {patience}), the best weights kept")
        return cls(live=live, best=best, timer=EpochTimer(images_per_epoch), lr_schedule=lr_schedule,
                   schedule=schedule, epochs=epochs, checkpoint_dir=folder, resume_state=state, average=average)

    def fit(self, model: keras.Model, train_data: Any, val_data: Any, epochs: int, **kwargs: Any) -> None:
        """Train for `epochs` more epochs (continuing the epoch count of earlier phases); resumed from the
        checkpoint when one was made in this phase or a later one (``pipeline.models.checkpoint``)."""
        phase, end = self.phases, self.epochs_done + epochs
        self.phases += 1
        if self.resume_state is not None:
            if self.resume_state["phase"] > phase:  # done before the interruption
                self.epochs_done = end
                return
            checkpoint.restore(self, model, self.checkpoint_dir, self.resume_state)
            self.live.step = self.resume_state["live_step"]
            self.resume_state = None
            for data in (train_data, val_data):
                if hasattr(data, "epoch"):  # SliceBatches: its shuffling and augmentation go by epoch
                    data.epoch = checkpoint.data_epoch(self.epochs_done, phase, self.epochs_done >= end)
        if end <= self.epochs_done or self.best.stopped:
            return
        saving = [checkpoint.EpochCheckpoint(self, self.checkpoint_dir, phase)] if self.checkpoint_dir else []
        # shuffle=False unless asked: SliceBatches shuffles its own rows, seeded by epoch; Keras' shuffle would
        # reorder the batches with Python's global `random`, whose state a resumed run could not have.
        kwargs.setdefault("shuffle", False)
        history = model.fit(
            train_data, validation_data=val_data, initial_epoch=self.epochs_done,
            epochs=end, verbose=0,
            callbacks=[self.timer, self.best, self.lr_schedule, *([self.average] if self.average else []),
                       LiveLogger(self.live), *saving], **kwargs,
        )
        for name, values in history.history.items():
            self.history.setdefault(name, []).extend(float(v) for v in values)
        self.epochs_done += len(history.epoch)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Restore the best weights (early_stop; fixed keeps the last, or their mean over the last epochs), log
        the summary metrics, close dvclive; returns the summary. best_epoch and best_<monitor> are recorded
        under both schedules (under fixed as an observation only: they chose nothing)."""
        self.best.restore()
        averaged = 0
        if self.average is not None:
            self.average.apply()
            averaged = self.average.count
        summary = {
            **summary,
            "schedule": self.schedule,
            "kept": "best" if self.schedule == "early_stop" else "average" if averaged else "last",
            "averaged_epochs": averaged,
            "epochs_planned": self.epochs,
            "best_epoch": self.best.best_epoch + 1,
            f"best_{self.best.monitor}": self.best.best,
            f"last_{self.best.monitor}": self.best.last,
            "epochs_trained": self.epochs_done,
            "train_images_per_s": float(np.median(self.timer.rates)) if self.timer.rates else None,
        }
        for key, value in summary.items():
            if isinstance(value, (bool, int, float)) and value is not None:
                self.live.summary[key] = value
        self.live.end()
        checkpoint.remove(self.checkpoint_dir)
        return summary


def save_model(model: keras.Model, path: str | Path, sidecar: dict[str, Any]) -> None:
    """Save `model` as .keras (in float32: ``float32_copy``) and its sidecar JSON next to it (same stem,
    .json), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        float32_copy(model).save(tmp)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2, default=str))
    log.info("saved %s (+ %s)", path, path.with_suffix(".json").name)


def float32_copy(model: keras.Model) -> keras.Model:
    """`model` with every layer computing in float32 and the same weights (`model` itself when it already
    does). A mixed-precision run (``train.mixed_precision``) trains in float16 / bfloat16 but its variables
    are float32; the saved model is float32, so evaluate, predict and the ONNX export (ONNX Runtime has no
    bfloat16 kernels on the CPU) read it as any other."""
    policy = keras.config.dtype_policy()
    if policy.name == "float32":
        return model
    keras.config.set_dtype_policy("float32")  # for what the config leaves to the global policy (inputs, the model)
    try:
        copy = model.__class__.from_config(_float32_config(model.get_config()))
    finally:
        keras.config.set_dtype_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def _float32_config(config: Any) -> Any:
    """A layer / model config with every mixed dtype policy replaced by float32 (recursively)."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and config.get("config", {}).get("name", "").startswith("mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def store_intensity(store: SliceStore) -> dict[str, Any]:
    """How the store's uint8 intensities were made (shared by every patient; a mix is an error)."""
    found = {json.dumps(p["meta"].get("intensity", {"mode": "as_stored", "clip_percentiles": None}), sort_keys=True)
             for p in store.patients.values()}
    if len(found) != 1:
        raise InputError(store.root, f"patients were ingested with different intensity scalings: {sorted(found)}")
    return json.loads(found.pop())
