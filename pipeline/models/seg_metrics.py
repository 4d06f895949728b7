"""Keras metrics for training the segmenter: mean per-image Dice and IoU at a threshold.

Unlike the batch-level soft Dice loss, these score every image on its own and average the
scores over the epoch, the way evaluation reports them. Per image and channel, with A the
predicted mask (y_pred > threshold) and B the true mask (y_true > 0.5):
  Dice = 2|A∩B| / (|A| + |B|),  IoU = |A∩B| / |A∪B|,  and 1.0 when A and B are both empty.
y_pred may have more channels than y_true (a deep-supervised training model's heads after its main output,
``nets.deep_supervision``): only its first C are scored, C = y_true's.
Registered (package "pipeline") with get_config, so compiled models load with safe_mode=True.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


class _OverlapAt(keras.metrics.Metric):
    """Mean over images (and channels) of an overlap score; subclasses define ``_score``."""

    def __init__(self, threshold: float, name: str = "overlap", dtype: Any = None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def _score(self, intersection: Any, size_pred: Any, size_true: Any) -> Any:
        raise NotImplementedError

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """y_true [B, H, W, C], y_pred [B, H, W, >= C] (its first C channels scored); sample_weight, optional,
        [B] (per-image weights)."""
        y_pred = y_pred[..., :y_true.shape[-1]]
        pred = ops.cast(ops.cast(y_pred, "float32") > self.threshold, "float32")
        true = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
        axes = tuple(range(1, len(pred.shape) - 1))
        scores = self._score(ops.sum(pred * true, axis=axes), ops.sum(pred, axis=axes), ops.sum(true, axis=axes))
        if sample_weight is None:
            weights = ops.ones_like(scores)
        else:
            weights = ops.cast(sample_weight, "float32")
            weights = ops.broadcast_to(ops.reshape(weights, (-1,) + (1,) * (len(scores.shape) - 1)), ops.shape(scores))
        self.total.assign_add(ops.sum(scores * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self) -> Any:
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1e-12), 0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="pipeline")
class DiceAt(_OverlapAt):
    """Mean per-image Dice of (y_pred > threshold) vs y_true; empty vs empty counts as 1.0."""

    def __init__(self, threshold: float, name: str = "dice", dtype: Any = None):
        super().__init__(threshold, name=name, dtype=dtype)

    def _score(self, intersection: Any, size_pred: Any, size_true: Any) -> Any:
        sizes = size_pred + size_true
        return ops.where(sizes > 0, 2.0 * intersection / ops.maximum(sizes, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="pipeline")
class IoUAt(_OverlapAt):
    """Mean per-image IoU (Jaccard) of (y_pred > threshold) vs y_true; empty vs empty counts as 1.0."""

    def __init__(self, threshold: float, name: str = "iou", dtype: Any = None):
        super().__init__(threshold, name=name, dtype=dtype)

    def _score(self, intersection: Any, size_pred: Any, size_true: Any) -> Any:
        union = size_pred + size_true - intersection
        return ops.where(union > 0, intersection / ops.maximum(union, 1.0), 1.0)
