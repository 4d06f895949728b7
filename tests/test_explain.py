"""Grad-CAM, integrated gradients and their pictures, on tiny models (32-48 px; seconds in all)."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest
from keras import layers
from tiny_models import tiny_classifier

from pipeline.evaluation import gradients
from pipeline.evaluation.explain import (
    grad_cam,
    integrated_gradients,
    integrated_gradients_raw,
    normalise_map,
    overlay_png,
    pointing_game_hits,
    triptych_png,
)

SIZE = 48
SQUARE = 10
TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="whole-graph tape is TensorFlow only")


# ------------------------------------------------------------------------------------------------ fixtures


def squares(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic slices: noise, a dim distractor square in every image, a bright square in the positives.

    Returns (images float32 [n, 48, 48, 3] 0..255, labels float32 [n], bright-square masks uint8 [n, 48, 48]).
    """
    images = rng.uniform(0, 60, (n, SIZE, SIZE, 1)).astype(np.float32).repeat(3, axis=-1)
    labels = (np.arange(n) % 2).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        r, c = rng.integers(0, SIZE - SQUARE, 2)
        images[i, r:r + SQUARE, c:c + SQUARE] = 110.0  # distractor: present in both classes
        if labels[i]:
            while True:  # bright square apart from the distractor
                r2, c2 = rng.integers(0, SIZE - SQUARE, 2)
                if abs(int(r2) - int(r)) > SQUARE or abs(int(c2) - int(c)) > SQUARE:
                    break
            images[i, r2:r2 + SQUARE, c2:c2 + SQUARE] = 230.0
            masks[i, r2:r2 + SQUARE, c2:c2 + SQUARE] = 1
    return images, labels, masks


