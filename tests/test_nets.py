"""Model builders: preprocessing layers, the classifier (weights handling, flat graph, stages) and
the ResUNet (shapes, no pooling), each saved and reloaded with safe_mode=True. Tiny sizes (32 px);
no test ever downloads anything (the Keras fetch is patched to fail)."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest

import pipeline.models.nets  # noqa: F401  (registers the custom objects)
from pipeline.errors import InputError
from pipeline.models.losses import get_loss
from pipeline.models.nets.classifier import (
    BACKBONES,
    backbone_stages,
    build_classifier,
    set_trainable_stages,
    with_localisation_loss,
    zero_init_residual_branches,
)
from pipeline.models.nets.layers import BackbonePreprocess, PerImageStandardization
from pipeline.models.nets.resunet import build_resunet, residual_unit
from pipeline.models.seg_metrics import DiceAt, IoUAt

SIZE = 32
SMALL = (4, 8, 16)


def uint8_images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """float32 [n, size, size, 3] holding uint8 values 0..255."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every Keras weights fetch fail at once, as it does offline; records the file names asked for.

    keras.applications call ``keras.src.utils.file_utils.get_file`` through the module, so that is
    the attribute to patch; ``keras.utils.get_file`` is patched too for any direct caller.
    """
    from keras.src.utils import file_utils

    asked: list[str] = []

    def fail(fname: str | None = None, origin: str | None = None, **_: object) -> str:
        asked.append(str(fname))
        raise Exception(f"URL fetch failure on {origin}: None -- no network in tests")

    monkeypatch.setattr(file_utils, "get_file", fail)
    monkeypatch.setattr(keras.utils, "get_file", fail)
    return asked


@pytest.fixture(scope="module")
def resnet() -> tuple[keras.Model, dict]:
    return build_classifier(SIZE, "resnet50", weights="none", dropout=0.3)


# ----------------------------------------------------------------------------------- preprocessing layers


@pytest.mark.parametrize("mode, reference", [
    ("caffe", keras.applications.resnet50.preprocess_input),
    ("tf", keras.applications.resnet_v2.preprocess_input),
    ("torch", keras.applications.densenet.preprocess_input),
    ("none", keras.applications.efficientnet.preprocess_input),
])
def test_backbone_preprocess_matches_keras_applications(mode, reference) -> None:
    x = uint8_images(2, 8)
    expected = reference(x.copy())
    got = keras.ops.convert_to_numpy(BackbonePreprocess(mode)(x))
    if mode == "caffe":
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(got[..., 0], x[..., 2] - 103.939, atol=1e-4)  # BGR, mean-subtracted
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_backbone_preprocess_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        BackbonePreprocess("imagenet")


def test_per_image_standardization() -> None:
    x = uint8_images(2, 16)
    x[1] = 77.0  # a constant image
    y = keras.ops.convert_to_numpy(PerImageStandardization()(x))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[1], 0.0)
    np.testing.assert_allclose(y[0].mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y[0].std(axis=(0, 1)), 1.0, atol=1e-4)
    # per channel, not across channels
    x2 = x[:1].copy()
    x2[..., 1] *= 0.1
    y2 = keras.ops.convert_to_numpy(PerImageStandardization()(x2))
    np.testing.assert_allclose(y2[0].std(axis=(0, 1)), 1.0, atol=1e-4)


# ------------------------------------------------------------------------------------------- classifier


def test_resnet50_graph_is_flat_and_reaches_last_conv(resnet) -> None:
    model, info = resnet
    assert info["last_conv_layer"] == "conv5_block3_out"
    conv5 = model.get_layer("conv5_block3_out")
    assert conv5 in model.layers
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # no nested backbone
    assert model.layers[0].name == "image"
    assert model.output.shape == (None, 1)
    assert model.get_layer("tumour_probability").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("preprocess").mode == "caffe"
    # Grad-CAM's sub-model: image -> (last conv maps, probability)
    grad_model = keras.Model(model.input, [conv5.output, model.output])
    maps, prob = grad_model(uint8_images(2))
    assert tuple(maps.shape) == (2, 1, 1, 2048) and tuple(prob.shape) == (2, 1)


def test_zero_init_makes_every_resnet50_residual_block_start_as_the_identity() -> None:
    model, info = build_classifier(SIZE, "resnet50", weights="none")
    assert zero_init_residual_branches(model, info) == 16  # 3 + 4 + 6 + 3 bottleneck blocks
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    zeroed = {layer.name for layer in bns if not keras.ops.convert_to_numpy(layer.gamma).any()}
    assert zeroed == {f"conv{s}_block{b}_3_bn" for s, n in ((2, 3), (3, 4), (4, 6), (5, 3)) for b in range(1, n + 1)}
    assert all(np.all(keras.ops.convert_to_numpy(layer.gamma) == 1) for layer in bns if layer.name not in zeroed)
    # an identity block now passes its (post-ReLU, so non-negative) input through unchanged
    probe = keras.Model(model.input, [model.get_layer("conv3_block1_out").output,
                                      model.get_layer("conv3_block2_out").output])
    block_in, block_out = (keras.ops.convert_to_numpy(t) for t in probe(uint8_images(2)))
    assert block_in.any()
    np.testing.assert_allclose(block_out, block_in, rtol=1e-6)
    other, other_info = build_classifier(SIZE, "densenet121", weights="none")
    assert zero_init_residual_branches(other, other_info) == 0


@pytest.mark.parametrize("backbone", ["resnet50v2", "densenet121", "efficientnetb0"])
def test_other_backbones_build_with_their_last_conv_layer(backbone) -> None:
    model, info = build_classifier(SIZE, backbone, weights="none")
    assert info == {"backbone": backbone, "preprocessing": BACKBONES[backbone].preprocessing,
                    "last_conv_layer": BACKBONES[backbone].last_conv_layer, "pretrained": False,
                    "weights_source": "none"}
    assert len(model.get_layer(info["last_conv_layer"]).output.shape) == 4
    stages = backbone_stages(model, info)
    assert model.get_layer(info["last_conv_layer"]) in stages[-1]
    set_trainable_stages(model, info, 1)
    assert all(w.trainable is False for layer in stages[0] for w in layer.weights)
    assert any(layer.trainable_weights for layer in stages[-1])


def test_imagenet_download_failure_falls_back_to_random_init(no_download, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.models.nets.classifier"):
        model, info = build_classifier(SIZE, "resnet50", weights="imagenet")
    assert no_download == ["resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"]
    assert info["pretrained"] is False
    assert info["weights_source"] == "imagenet-unavailable"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ImageNet weights unavailable" in warnings[0].getMessage()
    assert "random initialisation" in warnings[0].getMessage()
    model.get_layer("conv5_block3_out")


def test_weights_from_path_load_into_the_backbone(tmp_path: Path, no_download) -> None:
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    source.save_weights(path)
    model, info = build_classifier(SIZE, "resnet50", weights=str(path))
    assert info["pretrained"] is True and info["weights_source"] == str(path)
    assert no_download == []
    for layer in (layer for layer in source.layers if layer.weights):
        for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_bad_weights_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        build_classifier(SIZE, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="backbone"):
        build_classifier(SIZE, backbone="vgg16", weights="none")


def test_classifier_save_load_safe_mode_same_predictions(resnet, tmp_path: Path) -> None:
    model, _ = resnet
    x = uint8_images(2)
    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    assert loaded.get_layer("preprocess").get_config()["mode"] == "caffe"
    loaded.get_layer("conv5_block3_out")


def test_localisation_loss_is_the_cross_entropy_of_tumour_cells_and_leaves_the_model_as_it_was() -> None:
    """The training wrapper adds weight x mean BCE(cell holds tumour, cell logit) over the 4x4 cells of the
    explained conv map, returns the model's own probability, and shares its weights."""
    image = keras.Input((SIZE, SIZE, 3), name="image")
    features = keras.layers.Conv2D(4, 8, strides=8, name="last_conv")(image)  # [B, 4, 4, 4]: 8 px cells
    probability = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(features))
    model = keras.Model(image, probability)
    trainer = with_localisation_loss(model, "last_conv", 2.0)
    x = uint8_images(3)
    truth = np.zeros((3, SIZE, SIZE, 1), np.float32)
    truth[0, 0:2, 0:2] = 1  # cell (0, 0)
    truth[1, 20:30, 9] = 1  # cells (2, 1) and (3, 1); slice 2 is tumour-free
    out = trainer([x, truth], training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), model.predict_on_batch(x), rtol=1e-5, atol=1e-6)

    cells = keras.Model(trainer.inputs, trainer.get_layer("tumour_cells").output)([x, truth])
    logits = keras.ops.convert_to_numpy(cells)[..., 0].astype(np.float64)  # [3, 4, 4]
    target = np.zeros((3, 4, 4))
    target[0, 0, 0] = target[1, 2, 1] = target[1, 3, 1] = 1
    bce = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
    assert len(trainer.losses) == 1
    assert float(keras.ops.convert_to_numpy(trainer.losses[0])) == pytest.approx(2.0 * bce.mean(), rel=1e-4)
    assert {id(w) for w in model.weights} < {id(w) for w in trainer.weights}  # shared, plus the cell head

    trainer.compile(optimizer="adam", loss="binary_crossentropy")  # one step trains on this backend
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    trainer.fit((x, truth), np.array([[1], [1], [0]], np.float32), batch_size=3, epochs=1, verbose=0)
    assert any(not np.array_equal(b, keras.ops.convert_to_numpy(w)) for b, w in zip(before, model.weights))

    odd = keras.layers.Conv2D(4, 3, strides=5, name="odd_conv")(image)  # 6x6 cells: 32 px is not 6 whole cells
    odd_model = keras.Model(image, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(odd)))
    with pytest.raises(ValueError, match="not a whole number of 'odd_conv' cells"):
        with_localisation_loss(odd_model, "odd_conv", 1.0)


