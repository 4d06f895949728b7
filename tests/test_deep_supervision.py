"""Deep supervision (``segmenter.deep_supervision``): heads on the decoder levels under the top, in training only.

The training model's output is the main output and the heads side by side on the channel axis; the loss is the
segmenter's loss on each block with weights 1, 1/2, 1/4 ... normalised; the metrics score the main output
only; the saved segmenter is the plain model (no head), so evaluate and predict read it as before.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import keras
import numpy as np
import pytest

from pipeline.models.losses import BCEDiceLoss, bce_dice_loss
from pipeline.models.nets.deep_supervision import DeepSupervisedLoss, level_weights, with_deep_supervision
from pipeline.models.nets.segmenter import build_segmenter
from pipeline.models.seg_metrics import DiceAt
from pipeline.params import params_from_dict


def test_level_weights_halve_per_level_and_sum_to_one():
    assert level_weights(0) == [1.0]
    assert np.allclose(level_weights(2), [4 / 7, 2 / 7, 1 / 7])


@pytest.mark.parametrize("arch", ["resunet", "unet"])
def test_the_heads_sit_on_the_decoder_levels_and_come_out_at_full_size(arch):
    model = build_segmenter(arch, 32, (16, 32, 64, 128), out_channels=2)
    assert with_deep_supervision(model, 0) is model
    trained = with_deep_supervision(model, 2)
    assert trained.output_shape == (None, 32, 32, 6)  # main, dec2's head, dec3's head: 2 channels each
    assert trained.get_layer("deep_2_logits").input.shape[1] == 16  # dec2 at 1/2 of the size
    assert trained.get_layer("deep_3_logits").input.shape[1] == 8
    image = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    # the main block is the segmenter's own output: the heads share its layers
    np.testing.assert_allclose(trained.predict(image, verbose=0)[..., :2], model.predict(image, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="no decoder level 4"):
        with_deep_supervision(model, 3)


def test_the_loss_is_the_weighted_sum_over_the_blocks_and_survives_serialisation():
    rng = np.random.default_rng(1)
    y_true = (rng.uniform(size=(2, 8, 8, 3)) > 0.6).astype("float32")  # 3 regions: a block is 3 channels
    main, head = (rng.uniform(0.01, 0.99, (2, 8, 8, 3)).astype("float32") for _ in range(2))
    loss = DeepSupervisedLoss(BCEDiceLoss(), levels=1)
    expected = 2 / 3 * float(bce_dice_loss(y_true, main)) + 1 / 3 * float(bce_dice_loss(y_true, head))
    assert float(loss(y_true, np.concatenate([main, head], axis=-1))) == pytest.approx(expected, rel=1e-5)
    same = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(same.loss, BCEDiceLoss) and same.levels == 1
    assert float(same(y_true, np.concatenate([main, head], axis=-1))) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="has 6 channels for a 3-channel mask, got 9"):
        loss(y_true, np.concatenate([main, head, head], axis=-1))


def test_the_metric_scores_the_main_output_only():
    y_true = np.zeros((1, 4, 4, 3), "float32")
    y_true[0, :2, :, 0] = y_true[0, 1:, :, 1] = y_true[0, :, :1, 2] = 1
    perfect_main_wrong_heads = np.concatenate([y_true, 1 - y_true, 1 - y_true], axis=-1)
    metric = DiceAt(0.5)
    metric.update_state(y_true, perfect_main_wrong_heads)
    assert float(metric.result()) == 1.0


def test_params_take_every_level_under_the_top():  # one more, or a non-number: test_params' bad values
    from tests.test_params import RAW

    raw = copy.deepcopy(RAW)
    raw["segmenter"]["deep_supervision"] = len(raw["segmenter"]["filters"]) - 2
    assert params_from_dict(raw).segmenter.deep_supervision == 3


def test_the_stage_trains_with_heads_and_saves_the_plain_segmenter(tiny_store, monkeypatch):
    from pipeline.stages import train_segmenter

    work, params = tiny_store
    segmenter = {**params.as_dict()["segmenter"], "filters": [16, 32, 64], "epochs_factor": 1, "deep_supervision": 1}
    params = params_from_dict({**params.as_dict(), "segmenter": segmenter})
    params = replace(params, train=replace(params.train, epochs=1, batch_size=4))
    trained = []
    monkeypatch.setattr(train_segmenter, "with_deep_supervision",
                        lambda model, levels: trained.append(with_deep_supervision(model, levels)) or trained[-1])
    monkeypatch.chdir(work)
    train_segmenter.run(params)

    # what trained: the heads, under the weighted loss
    assert trained[0].output_shape == (None, 32, 32, 2) and isinstance(trained[0].loss, DeepSupervisedLoss)
    model = keras.saving.load_model(work / "models/segmenter.keras", compile=False, safe_mode=True)
    assert model.output_shape == (None, 32, 32, 1)  # what was saved: the plain segmenter
    assert not [layer.name for layer in model.layers if layer.name.startswith("deep_")]
    sidecar = json.loads((work / "models/segmenter.json").read_text())
    assert sidecar["params"]["segmenter"]["deep_supervision"] == 1
    assert 0 <= sidecar["training"]["last_val_dice"] <= 1  # the metric of the main output, under its usual name
