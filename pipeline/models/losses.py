"""Segmentation losses in keras.ops (any Keras 3 backend), computed in float32.

Layout: y_true, y_pred [..., C] with the class channel last, e.g. [B, H, W, C]. Every sum runs
over all axes but the last (batch and spatial together, a "batch Dice"), per class channel;
the result is the mean over channels, a scalar. y_true holds 0/1 (any numeric dtype), y_pred
probabilities in [0, 1]; both are cast to float32, so a mixed-precision model trains with
float32 loss math.

With p = y_pred, q = y_true and epsilon the smoothing term (1 by default):
  soft Dice loss       1 - mean_c (2 Σpq + ε) / (Σp² + Σq² + ε)
  Dice coefficient     mean_c (2 Σpq + ε) / (Σp + Σq + ε)
  Tversky index        TI_c = (Σpq + ε) / (Σpq + α Σ(1-p)q + β Σp(1-q) + ε)
                       α weights false negatives, β false positives (α > β favours recall)
  Tversky loss         1 - mean_c TI_c
  focal Tversky loss   mean_c (1 - TI_c)^γ   (Abraham & Khan 2019; γ < 1 pushes harder near TI = 1)
  BCE + Dice           mean binary cross-entropy + soft Dice loss

Serialization: ``get_loss`` returns an instance of a registered ``keras.losses.Loss`` subclass
(package "pipeline") with ``get_config``, so a model compiled with it saves with its compile
config and loads with ``keras.saving.load_model(path, safe_mode=True)`` (compile=True or False).
"""

from __future__ import annotations

import inspect
from typing import Any

import keras
from keras import ops

from pipeline.models.registry import LOSSES, load

LOSS_NAMES = tuple(LOSSES)  # segmenter.loss: the registry's names
_TINY = 1e-7  # keeps (1 - TI)^γ differentiable at a perfect prediction


def _per_channel(y_true: Any, y_pred: Any) -> tuple[Any, Any, tuple[int, ...]]:
    """Both tensors as float32 and the axes to sum over (all but the last)."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    return y_true, y_pred, tuple(range(len(y_pred.shape) - 1))


def soft_dice_loss(y_true: Any, y_pred: Any, epsilon: float = 1.0) -> Any:
    """1 - mean_c (2 Σpq + ε) / (Σp² + Σq² + ε); scalar float32. Inputs [..., C]."""
    q, p, axes = _per_channel(y_true, y_pred)
    numerator = 2.0 * ops.sum(p * q, axis=axes) + epsilon
    denominator = ops.sum(p * p, axis=axes) + ops.sum(q * q, axis=axes) + epsilon
    return 1.0 - ops.mean(numerator / denominator)


def dice_coefficient(y_true: Any, y_pred: Any, epsilon: float = 1.0) -> Any:
    """mean_c (2 Σpq + ε) / (Σp + Σq + ε); scalar float32 in (0, 1]. Inputs [..., C]."""
    q, p, axes = _per_channel(y_true, y_pred)
    numerator = 2.0 * ops.sum(p * q, axis=axes) + epsilon
    denominator = ops.sum(p, axis=axes) + ops.sum(q, axis=axes) + epsilon
    return ops.mean(numerator / denominator)


def tversky_index(y_true: Any, y_pred: Any, alpha: float = 0.7, beta: float = 0.3, epsilon: float = 1.0) -> Any:
    """Per-channel Tversky index [C]: (TP + ε) / (TP + α FN + β FP + ε), soft counts.

    α weights false negatives Σ(1-p)q, β false positives Σp(1-q). With α = β = 0.5 it equals
    the Dice coefficient (linear denominators) with smoothing 2ε.
    """
    q, p, axes = _per_channel(y_true, y_pred)
    tp = ops.sum(p * q, axis=axes)
    fn = ops.sum((1.0 - p) * q, axis=axes)
    fp = ops.sum(p * (1.0 - q), axis=axes)
    return (tp + epsilon) / (tp + alpha * fn + beta * fp + epsilon)


def tversky_loss(y_true: Any, y_pred: Any, alpha: float = 0.7, beta: float = 0.3, epsilon: float = 1.0) -> Any:
    """1 - mean_c TI_c; scalar float32."""
    return 1.0 - ops.mean(tversky_index(y_true, y_pred, alpha, beta, epsilon))


def focal_tversky_loss(y_true: Any, y_pred: Any, alpha: float = 0.7, beta: float = 0.3, gamma: float = 0.75,
                       epsilon: float = 1.0) -> Any:
    """mean_c (1 - TI_c)^γ; scalar float32."""
    ti = tversky_index(y_true, y_pred, alpha, beta, epsilon)
    return ops.mean(ops.power(ops.maximum(1.0 - ti, _TINY), gamma))


def bce_dice_loss(y_true: Any, y_pred: Any, epsilon: float = 1.0) -> Any:
    """Mean per-element binary cross-entropy (nats) + soft Dice loss; scalar float32."""
    q, p, _ = _per_channel(y_true, y_pred)
    bce = ops.mean(ops.binary_crossentropy(q, p))
    return bce + soft_dice_loss(q, p, epsilon)


@keras.saving.register_keras_serializable(package="pipeline")
class SoftDiceLoss(keras.losses.Loss):
    """``soft_dice_loss`` as a serializable Loss (one scalar per batch)."""

    def __init__(self, epsilon: float = 1.0, name: str = "dice", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.epsilon = float(epsilon)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return soft_dice_loss(y_true, y_pred, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="pipeline")
class TverskyLoss(keras.losses.Loss):
    """``tversky_loss`` as a serializable Loss; alpha weights FN, beta weights FP."""

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, epsilon: float = 1.0, name: str = "tversky",
                 **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.alpha, self.beta, self.epsilon = float(alpha), float(beta), float(epsilon)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return tversky_loss(y_true, y_pred, self.alpha, self.beta, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="pipeline")
class FocalTverskyLoss(keras.losses.Loss):
    """``focal_tversky_loss`` as a serializable Loss; alpha weights FN, beta weights FP."""

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 0.75, epsilon: float = 1.0,
                 name: str = "focal_tversky", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.alpha, self.beta, self.gamma, self.epsilon = float(alpha), float(beta), float(gamma), float(epsilon)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return focal_tversky_loss(y_true, y_pred, self.alpha, self.beta, self.gamma, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="pipeline")
class BCEDiceLoss(keras.losses.Loss):
    """``bce_dice_loss`` as a serializable Loss."""

    def __init__(self, epsilon: float = 1.0, name: str = "bce_dice", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.epsilon = float(epsilon)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return bce_dice_loss(y_true, y_pred, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


def get_loss(name: str, alpha: float = 0.7, beta: float = 0.3, gamma: float = 0.75) -> keras.losses.Loss:
    """The loss named in params (segmenter.loss, one of ``pipeline.models.registry.LOSSES``), given those of
    alpha, beta and gamma its class takes."""
    if name not in LOSSES:
        raise ValueError(f"loss {name!r} is not one of {', '.join(LOSSES)}")
    loss_class = load(LOSSES[name])
    takes = inspect.signature(loss_class).parameters
    return loss_class(**{k: v for k, v in {"alpha": alpha, "beta": beta, "gamma": gamma}.items() if k in takes})