def test_max_cell_head_decides_by_its_most_tumorous_cell_and_grad_cam_peaks_there() -> None:
    """Head "max_cell": probability = sigmoid(max over cells of a 1x1-conv logit of the last conv map), so
    Grad-CAM on that map peaks at the cell that decided; the localisation loss trains those same cells."""
    from pipeline.evaluation.explain import grad_cam_cells

    keras.utils.set_random_seed(0)  # random weights: seeded, so the argmax comparison below is not a coin toss
    model, info = build_classifier(64, "resnet50", weights="none", head="max_cell")  # 2x2 cells
    x = uint8_images(4, size=64, seed=3)
    cells = keras.Model(model.input, model.get_layer("tumour_cells").output).predict_on_batch(x)[..., 0]  # [4, 2, 2]
    probability = model.predict_on_batch(x)[:, 0]
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-cells.reshape(4, -1).max(1))), rtol=1e-4, atol=1e-6)
    cam = grad_cam_cells(model, x, info["last_conv_layer"])
    assert (cam.reshape(4, -1).argmax(1) == cells.reshape(4, -1).argmax(1)).all()

    trainer = with_localisation_loss(model, info["last_conv_layer"], 1.0)
    assert len(trainer.weights) == len(model.weights)  # the decision's own cells learn where tumour is
    set_trainable_stages(model, info, 0)
    assert model.get_layer("tumour_cells").trainable and not model.get_layer("conv5_block3_out").trainable
    with pytest.raises(ValueError, match="head"):
        build_classifier(64, "resnet50", weights="none", head="attention")


