"""2.5-D input (segmenter.context_slices): neighbouring slices as channels, in training, in the store's reads,
in augmentation and in the cascade that evaluate and predict share."""

from __future__ import annotations

import json
from dataclasses import replace

import keras
import numpy as np
import pytest

from pipeline.data.context import context_of, neighbour_rows, with_context
from pipeline.data.slices import SliceStore
from pipeline.evaluation.cascade import Cascade
from pipeline.models.augment import augment_batch, fill_missing_sequences
from pipeline.params import AugmentParams, params_from_dict


def volume(d: int = 5, size: int = 4, channels: int = 3) -> np.ndarray:
    """uint8 [d, size, size, channels] whose every value says its slice and channel: 10 x slice + channel."""
    values = 10 * np.arange(d)[:, None, None, None] + np.arange(channels)
    return np.broadcast_to(values, (d, size, size, channels)).astype(np.uint8)


def test_each_slice_takes_its_neighbours_slice_major_and_the_edges_repeat():
    stacked = with_context(volume(), 1)
    assert stacked.shape == (5, 4, 4, 9)
    assert stacked[2, 0, 0].tolist() == [10, 11, 12, 20, 21, 22, 30, 31, 32]  # slices 1, 2, 3
    assert stacked[0, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 10, 11, 12]  # below the first: the first again
    assert stacked[4, 0, 0].tolist() == [30, 31, 32, 40, 41, 42, 40, 41, 42]
    picked = with_context(volume(), 2, np.array([4, 0]))  # a subset, in the order asked, neighbours from the case
    assert picked[:, 0, 0, ::3].tolist() == [[20, 30, 40, 40, 40], [0, 0, 0, 10, 20]]
    assert neighbour_rows(np.array([0, 3]), 4, 1).tolist() == [[0, 0, 1], [2, 3, 3]]


def test_context_zero_is_the_slices_themselves():
    v = volume()
    assert with_context(v, 0) is v
    assert np.array_equal(with_context(v, 0, np.array([3, 1])), v[[3, 1]])
    assert with_context(v, 1, np.array([], int)).shape == (0, 4, 4, 9)


def test_the_context_is_read_from_the_models_input():
    assert context_of(3, 3) == 0 and context_of(9, 3) == 1 and context_of(21, 3) == 3
    for channels in (6, 4, 10):  # an even number of slices, or not whole slices
        with pytest.raises(ValueError, match=f"takes {channels} channels"):
            context_of(channels, 3)


def test_the_store_reads_a_slice_with_its_neighbours(tiny_store):
    work, _ = tiny_store
    store = SliceStore(work / "data/slices")
    pid = store.patient_ids[0]
    last = len(store.images(pid)) - 1
    images, labels = store.read([pid, pid], [last, 0], context=1)
    assert np.array_equal(images, with_context(store.images(pid), 1, np.array([last, 0])))
    assert np.array_equal(labels, store.labels(pid)[[last, 0]])  # the slice's own mask
    plain, _ = store.read([pid], [0])
    assert np.array_equal(images[1, ..., 3:6], plain[0])  # the slice itself is the middle group


def test_missing_sequences_fill_every_slice_of_the_stack_alike():
    stack = np.random.default_rng(0).integers(0, 256, (64, 4, 4, 9), dtype=np.uint8)
    filled = fill_missing_sequences(stack, np.random.default_rng(1), 1.0, flair=1, sequences=3)
    changed = (filled != stack).any(axis=(1, 2))  # [64, 9]: which channels each stack had replaced
    assert changed.any()
    assert np.array_equal(changed[:, 0:3], changed[:, 3:6]) and np.array_equal(changed[:, 0:3], changed[:, 6:9])
    assert not changed[:, 1::3].any()  # the FLAIR channels stay
    for start in (0, 3, 6):  # each slice's own FLAIR goes into its own channels
        rows = changed[:, start]
        assert np.array_equal(filled[rows, ..., start], stack[rows, ..., start + 1])


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_stack_of_one_slice_three_times_stays_three_equal_slices(per_channel):
    """One geometric transform per stack, one brightness and contrast per sequence: a stack of three equal
    slices must come out as three equal slices."""
    one = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    stack = np.concatenate([one, one, one], axis=-1)
    aug = AugmentParams(enabled=True, flip=True, rotate_deg=10.0, shift=0.05, zoom=0.1, brightness=0.1, contrast=0.1,
                        per_channel=per_channel, missing_sequences=0.5)
    x, _ = augment_batch(stack, None, np.random.default_rng(2), aug, flair=1, sequences=3)
    assert x.shape == (8, 32, 32, 9)
    assert np.array_equal(x[..., 0:3], x[..., 3:6]) and np.array_equal(x[..., 0:3], x[..., 6:9])
    assert not np.array_equal(x[..., 0:3], one.astype(np.float32))  # it was augmented


class _Previous:
    """A stand-in 2.5-D segmenter (context 1): each pixel's probability is the slice below's first channel / 255."""

    input_shape = (None, 4, 4, 9)
    output_shape = (None, 4, 4, 1)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)[..., :1] / 255.0


