"""Training and evaluation batches read from the slice store, with on-the-fly augmentation.

``SliceBatches`` is a ``keras.utils.PyDataset``: backend-neutral (no TensorFlow here), reads the
memory-mapped store one batch at a time and yields ``(x, y)`` or ``(x, y, sample_weight)``:

- x: float32 [B, H, W, 3], values 0..255 (the models normalise inside);
- y: float32 [B, 1] (target "label": has_tumour) or float32 [B, H, W, R] (target "mask": ``task.target_mask(labels,
  region)`` for each of the R ``regions``, by default the whole tumour alone);
  target "label+mask" gives x = (images, masks [B, H, W, 1]) and y the labels, for a classifier that also
  learns where the tumour is (``pipeline.models.nets.classifier.with_localisation_loss``);
- sample_weight: float32 [B], only when ``class_weight`` is given.

Reproducibility: which slices make up batch i of epoch e, and how they are augmented, depend only
on (seed, e, i); never on which worker thread or process computes the batch, nor when.
``on_epoch_end`` advances e. Keras may also shuffle the order in which it asks for the batches
(``fit(shuffle=True)``), which it draws from Python's ``random`` (seeded by
``keras.utils.set_random_seed``).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import keras
import numpy as np
import pandas as pd

from pipeline.data.regions import WHOLE_TUMOUR
from pipeline.data.slices import SliceStore
from pipeline.data.task import target_mask
from pipeline.errors import InputError
from pipeline.models.augment import augment_batch
from pipeline.models.devices import rows_for_this_process
from pipeline.models.padded import fixed_batches, pad_rows  # noqa: F401  (their home before)
from pipeline.params import AugmentParams
from pipeline.sequences import flair_channel

log = logging.getLogger(__name__)

TARGETS = ("label", "mask", "label+mask")

# fit() settings for the PyDataset (measured in benchmarks/bench_batches.py, 2 cores). A batch costs
# ~0.1-0.3 ms a slice (read + augment; augment_batch spreads the slices of a batch over one thread
# per core), under 1% of a training step of either model on a CPU: ~3,000 slices/s of 256 px batches
# on 2 cores. So Keras' own workers stay at one:
# - workers=1: Keras calls __getitem__ from one iterator, in order. Under TensorFlow, tf.data's
#   prefetch still runs it on a background thread, overlapping with the step; under JAX and torch
#   it runs between steps: < 1% of a CPU step, and on a GPU JAX's asynchronous dispatch (Keras
#   copies each batch to the device one step ahead) lets it overlap with the running step.
# - workers > 1 (threads) reach the same throughput but Keras' enqueuer keeps the batches it had
#   prefetched when an epoch is cut short (JAX's first fit takes one batch to build the optimizer)
#   and serves them at the start of the next epoch: which batches a run trains on then depends on
#   thread timing. Not reproducible, so not the default.
# - use_multiprocessing forks the whole trainer every epoch and pickles each batch through a pipe
#   (5-8x less pipeline throughput, and fork after TensorFlow/JAX threads start is fragile).
DEFAULT_WORKERS = 1
DEFAULT_USE_MULTIPROCESSING = False
DEFAULT_MAX_QUEUE_SIZE = 4


def class_weights_from(labels: np.ndarray) -> dict[int, float]:
    """Balanced class weights {0: w0, 1: w1} for binary labels, w_c = n / (2 n_c).

    A class absent from ``labels`` gets weight 1.0 (no sample uses it).
    """
    labels = np.asarray(labels).astype(int).ravel()
    n = len(labels)
    weights = {}
    for c in (0, 1):
        n_c = int((labels == c).sum())
        weights[c] = n / (2 * n_c) if n_c else 1.0
    return weights


def in_memory(store: SliceStore, rows: pd.DataFrame, target: str = "label") -> tuple[Any, np.ndarray]:
    """All slices of ``rows`` as arrays, in row order: (x float32 [N, H, W, 3] 0..255, y), as SliceBatches gives them."""
    _check_target(target)
    images, labels = store.read_rows(rows)
    has_tumour = rows["has_tumour"].to_numpy(bool)
    x = images.astype(np.float32)
    if target == "label+mask":
        x = (x, _targets("mask", has_tumour, labels))
    return x, _targets(target, has_tumour, labels)


class SliceBatches(keras.utils.PyDataset):
    """Batches of slices from a store for ``fit`` / ``evaluate`` / ``predict``.

    store: the slice store. rows: the manifest rows to draw from (columns patient_id, slice_index,
    has_tumour). target: "label", "mask" or "label+mask" (see the module docstring). augment: None (or ``enabled: false``) for no augmentation.
    shuffle: a new random order every epoch; full batches only (``len(rows) // batch_size``
    batches, slices left over differ each epoch). Without shuffle: row order, the last partial
    batch included, so ``predict`` returns one output per row in order.
    balanced: every batch holds half positive, half negative slices, drawn without replacement
    within each pass over a class (the smaller class is cycled); ``len(rows) // batch_size``
    batches an epoch. undersample (balanced batches, random undersampling): an epoch is as many batches as
    the smaller class fills twice over (``2 * min(positives, negatives) // batch_size``), so it sees the
    smaller class about once and as many of the larger, drawn afresh each epoch: fewer steps an epoch.
    class_weight: {0: w0, 1: w1} -> per-sample weights as a third element.
    workers, use_multiprocessing, max_queue_size: how ``fit`` runs ``__getitem__`` (PyDataset).
    regions: the mask channels of target "mask" (``pipeline.data.regions``), whole tumour first.
    by_tumour_area (with shuffle, not balanced): an epoch draws ``len(rows)`` slices with replacement, each with
    probability proportional to ``tumour_area_weights`` (foreground sampling: a slice with much tumour
    comes up more often, as the per-patient 3-D Dice weighs it).
    With ``augment.missing_sequences`` the FLAIR channel is found by name among the store's channels.
    context: n > 0 gives each slice its n stored neighbours either side as channels (2.5-D input,
    ``pipeline.data.context``): x is [B, H, W, 3 * (2n + 1)].
    """

    def __init__(self, store: SliceStore, rows: pd.DataFrame, batch_size: int, target: str = "label",
                 augment: AugmentParams | None = None, shuffle: bool = False, seed: int = 0,
                 class_weight: dict[int, float] | None = None, balanced: bool = False, undersample: bool = False,
                 workers: int = DEFAULT_WORKERS, use_multiprocessing: bool = DEFAULT_USE_MULTIPROCESSING,
                 max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE, regions: tuple[str, ...] = (WHOLE_TUMOUR,),
                 by_tumour_area: bool = False, context: int = 0):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        _check_target(target)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(rows) == 0:
            raise ValueError("no rows to draw batches from")
        self.store = store
        balanced = balanced or undersample
        self.shuffle = shuffle or balanced  # balanced batches are random batches
        self.rows = rows_for_this_process(rows.reset_index(drop=True), shuffled=self.shuffle)  # train.devices
        # undersample: the epoch's share of this process's rows, from the classes of all of them (so every
        # process of a multi-host run makes the same number of steps)
        positive = int(rows["has_tumour"].astype(bool).sum())
        smaller = min(positive, len(rows) - positive)
        self._epoch_rows = 2 * smaller * len(self.rows) // len(rows) if undersample else len(self.rows)
        self.batch_size = batch_size
        self.target = target
        self.regions = tuple(regions)
        self.augment = augment if augment is not None and augment.enabled else None
        self.flair = _flair_channel(store) if self.augment is not None and self.augment.missing_sequences else None
        self.context = context
        self.seed = seed
        self.class_weight = dict(class_weight) if class_weight is not None else None
        self.epoch = 0

        self._patient_ids = self.rows["patient_id"].astype(str).to_numpy()
        self._patient_codes = pd.factorize(self._patient_ids, sort=True)[0]
        self._slice_indices = self.rows["slice_index"].to_numpy(np.int64)
        self._has_tumour = self.rows["has_tumour"].to_numpy(bool)
        positives = np.flatnonzero(self._has_tumour)
        negatives = np.flatnonzero(~self._has_tumour)
        self.balanced = balanced and len(positives) > 0 and len(negatives) > 0
        if balanced and not self.balanced:
            log.warning("balanced batches need positive and negative slices; %d/%d positive: plain shuffling",
                        len(positives), len(rows))
        self._classes = (positives, negatives)
        self._draw_p = None
        if by_tumour_area:
            if not shuffle or self.balanced:
                raise ValueError("by_tumour_area draws shuffled, unbalanced batches")
            weights = tumour_area_weights(self.rows["tumour_pixels"].to_numpy(float))
            self._draw_p = weights / weights.sum()
        self._plan_lock = threading.Lock()
        self._plan: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        n = self._epoch_rows if self.balanced else len(self.rows)
        if self.balanced or self.shuffle:
            return max(1, n // self.batch_size)
        return math.ceil(n / self.batch_size)

    def on_epoch_end(self) -> None:
        """Advance to the next epoch: a new order and new augmentations."""
        self.epoch += 1

    def batch_rows(self, index: int, epoch: int | None = None) -> np.ndarray:
        """Positions in ``rows`` (int [B]) of batch ``index`` in ``epoch`` (default: the current one)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        epoch = self.epoch if epoch is None else epoch
        order = self._epoch_order(epoch)
        chosen = order[index * self.batch_size:(index + 1) * self.batch_size]
        if self.shuffle or self.balanced:  # order within a random batch is free: read patient by patient
            chosen = chosen[np.lexsort((self._slice_indices[chosen], self._patient_codes[chosen]))]
        return chosen

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        """Batch ``index`` of the current epoch: (x, y) or (x, y, sample_weight)."""
        epoch = self.epoch
        chosen = self.batch_rows(index, epoch)
        images, labels = self.store.read(self._patient_ids[chosen].tolist(), self._slice_indices[chosen].tolist(),
                                         self.context)
        rng = np.random.default_rng([self.seed, epoch, index])
        x, labels = augment_batch(images, labels if self.target != "label" else None, rng, self.augment,
                                  flair=self.flair, sequences=self.store.image_shape[-1])
        has_tumour = self._has_tumour[chosen]
        y = _targets(self.target, has_tumour, labels, self.regions)
        if self.target == "label+mask":
            x = (x, _targets("mask", has_tumour, labels, self.regions))
        if self.class_weight is None:
            return x, y
        weights = np.array([self.class_weight.get(int(t), 1.0) for t in has_tumour], np.float32)
        return x, y, weights

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Positions in ``rows`` for the whole of ``epoch``, batch after batch (cached per epoch)."""
        plan = self._plan
        if plan is not None and plan[0] == epoch:
            return plan[1]
        with self._plan_lock:
            if self._plan is not None and self._plan[0] == epoch:
                return self._plan[1]
            order = self._make_order(epoch)
            self._plan = (epoch, order)
            return order

    def _make_order(self, epoch: int) -> np.ndarray:
        n = len(self.rows)
        if not (self.shuffle or self.balanced):
            return np.arange(n)
        rng = np.random.default_rng([self.seed, epoch, 2**31])  # index 2**31: no batch uses it
        if self._draw_p is not None:
            return rng.choice(n, size=n, replace=True, p=self._draw_p)
        if not self.balanced:
            return rng.permutation(n)
        # Balanced: batch i holds n_pos[i] positives, the rest negatives (odd sizes alternate the extra place).
        n_batches = len(self)
        n_pos = np.where(np.arange(n_batches) % 2 == 0, self.batch_size // 2, self.batch_size - self.batch_size // 2)
        positives, negatives = self._classes
        pos = np.split(_cycle(rng, positives, int(n_pos.sum())), np.cumsum(n_pos)[:-1])
        neg = np.split(_cycle(rng, negatives, int((self.batch_size - n_pos).sum())),
                       np.cumsum(self.batch_size - n_pos)[:-1])
        return np.concatenate([np.concatenate([p, q]) for p, q in zip(pos, neg, strict=True)])

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the store's open memory maps (worker processes reopen the store)."""
        state = self.__dict__.copy()
        state["store"] = self.store.root
        state["_plan_lock"] = None
        state["_plan"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["store"] = SliceStore(state["store"])
        state["_plan_lock"] = threading.Lock()
        self.__dict__.update(state)


def tumour_area_weights(tumour_pixels: np.ndarray, floor: float = 0.1) -> np.ndarray:
    """Draw weights of slices by their tumour area (float [N] pixels -> float [N] >= 0, not normalised): the
    area plus ``floor`` x the mean area, so small tumours (and tumour-free slices) still come up, as
    brain-segmentation-pytorch weighs the slices of Buda et al. 2019 (there floor 0.1). All zero: uniform."""
    area = np.asarray(tumour_pixels, float)
    mean = area.mean() if len(area) else 0.0
    return area + floor * mean if mean > 0 else np.ones_like(area)


def _cycle(rng: np.random.Generator, members: np.ndarray, k: int) -> np.ndarray:
    """``k`` draws from ``members``: consecutive random permutations (no repeat within a pass)."""
    passes = math.ceil(k / len(members))
    return np.concatenate([rng.permutation(members) for _ in range(passes)])[:k]


def _flair_channel(store: SliceStore) -> int:
    """Index of FLAIR among the store's channels, which ``augment.missing_sequences`` copies into the others."""
    channels = store.channels
    flair = flair_channel(channels)
    if flair is None:
        raise InputError(store.root, f"augment.missing_sequences needs a flair channel; the slices have {channels}")
    return flair


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")


def _targets(target: str, has_tumour: np.ndarray, labels: np.ndarray | None,
             regions: tuple[str, ...] = (WHOLE_TUMOUR,)) -> np.ndarray:
    """y for a batch: float32 [B, 1] labels (targets "label", "label+mask") or [B, H, W, R] binary masks, one
    channel per region of ``regions``."""
    if target in ("label", "label+mask"):
        return has_tumour.astype(np.float32).reshape(-1, 1)
    return np.stack([target_mask(labels, region) for region in regions], axis=-1).astype(np.float32)