def test_set_trainable_stages_resnet50(resnet) -> None:
    model, info = resnet
    stage_names = [sorted({layer.name.split("_")[0] for layer in stage}) for stage in backbone_stages(model, info)]
    assert stage_names == [["conv1", "pool1"], ["conv2"], ["conv3"], ["conv4"], ["conv5"]]

    set_trainable_stages(model, info, 0)
    assert [w.path for w in model.trainable_weights] == [w.path for w in model.get_layer("tumour_probability").weights]

    set_trainable_stages(model, info, 2)
    assert model.get_layer("conv5_block1_1_conv").trainable and model.get_layer("conv4_block1_1_conv").trainable
    assert not model.get_layer("conv3_block1_1_conv").trainable
    frozen_bn = model.get_layer("conv3_block1_1_bn")
    assert isinstance(frozen_bn, keras.layers.BatchNormalization) and not frozen_bn.trainable
    # a frozen BN runs in inference mode even with training=True: it uses (and keeps) its moving stats
    before = keras.ops.convert_to_numpy(frozen_bn.moving_mean)
    model(uint8_images(2), training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(frozen_bn.moving_mean), before)

    set_trainable_stages(model, info, "all")
    assert len(model.trainable_weights) == sum(len(layer.trainable_weights) for layer in model.layers)
    assert model.get_layer("conv1_conv").trainable
    with pytest.raises(ValueError, match="unfreeze"):
        set_trainable_stages(model, info, -1)