class _Brightness:
    """A stand-in classifier: the slice's mean value / 255."""

    input_shape = (None, 4, 4, 3)
    output_shape = (None, 1)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x).mean(axis=(1, 2, 3))[:, None] / 255.0


def test_the_cascade_gives_a_gated_slice_its_neighbours_from_the_whole_case():
    images = volume()
    cascade = Cascade(_Brightness(), _Previous(), threshold=0.07, slice_score="classifier")  # slice k scores (10k + 1) / 255
    out = cascade.predict_volume(images)
    assert out["gated"].tolist() == [False, False, True, True, True]
    # the segmenter ran on the gated slices only, yet saw the slice below each (ungated slice 1 for slice 2)
    assert out["seg_probabilities"][:, 0, 0].tolist() == pytest.approx([0, 0, 10 / 255, 20 / 255, 30 / 255])
    with pytest.raises(ValueError, match="takes 9 channels.*\\[D, H, W, 2\\]"):
        cascade.segmenter_input(images[..., :2])


def test_the_stage_trains_and_saves_a_segmenter_of_neighbouring_slices(tiny_store, monkeypatch):
    from pipeline.stages import train_segmenter

    work, params = tiny_store
    segmenter = {**params.as_dict()["segmenter"], "filters": [16, 32], "epochs_factor": 1, "context_slices": 1}
    augment = {**params.as_dict()["augment"], "missing_sequences": 0.5}
    params = params_from_dict({**params.as_dict(), "segmenter": segmenter, "augment": augment})
    params = replace(params, train=replace(params.train, epochs=1, batch_size=4))
    monkeypatch.chdir(work)
    train_segmenter.run(params)

    model = keras.saving.load_model(work / "models/segmenter.keras", compile=False, safe_mode=True)
    assert model.input_shape == (None, 32, 32, 9) and model.output_shape == (None, 32, 32, 1)
    sidecar = json.loads((work / "models/segmenter.json").read_text())
    assert sidecar["context_slices"] == 1 and sidecar["channels"] == ["t1", "flair", "t1gd"]
    store = SliceStore(work / "data/slices")
    images = store.images(store.patient_ids[0])
    seg = Cascade(None, model, 0.5).segment(images)  # the whole case in, a map per slice out
    assert seg.shape == images.shape[:3]
    assert np.allclose(seg, model.predict_on_batch(with_context(images, 1).astype(np.float32))[..., 0], atol=1e-5)


def test_a_batch_of_stacks_holds_each_slice_as_the_plain_batch_does(tiny_store):
    """SliceBatches with context 1 and per-sequence intensity: the middle slice of every stack is exactly the
    slice the plain batch gives (same draws, the stack warped slice by slice), and the neighbours are there."""
    from pipeline.models.batches import SliceBatches

    work, _ = tiny_store
    store = SliceStore(work / "data/slices")
    rows = store.manifest
    aug = AugmentParams(enabled=True, flip=True, rotate_deg=20.0, shift=0.1, zoom=0.2, brightness=0.2, contrast=0.2,
                        per_channel=True, missing_sequences=0.5)
    plain, stacked = (SliceBatches(store, rows, 8, "mask", aug, shuffle=True, seed=3, context=n) for n in (0, 1))
    (x, y), (xs, ys) = plain[1], stacked[1]
    assert xs.shape == (*x.shape[:3], 9) and np.array_equal(ys, y)
    assert np.array_equal(xs[..., 3:6], x)
    assert not np.array_equal(xs[..., 0:3], x) and not np.array_equal(xs[..., 6:9], x)  # neighbours, not copies


def test_fold_segmenters_must_take_the_same_slices(tmp_path):
    """A bundle's segmenters must take the classifier's slices, or an odd stack of them, all fold models alike:
    otherwise one clear error naming the file, before any scoring."""
    from tiny_models import tiny_classifier

    from pipeline.errors import InputError
    from pipeline.models.nets import build_resunet

    tiny_classifier(32, (4,)).save(tmp_path / "classifier.keras")
    for channels in (9, 3, 6):
        build_resunet(32, (16, 32), in_channels=channels).save(tmp_path / f"seg{channels}.keras")
    folds = Cascade.load([tmp_path / "classifier.keras"] * 2, [tmp_path / "seg9.keras"] * 2, 0.5)
    assert folds.segmenter.input_shape[-1] == 9
    with pytest.raises(InputError, match=r"seg3\.keras.*takes input \[N, 32, 32, 3\], the first segmenter"):
        Cascade.load([tmp_path / "classifier.keras"] * 2, [tmp_path / "seg9.keras", tmp_path / "seg3.keras"], 0.5)
    with pytest.raises(InputError, match=r"seg6\.keras.*takes 6 channels.*the classifier's slices have 3"):
        Cascade.load(tmp_path / "classifier.keras", tmp_path / "seg6.keras", 0.5)
