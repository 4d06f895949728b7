"""evaluate.slice_score "cascade": the gate thresholds the classifier's probability x the segmenter's highest
pixel probability on the slice, in evaluate and in predict (one code path, pipeline.evaluation.cascade)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.cascade import Cascade, cascade_slice_score


class Constant:
    """A stand-in classifier: every slice scores ``value``."""

    output_shape = (None, 1)

    def __init__(self, value: float):
        self.value = value

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x), 1), self.value, np.float32)


class Brightness:
    """A stand-in segmenter of 32 px slices: the pixel probability is the first channel / 255."""

    input_shape = (None, 32, 32, 3)
    output_shape = (None, 32, 32, 1)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)[..., :1] / 255


def _slices() -> np.ndarray:
    """Three 32 px slices: a bright spot (segmenter max 1.0), a faint one (max 0.4), nothing (max 0)."""
    images = np.zeros((3, 32, 32, 3), np.uint8)
    images[0, 10:14, 10:14, 0] = 255
    images[1, 20:22, 5:7, 0] = 102
    return images


def test_the_score_is_the_classifier_probability_times_the_segmenter_maximum() -> None:
    seg = np.zeros((2, 4, 4), np.float32)
    seg[0, 1, 2], seg[1, 3, 3] = 0.9, 0.2
    np.testing.assert_allclose(cascade_slice_score(np.array([0.5, 1.0]), seg), [0.45, 0.2])


def test_the_cascade_score_gates_what_the_classifier_alone_would_pass() -> None:
    cascade = Cascade(Constant(0.8), Brightness(), threshold=0.5, slice_score="cascade")
    out = cascade.predict_volume(_slices())
    np.testing.assert_allclose(out["probabilities"], [0.8, 0.8 * 0.4, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(out["gated"], [True, False, False])
    assert not out["seg_probabilities"][1:].any() and out["mask"][0].sum() == 16 and not out["mask"][1:].any()


def test_the_classifier_score_gates_as_before() -> None:
    out = Cascade(Constant(0.8), Brightness(), threshold=0.5).predict_volume(_slices())
    np.testing.assert_array_equal(out["probabilities"], np.float32([0.8, 0.8, 0.8]))
    np.testing.assert_array_equal(out["gated"], [True, True, True])
    assert out["mask"][1].sum() == 0  # 0.4 < the pixel threshold 0.5: gated, but nothing segmented


class ThreeRegions:
    """A stand-in segmenter with 3 outputs: whole tumour = first channel / 255, the inner regions 1.0 everywhere."""

    input_shape = (None, 32, 32, 3)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        whole = np.asarray(x, np.float32)[..., :1] / 255
        return np.concatenate([whole, np.ones_like(whole), np.ones_like(whole)], axis=-1)


def test_regions_use_the_whole_tumour_channel_for_the_score() -> None:
    cascade = Cascade(Constant(0.8), ThreeRegions(), threshold=0.5, slice_score="cascade")
    out = cascade.predict_regions(_slices(), ("whole_tumour", "tumour_core", "enhancing_tumour"))
    np.testing.assert_allclose(out["probabilities"], [0.8, 0.8 * 0.4, 0.0], rtol=1e-6)  # not the inner regions' 1.0
    np.testing.assert_array_equal(out["gated"], [True, False, False])


def test_a_volume_with_no_slices_scores_nothing() -> None:
    """predict hands the cascade only the non-blank slices: none, for an all-black scan."""
    cascade = Cascade(Constant(0.8), Brightness(), threshold=0.5, slice_score="cascade")
    out = cascade.predict_volume(np.zeros((0, 32, 32, 3), np.uint8))
    assert out["probabilities"].shape == (0,) and out["mask"].shape == (0, 32, 32)
    assert cascade_slice_score(np.zeros(0), np.zeros((0, 32, 32))).shape == (0,)


def test_an_unknown_score_is_refused() -> None:
    with pytest.raises(ValueError, match="slice_score 'both' is not one of classifier, cascade"):
        Cascade(Constant(0.8), Brightness(), threshold=0.5, slice_score="both")