def tiny_cnn(size: int = SIZE, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return tiny_classifier(size, (8, 16, 16), pool=True, dropout=0.3, name="tiny_cnn")


def skip_cnn(size: int = 32, seed: int = 1) -> keras.Model:
    """A CNN whose graph after "mid" also reads a tensor from before it (a residual connection)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 255)(inp)
    early = layers.Conv2D(6, 3, padding="same", activation="relu", name="early")(x)
    mid = layers.Conv2D(6, 3, padding="same", activation="relu", name="mid")(early)
    y = layers.Add(name="residual")([mid, early])
    y = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="late")(y)
    y = layers.GlobalAveragePooling2D()(y)
    out = layers.Dense(1, activation="sigmoid", name="p")(y)
    return keras.Model(inp, out, name="skip_cnn")


@pytest.fixture(scope="module")
def trained() -> tuple[keras.Model, np.ndarray, np.ndarray, np.ndarray]:
    """The tiny CNN trained (about 300 steps) to tell bright-square slices from the rest, and 40 fresh slices."""
    rng = np.random.default_rng(0)
    x, y, _ = squares(640, rng)
    model = tiny_cnn()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=15, verbose=0, shuffle=True)
    test_x, test_y, test_masks = squares(40, np.random.default_rng(1))
    accuracy = float(((model.predict(test_x, verbose=0)[:, 0] > 0.5) == test_y).mean())
    assert accuracy >= 0.9, f"the tiny CNN did not learn the toy task (accuracy {accuracy:.2f})"
    return model, test_x, test_y, test_masks


# -------------------------------------------------------------------------------------------------- Grad-CAM


def test_grad_cam_shape_and_range() -> None:
    model = tiny_cnn(32)
    x = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    maps = grad_cam(model, x, "last_conv", batch_size=2)  # batches of 2, 2, 1
    assert maps.shape == (5, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    for m in maps:
        assert m.max() in (0.0, 1.0)


def test_grad_cam_points_at_the_bright_square(trained) -> None:
    """On 20 positive slices the Grad-CAM peak lies inside the bright square on at least 16 (seeded)."""
    model, x, y, masks = trained
    positive = y == 1
    maps = grad_cam(model, x[positive], "last_conv")
    hits = pointing_game_hits(maps, masks[positive])
    assert positive.sum() == 20
    assert hits.sum() >= 16, f"Grad-CAM peak inside the square on only {hits.sum()} of 20 slices"


def test_grad_cam_of_a_dead_layer_is_zero_not_nan() -> None:
    model = tiny_cnn(32)
    conv = model.get_layer("last_conv")
    conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    maps = grad_cam(model, x, "last_conv")
    assert np.isfinite(maps).all() and not maps.any()
    assert not normalise_map(np.full((4, 4), np.nan)).any()


def test_logit_target_gives_the_same_map_and_survives_saturation() -> None:
    model = tiny_cnn(32)
    dense = model.get_layer("tumour_probability")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.abs(kernel) + 0.05, bias])  # every feature counts for the class: non-empty maps
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    by_probability = grad_cam(model, x, "last_conv", target="probability")
    by_logit = grad_cam(model, x, "last_conv", target="logit")
    assert by_probability.max(axis=(1, 2)).min() == 1.0
    np.testing.assert_allclose(by_logit, by_probability, atol=1e-4)

    dense.set_weights([np.abs(kernel) + 0.05, np.array([60.0], np.float32)])  # sigmoid is exactly 1.0 in float32
    gradients.clear_cache(model)
    _, grads, scores = gradients.output_and_layer_grad(model, "last_conv", x)
    assert np.all(scores == 1.0) and not grads.any()  # the probability has no gradient left ...
    assert grad_cam(model, x, "last_conv").max(axis=(1, 2)).min() == 1.0  # ... the logit still has one
    assert model.get_layer("tumour_probability").activation is keras.activations.sigmoid  # restored


# ----------------------------------------------------------------------------------------------- gradients


def test_head_gradient_matches_gap_dense_formula() -> None:
    """After the last conv: GAP -> Dropout -> Dense(sigmoid), so d p / d A[h, w, k] = p (1 - p) W_k / (h w)."""
    model = tiny_cnn(32)
    x = np.random.default_rng(3).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    acts, grads, scores = gradients.output_and_layer_grad(model, "last_conv", x)
    kernel, bias = model.get_layer("tumour_probability").get_weights()
    h, w = acts.shape[1:3]
    np.testing.assert_allclose(scores, model.predict(x, verbose=0)[:, 0], rtol=1e-5)
    expected = (scores * (1 - scores))[:, None, None, None] * kernel[:, 0] / (h * w) * np.ones_like(acts)
    np.testing.assert_allclose(grads, expected, rtol=1e-4, atol=1e-9)


@TF_ONLY
@pytest.mark.parametrize("layer", ["mid", "residual", "late"])
@pytest.mark.parametrize("target", ["probability", "logit"])
def test_split_gradient_equals_full_tape(layer: str, target: str) -> None:
    """The head-only gradient equals the whole-graph tape, also when the head reads a tensor from before the cut."""
    model = skip_cnn()
    x = np.random.default_rng(4).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    a1, g1, s1 = gradients.output_and_layer_grad(model, layer, x, target=target, mode="split")
    a2, g2, s2 = gradients.output_and_layer_grad(model, layer, x, target=target, mode="full")
    np.testing.assert_allclose(a1, a2, atol=1e-5)
    np.testing.assert_allclose(s1, s2, rtol=1e-5)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-4 * np.abs(g2).max())
    assert np.abs(g2).max() > 0


def test_split_gradient_matches_a_finite_difference() -> None:
    """Any backend, a head that reads a tensor from before the cut: the logit's slope along a direction v of A,
    by central difference, equals <grad, v> (v = sign(grad) * |noise|, so the slope is large against float32)."""
    model = skip_cnn()
    x = np.random.default_rng(7).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    acts, grads, _ = gradients.output_and_layer_grad(model, "mid", x, target="logit")
    cut = gradients._cut_model(model, model.get_layer("mid").output)
    a, *carried = [keras.ops.convert_to_numpy(t) for t in cut.forward(x, training=False)]
    np.testing.assert_allclose(a, acts, atol=1e-6)
    v = np.sign(grads) * np.abs(np.random.default_rng(8).normal(size=acts.shape)).astype(np.float32)
    eps = 1e-3

    def logit(a: np.ndarray) -> np.ndarray:
        p = keras.ops.convert_to_numpy(cut.head(cut.head_input(a, carried), training=False))[:, 0].astype(np.float64)
        return np.log(p / (1 - p))

    numeric = (logit(a + eps * v) - logit(a - eps * v)) / (2 * eps)
    analytic = (grads * v).reshape(2, -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(analytic, numeric, rtol=0.01)


@TF_ONLY
def test_falls_back_to_a_full_tape_when_keras_cannot_cut(monkeypatch, caplog) -> None:
    model = skip_cnn()
    x = np.random.default_rng(10).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    _, expected, _ = gradients.output_and_layer_grad(model, "mid", x)

    def refuse(*args, **kwargs):
        raise ValueError("graph disconnected")

    monkeypatch.setattr(gradients, "_split_at", refuse)
    gradients.clear_cache(model)
    with caplog.at_level("WARNING", logger="pipeline.evaluation.gradients"):
        _, grads, _ = gradients.output_and_layer_grad(model, "mid", x)
    assert "whole-graph tape" in caplog.text
    np.testing.assert_allclose(grads, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    with pytest.raises(ValueError, match="graph disconnected"):
        gradients.output_and_layer_grad(model, "late", x, mode="split")


def test_cut_reads_carried_tensor_only_when_needed() -> None:
    model = skip_cnn()
    assert gradients._cut_model(model, model.get_layer("mid").output).n_carried == 1  # "early" crosses the cut
    assert gradients._cut_model(model, model.get_layer("residual").output).n_carried == 0


def test_unknown_layer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no layer 'conv5_block3_out'"):
        gradients.output_and_layer_grad(tiny_cnn(32), "conv5_block3_out", np.zeros((1, 32, 32, 3), np.float32))


# ------------------------------------------------------------------------------------- integrated gradients


def test_integrated_gradients_completeness(trained) -> None:
    """With 64 steps the attributions sum to f(x) - f(black) within 5 %."""
    model, x, y, _ = trained
    ig = integrated_gradients_raw(model, x[y == 1][:3], steps=64, batch_size=64)
    np.testing.assert_allclose(ig.scores, model.predict(x[y == 1][:3], verbose=0)[:, 0], rtol=1e-5)
    assert np.all(np.abs(ig.scores - ig.baseline_scores) > 0.1)
    assert ig.completeness_error.max() < 0.05, ig.completeness_error


def test_integrated_gradients_maps(trained) -> None:
    model, x, _, _ = trained
    maps = integrated_gradients(model, x[:3], steps=8, batch_size=5)
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() == 1.0
    assert not integrated_gradients(model, np.zeros((1, SIZE, SIZE, 3), np.float32), steps=4).any()  # x == baseline


# ----------------------------------------------------------------------------------------- pointing, pictures


def test_pointing_game_hits_ties_and_empty_masks() -> None:
    heat = np.zeros((3, 4, 4), np.float32)
    heat[0, 1, 1] = 1.0
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[0, 1, 1] = 1
    masks[1, 0, 0] = 1  # all-equal heatmap: the first pixel is the peak
    assert pointing_game_hits(heat, masks).tolist() == [True, True, False]  # empty mask: a miss


def test_overlay_png_writes_a_readable_png(tmp_path) -> None:
    flair = np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint8)
    heat = np.zeros((64, 64), np.float32)
    heat[10:20, 10:20] = 1.0
    mask = np.zeros((64, 64), bool)
    mask[8:24, 8:24] = True
    pred = np.zeros((64, 64), np.uint8)
    pred[30:40, 30:40] = 1
    path = overlay_png(flair, heat, mask, tmp_path / "sub" / "gradcam.png", title="TP p=0.97", pred_mask=pred)
    picture = cv2.imread(str(path))
    assert picture.shape == (18 + 128, 128, 3)  # title strip + 2x upscale
    assert (picture == (0, 255, 0)).all(axis=-1).any() and (picture == (255, 0, 255)).all(axis=-1).any()
    assert [p.name for p in path.parent.iterdir()] == ["gradcam.png"]  # no temporary file left

    plain = cv2.imread(str(overlay_png(flair, np.zeros((64, 64)), None, tmp_path / "zero.png")))
    assert plain.shape == (128, 128, 3)
    with pytest.raises(ValueError, match="heatmap"):
        overlay_png(flair, np.zeros((32, 32)), None, tmp_path / "bad.png")


def test_triptych_png(tmp_path) -> None:
    image = np.random.default_rng(6).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    truth = np.zeros((64, 64), np.uint8)
    truth[20:40, 20:40] = 1
    path = triptych_png(image, 1, truth, truth[::-1], tmp_path / "case_best.png", title="best: Dice 0.912")
    assert cv2.imread(str(path)).shape == (18 + 128, 3 * 128 + 4, 3)


def test_grad_cam_on_the_project_classifier() -> None:
    """The ResNet50 classifier cuts at its last conv block into a pure chain head (GAP -> Dropout -> Dense)."""
    classifier = pytest.importorskip("pipeline.models.nets.classifier")
    model, info = classifier.build_classifier(64, backbone="resnet50", weights="none")
    cut = gradients._cut_model(model, model.get_layer(info["last_conv_layer"]).output)
    assert cut.n_carried == 0
    assert [layer.name for layer in cut.head.layers[1:]] == ["avg_pool", "head_dropout", "tumour_probability"]
    x = np.random.default_rng(9).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    maps = grad_cam(model, x, info["last_conv_layer"])
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()


def test_peak_points_are_cell_centres_not_upsampled_corners():
    """A 2x2 map upsampled bilinearly is flat up to the image corner; the peak is the cell centre."""
    from pipeline.evaluation.explain import peak_points, upsample_maps

    cells = np.array([[[0.0, 0.2], [1.0, 0.1]]], np.float32)  # hottest cell: row 1, col 0
    up = upsample_maps(cells, 64, 64)
    assert np.unravel_index(up[0].argmax(), up[0].shape)[1] == 0  # first argmax: on the image edge
    assert peak_points(cells, 64, 64).tolist() == [[48, 16]]
