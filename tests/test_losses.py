"""Segmentation losses and training metrics: GUIDE reference values, conventions, serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.models import losses as L
from pipeline.models.seg_metrics import DiceAt, IoUAt

EYE = np.eye(2)
LABEL_A = np.array([[1, 1], [0, 0]])
LABEL_B = np.array([[1, 1], [0, 1]])
PRED_SOFT = np.array([[1, 0.8], [0, 1]])


def one(a: np.ndarray) -> np.ndarray:
    """One 2x2 image with one class channel: [1, 2, 2, 1] float32."""
    return np.asarray(a, np.float32)[None, :, :, None]


def classes(*arrays: np.ndarray) -> np.ndarray:
    """One 2x2 image with the arrays as class channels: [1, 2, 2, C] float32."""
    return np.stack(arrays, axis=-1).astype(np.float32)[None]


def value(x) -> float:
    return float(keras.ops.convert_to_numpy(x))


# ----------------------------------------------------------------------------- GUIDE reference values


@pytest.mark.parametrize("pred, label, expected", [
    (EYE, LABEL_A, 0.4000),
    (0.5 * EYE, LABEL_A, 0.4286),
    (EYE, LABEL_B, 0.1667),
    (PRED_SOFT, LABEL_B, 0.0060),
])
def test_soft_dice_loss_guide_values(pred, label, expected) -> None:
    assert value(L.soft_dice_loss(one(label), one(pred), epsilon=1)) == pytest.approx(expected, abs=5e-5)
    assert value(L.get_loss("dice")(one(label), one(pred))) == pytest.approx(expected, abs=5e-5)


def test_soft_dice_loss_guide_two_classes() -> None:
    label, pred = classes(LABEL_A, LABEL_B), classes(0.5 * EYE, PRED_SOFT)
    assert value(L.soft_dice_loss(label, pred, epsilon=1)) == pytest.approx(0.2173, abs=5e-5)


def test_dice_coefficient_guide_values() -> None:
    assert value(L.dice_coefficient(one(LABEL_A), one(EYE), epsilon=1)) == pytest.approx(0.6000, abs=5e-5)
    assert value(L.dice_coefficient(one(LABEL_B), one(EYE), epsilon=1)) == pytest.approx(0.8333, abs=5e-5)
    mean = L.dice_coefficient(classes(LABEL_A, LABEL_B), classes(EYE, EYE), epsilon=1)
    assert value(mean) == pytest.approx(0.7167, abs=5e-5)


def test_sums_run_over_batch_and_space_per_channel() -> None:
    # two images of one channel = the same pixels tiled into one image
    label = np.stack([LABEL_A, LABEL_B])[..., None].astype(np.float32)
    pred = np.stack([EYE, PRED_SOFT])[..., None].astype(np.float32)
    tiled_label = np.concatenate([LABEL_A, LABEL_B], axis=1)
    tiled_pred = np.concatenate([EYE, PRED_SOFT], axis=1)
    assert value(L.soft_dice_loss(label, pred)) == pytest.approx(value(L.soft_dice_loss(one(tiled_label), one(tiled_pred))))


# -------------------------------------------------------------------------------------- other losses


def test_tversky_half_half_is_dice_with_linear_denominators() -> None:
    label, pred = classes(LABEL_A, LABEL_B), classes(0.5 * EYE, PRED_SOFT)
    ti = L.tversky_index(label, pred, alpha=0.5, beta=0.5, epsilon=0.5)
    assert value(keras.ops.mean(ti)) == pytest.approx(value(L.dice_coefficient(label, pred, epsilon=1)), abs=1e-6)
    assert value(L.tversky_loss(label, pred, 0.5, 0.5, epsilon=0.5)) == pytest.approx(1 - value(keras.ops.mean(ti)))


def test_tversky_alpha_weights_false_negatives() -> None:
    label = one([[1, 1], [0, 0]])
    missed = one([[1, 0], [0, 0]])  # one false negative
    extra = one([[1, 1], [1, 0]])  # one false positive
    fn_heavy = {"alpha": 0.7, "beta": 0.3}
    assert value(L.tversky_loss(label, missed, **fn_heavy)) > value(L.tversky_loss(label, extra, **fn_heavy))
    # hand count for `missed`: TP 1, FN 1, FP 0 -> (1 + 1) / (1 + 0.7 + 1)
    assert value(L.tversky_index(label, missed, **fn_heavy)[0]) == pytest.approx(2 / 2.7, abs=1e-6)


def test_focal_tversky() -> None:
    label, pred = one(LABEL_B), one(PRED_SOFT * 0.6)
    t = value(L.tversky_loss(label, pred, 0.7, 0.3))
    assert value(L.focal_tversky_loss(label, pred, 0.7, 0.3, gamma=1.0)) == pytest.approx(t, abs=1e-6)
    assert value(L.focal_tversky_loss(label, pred, 0.7, 0.3, gamma=0.75)) == pytest.approx(t ** 0.75, abs=1e-6)
    perfect = value(L.focal_tversky_loss(label, label, 0.7, 0.3, 0.75))
    assert np.isfinite(perfect) and perfect < 1e-4


def test_bce_dice_is_the_sum_of_its_parts() -> None:
    label, pred = one(LABEL_B), one(np.clip(PRED_SOFT, 0.1, 0.9))
    q, p = label.ravel(), pred.ravel()
    bce = float(np.mean(-(q * np.log(p) + (1 - q) * np.log(1 - p))))
    expected = bce + value(L.soft_dice_loss(label, pred))
    assert value(L.bce_dice_loss(label, pred)) == pytest.approx(expected, abs=1e-5)


def test_float16_predictions_give_float32_loss() -> None:
    label, pred = classes(LABEL_A, LABEL_B), classes(0.5 * EYE, PRED_SOFT)
    for name in L.LOSS_NAMES:
        loss = L.get_loss(name)
        out = loss(label.astype(np.uint8), pred.astype(np.float16))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert value(out) == pytest.approx(value(loss(label, pred)), abs=1e-3)


# ------------------------------------------------------------------------------------- serialization


@pytest.mark.parametrize("name", L.LOSS_NAMES)
def test_get_loss_round_trips_through_safe_mode_serialization(name) -> None:
    loss = L.get_loss(name, alpha=0.6, beta=0.4, gamma=0.8)
    assert loss.name == name
    config = keras.saving.serialize_keras_object(loss)
    assert config["registered_name"].startswith("pipeline>")
    restored = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    label, pred = classes(LABEL_A, LABEL_B), classes(0.5 * EYE, PRED_SOFT)
    assert value(restored(label, pred)) == pytest.approx(value(loss(label, pred)))


def test_get_loss_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="dice"):
        L.get_loss("jaccard")


# ------------------------------------------------------------------------------------ training metrics


def batch() -> tuple[np.ndarray, np.ndarray]:
    """Three 2x2 images [3, 2, 2, 1]: a half overlap, empty vs empty, a miss."""
    y_true = np.stack([LABEL_A, np.zeros((2, 2)), LABEL_B])[..., None].astype(np.float32)
    y_pred = np.stack([EYE * 0.9, np.full((2, 2), 0.2), np.zeros((2, 2))])[..., None].astype(np.float32)
    return y_true, y_pred


def test_dice_and_iou_at_threshold_per_image_means() -> None:
    y_true, y_pred = batch()
    dice, iou = DiceAt(0.5), IoUAt(0.5)
    assert (dice.name, iou.name) == ("dice", "iou")
    dice.update_state(y_true, y_pred)
    iou.update_state(y_true, y_pred)
    # per image Dice: 2*1/(2+2)=0.5, 1 (empty vs empty), 0; IoU: 1/3, 1, 0
    assert value(dice.result()) == pytest.approx((0.5 + 1 + 0) / 3, abs=1e-6)
    assert value(iou.result()) == pytest.approx((1 / 3 + 1 + 0) / 3, abs=1e-6)
    # accumulates over batches, per image
    dice.update_state(y_true[:1], y_pred[:1])
    assert value(dice.result()) == pytest.approx((0.5 + 1 + 0 + 0.5) / 4, abs=1e-6)
    dice.reset_state()
    assert value(dice.result()) == 0.0
    # the threshold matters: at 0.95 the first image predicts nothing
    strict = DiceAt(0.95)
    strict.update_state(y_true, y_pred)
    assert value(strict.result()) == pytest.approx(1 / 3, abs=1e-6)


def test_metric_sample_weight_and_serialization() -> None:
    y_true, y_pred = batch()
    dice = DiceAt(0.5)
    dice.update_state(y_true, y_pred, sample_weight=np.array([1.0, 0.0, 1.0], np.float32))
    assert value(dice.result()) == pytest.approx(0.25, abs=1e-6)
    for metric in (DiceAt(0.3), IoUAt(0.7)):
        config = keras.saving.serialize_keras_object(metric)
        restored = keras.saving.deserialize_keras_object(config, safe_mode=True)
        assert type(restored) is type(metric)
        assert restored.threshold == metric.threshold and restored.name == metric.name