# --------------------------------------------------------------------------------------------- ResUNet


def test_residual_unit_shapes_and_shortcuts() -> None:
    x = keras.Input((16, 16, 8))
    down = residual_unit(x, 12, strides=2, name="down")
    same = residual_unit(x, 8, strides=1, name="same")
    assert tuple(down.shape) == (None, 8, 8, 12)
    assert tuple(same.shape) == (None, 16, 16, 8)
    model = keras.Model(x, [down, same])
    names = {layer.name for layer in model.layers}
    assert "down_shortcut_conv" in names and "same_shortcut_conv" not in names  # identity where it can be
    assert {"same_bn1", "same_relu1", "same_conv1", "same_bn2", "same_relu2", "same_conv2"} <= names
    assert model.get_layer("down_conv1").strides == (2, 2)


def test_resunet_shapes_levels_and_no_pooling() -> None:
    model = build_resunet(SIZE, SMALL, out_channels=1)
    assert model.input.shape == (None, SIZE, SIZE, 3)
    assert model.output.shape == (None, SIZE, SIZE, 1)
    assert model.get_layer("tumour_mask").dtype_policy.compute_dtype == "float32"
    assert isinstance(model.get_layer("standardize"), PerImageStandardization)
    # the encoder halves H, W each level; the bridge once more
    assert model.get_layer("enc1_add").output.shape[1:] == (32, 32, 4)
    assert model.get_layer("enc2_add").output.shape[1:] == (16, 16, 8)
    assert model.get_layer("bridge_add").output.shape[1:] == (8, 8, 16)
    assert model.get_layer("dec2_add").output.shape[1:] == (16, 16, 8)
    assert model.get_layer("dec1_add").output.shape[1:] == (32, 32, 4)
    assert model.get_layer("enc2_conv1").strides == (2, 2) and model.get_layer("bridge_conv1").strides == (2, 2)
    # the first unit starts with a conv; later units are pre-activation
    names = {layer.name for layer in model.layers}
    assert "enc1_bn1" not in names and "enc2_bn1" in names
    assert not [layer for layer in model.layers if "Pooling" in type(layer).__name__]
    assert not [layer for layer in model.layers if type(layer).__name__ == "Lambda"]
    y = keras.ops.convert_to_numpy(model.predict_on_batch(uint8_images(2)))
    assert y.shape == (2, SIZE, SIZE, 1) and ((y >= 0) & (y <= 1)).all()


def test_resunet_several_output_channels_and_bad_sizes() -> None:
    assert build_resunet(SIZE, SMALL, out_channels=3).output.shape == (None, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="multiple of 4"):
        build_resunet(30, SMALL)
    with pytest.raises(ValueError, match="filters"):
        build_resunet(SIZE, (8,))


def test_resunet_default_parameter_count() -> None:
    assert build_resunet(SIZE).count_params() == 2_081_937  # 16-32-64-128-256, independent of image size


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # never-built optimizer: nothing to load
def test_resunet_save_load_safe_mode_compiled(tmp_path: Path) -> None:
    model = build_resunet(SIZE, SMALL)
    model.compile(optimizer="adam", loss=get_loss("focal_tversky", 0.7, 0.3, 0.75), metrics=[DiceAt(0.5), IoUAt(0.5)])
    x = uint8_images(2)
    y = np.zeros((2, SIZE, SIZE, 1), np.float32)
    y[:, 8:20, 8:20] = 1
    path = tmp_path / "segmenter.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    assert loaded.loss.get_config() == model.loss.get_config()
    scores = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert {"loss", "dice", "iou"} <= set(scores)
    plain = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(plain.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-6)
