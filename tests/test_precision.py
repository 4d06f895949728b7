"""train.mixed_precision: a model trained in float16 / bfloat16 is saved in float32 (its variables are float32
anyway), so evaluate, predict and the ONNX export read it like any other."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.models.nets.resunet import build_resunet
from pipeline.models.training import float32_copy, save_model


@pytest.fixture
def bfloat16_policy():
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(before)


def compute_dtypes(model: keras.Model) -> set[str]:
    return {layer.dtype_policy.name for layer in model._flatten_layers()}


def test_a_bfloat16_model_is_saved_in_float32(tmp_path, bfloat16_policy):
    model = build_resunet(32, (8, 16), 1)
    rng = np.random.default_rng(0)  # off their init (biases 0), BN variances still positive
    model.set_weights([(w + rng.normal(0, 0.02, w.shape)).astype("float32") for w in model.get_weights()])
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    save_model(model, tmp_path / "segmenter.keras", {"kind": "segmenter"})
    assert "mixed_bfloat16" in compute_dtypes(model)  # the trained model itself is left as it was
    keras.config.set_dtype_policy("float32")
    loaded = keras.saving.load_model(tmp_path / "segmenter.keras")
    assert compute_dtypes(loaded) == {"float32"}
    for saved, trained in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, trained)
    in_float32, in_bfloat16 = np.asarray(loaded(x)), np.asarray(model(x))
    assert 0 < np.abs(in_float32 - in_bfloat16).max() < 0.1  # the same net, computed more finely


def test_a_float32_model_is_saved_as_it_is():
    model = build_resunet(32, (8, 16), 1)
    assert float32_copy(model) is model
