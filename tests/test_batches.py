"""Training batches and augmentation: image and mask stay aligned, validation data is never augmented,
batches are reproducible from the seed, class weights and balanced sampling do what they say."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data.case import LGG_CHANNELS, Case
from pipeline.data.slices import SliceStore, write_store
from pipeline.errors import InputError
from pipeline.models.augment import (
    apply_geometric,
    apply_intensity,
    augment_batch,
    default_threads,
    fill_missing_sequences,
    random_affine_params,
)
from pipeline.models.batches import SliceBatches, class_weights_from, in_memory, tumour_area_weights
from pipeline.params import AugmentParams

AUG = AugmentParams(enabled=True, flip=True, rotate_deg=10.0, shift=0.05, zoom=0.1, brightness=0.1, contrast=0.1)
STRONG_GEOMETRY = AugmentParams(enabled=True, flip=True, rotate_deg=30.0, shift=0.1, zoom=0.2,
                                brightness=0.0, contrast=0.0)
N_PATIENTS, N_SLICES, SIZE = 6, 8, 32


def blob_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """uint8 [n, size, size] binary masks: one or two ellipses each, away from the border."""
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(0.35, 0.65, 2) * size
            ry, rx = rng.uniform(0.08, 0.18, 2) * size
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 1
    return masks


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SliceStore:
    """6 patients x 8 slices of 32 x 32 x 3; tumour on slices 2, 3 and 5 of every patient."""
    rng = np.random.default_rng(0)
    cases = []
    for p in range(N_PATIENTS):
        image = rng.integers(1, 256, (N_SLICES, SIZE, SIZE, 3), dtype=np.uint8)
        labels = np.zeros((N_SLICES, SIZE, SIZE), np.uint8)
        labels[[2, 3, 5]] = blob_masks(rng, 3, SIZE)
        cases.append(Case(f"P{p}", image, labels, "lgg", LGG_CHANNELS, np.arange(N_SLICES)))
    root = tmp_path_factory.mktemp("store") / "slices"
    write_store(cases, root)
    return SliceStore(root)


def raw_batch(store: SliceStore, rows: pd.DataFrame, i: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    return store.read_rows(rows.iloc[i * batch_size:(i + 1) * batch_size])


# --- augmentation -------------------------------------------------------------------------------

def test_geometric_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(1)
    n, size = 64, 128
    masks = blob_masks(rng, n, size)
    images = np.stack([255 * masks, rng.integers(0, 256, (n, size, size), dtype=np.uint8), masks], axis=-1)
    images = images.astype(np.uint8)
    x, warped = augment_batch(images, masks, np.random.default_rng(2), STRONG_GEOMETRY)
    assert x.dtype == np.float32 and x.shape == images.shape
    assert warped.dtype == np.uint8 and warped.shape == masks.shape
    assert set(np.unique(warped)) <= {0, 1}
    moved = 0
    for i in range(n):
        region, m = x[i, ..., 0] > 127, warped[i] > 0
        iou = (region & m).sum() / (region | m).sum()
        assert iou > 0.95, f"transform {i}: IoU {iou:.3f}"
        moved += not np.array_equal(warped[i], masks[i])
    assert moved == n  # every mask was actually transformed


def test_label_maps_keep_their_values():
    rng = np.random.default_rng(3)
    labels = (blob_masks(rng, 16, 64) * rng.choice([1, 2, 4], (16, 1, 1))).astype(np.uint8)
    images = np.zeros((16, 64, 64, 3), np.uint8)
    matrices = random_affine_params(rng, 16, STRONG_GEOMETRY, (64, 64))
    _, warped = apply_geometric(images, labels, matrices)
    assert set(np.unique(warped)) <= {0, 1, 2, 4}
    assert len(np.unique(warped)) > 2


def test_flip_alone_mirrors_exactly_and_zero_knobs_are_the_identity():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (20, 33, 32, 3), dtype=np.uint8)
    masks = (rng.random((20, 33, 32)) > 0.5).astype(np.uint8)
    flip_only = AugmentParams(True, True, 0.0, 0.0, 0.0, 0.0, 0.0)
    x, m = augment_batch(images, masks, np.random.default_rng(5), flip_only)
    flipped = 0
    for i in range(20):
        if np.array_equal(m[i], masks[i, :, ::-1]):
            np.testing.assert_array_equal(x[i], images[i, :, ::-1])
            flipped += 1
        else:
            np.testing.assert_array_equal(m[i], masks[i])
            np.testing.assert_array_equal(x[i], images[i])
    assert 0 < flipped < 20
    nothing = dataclasses.replace(flip_only, flip=False)
    x, m = augment_batch(images, masks, np.random.default_rng(5), nothing)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(m, masks)


def test_fused_augmentation_equals_geometric_then_intensity():
    images = np.random.default_rng(6).integers(0, 256, (8, 48, 48, 3), dtype=np.uint8)
    masks = blob_masks(np.random.default_rng(7), 8, 48)
    x, m = augment_batch(images, masks, np.random.default_rng(8), AUG)
    rng = np.random.default_rng(8)
    g_images, g_masks = apply_geometric(images, masks, random_affine_params(rng, 8, AUG, (48, 48)))
    expected = apply_intensity(g_images.astype(np.float32), rng, AUG)
    np.testing.assert_array_equal(m, g_masks)
    np.testing.assert_allclose(x, expected, atol=1e-3)
    assert x.min() >= 0 and x.max() <= 255


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_augmentation_does_not_depend_on_thread_count(threads, monkeypatch):
    monkeypatch.setattr("pipeline.models.augment.MIN_VALUES_FOR_THREADS", 0)  # thread even these small slices
    images = np.random.default_rng(11).integers(0, 256, (7, 40, 40, 3), dtype=np.uint8)
    masks = blob_masks(np.random.default_rng(12), 7, 40)
    x1, m1 = augment_batch(images, masks, np.random.default_rng(13), AUG, threads=1)
    xn, mn = augment_batch(images, masks, np.random.default_rng(13), AUG, threads=threads)
    assert not np.array_equal(x1, images.astype(np.float32))  # it did augment
    np.testing.assert_array_equal(xn, x1)
    np.testing.assert_array_equal(mn, m1)


def test_thread_count_is_every_usable_core_unless_set(monkeypatch):
    """No cap at 8: a 16-core GPU machine augments on 16 threads; PIPELINE_AUGMENT_THREADS overrides."""
    monkeypatch.delenv("PIPELINE_AUGMENT_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert default_threads() == 16
    monkeypatch.setenv("PIPELINE_AUGMENT_THREADS", "3")
    assert default_threads() == 3
    for bad in ("0", "-2", "many"):
        monkeypatch.setenv("PIPELINE_AUGMENT_THREADS", bad)
        with pytest.raises(ValueError, match="PIPELINE_AUGMENT_THREADS"):
            default_threads()


def test_intensity_changes_brightness_and_contrast_within_bounds():
    images = np.full((200, 8, 8, 3), 100, np.float32)
    images[:, :4] = 50
    out = apply_intensity(images.copy(), np.random.default_rng(9), AUG)
    shift = out.mean(axis=(1, 2, 3)) - 75
    assert np.abs(shift).max() <= 0.1 * 255 + 1e-3 and shift.std() > 5
    spread = out[:, 4:].mean(axis=(1, 2, 3)) - out[:, :4].mean(axis=(1, 2, 3))
    assert spread.min() >= 50 * 0.9 - 1e-3 and spread.max() <= 50 * 1.1 + 1e-3 and spread.std() > 0.5


def test_per_channel_intensity_moves_each_channel_on_its_own():
    per_channel = dataclasses.replace(AUG, per_channel=True, brightness=0.2, contrast=0.3)
    images = np.full((300, 8, 8, 3), 100, np.float32)
    images[:, :4] = 50
    images[..., 2] += 60  # a brighter channel: its change is about its own mean (135), not the image's (95)
    out = apply_intensity(images.copy(), np.random.default_rng(9), per_channel)
    shift = out.mean(axis=(1, 2)) - [75, 75, 135]  # [300, 3]: each channel's brightness change
    assert np.abs(shift).max() <= 0.2 * 255 + 1e-3
    assert np.abs(shift[:, 0] - shift[:, 1]).mean() > 10  # drawn apart, not one value for all channels
    spread = out[:, 4:].mean(axis=(1, 2)) - out[:, :4].mean(axis=(1, 2))
    assert spread.min() >= 50 * 0.7 - 1e-3 and spread.max() <= 50 * 1.3 + 1e-3
    assert np.abs(spread[:, 0] - spread[:, 2]).mean() > 1
    shared = apply_intensity(images.copy(), np.random.default_rng(9), dataclasses.replace(per_channel, per_channel=False))
    np.testing.assert_allclose(shared[..., 0], shared[..., 1])  # the default: one change for all channels


def test_missing_sequences_fill_others_with_flair_as_kaggle_3m_does():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    kept = images.copy()
    out = fill_missing_sequences(images, np.random.default_rng(4), 1.0, flair=1)
    np.testing.assert_array_equal(images, kept)  # the input is not written into
    np.testing.assert_array_equal(out[..., 1], images[..., 1])  # FLAIR itself is kept
    filled = np.stack([(out[..., c] == out[..., 1]).all(axis=(1, 2)) for c in (0, 2)], axis=1)  # [300, 2]
    kept_as_is = np.stack([(out[..., c] == images[..., c]).all(axis=(1, 2)) for c in (0, 2)], axis=1)
    assert (filled | kept_as_is).all() and filled.any(axis=1).all()  # every slice: one or both others filled
    patterns = {tuple(row) for row in filled}
    assert patterns == {(True, False), (False, True), (True, True)}  # each pattern of the dataset turns up
    some = fill_missing_sequences(images, np.random.default_rng(4), 0.3, flair=1)
    share = np.mean([not np.array_equal(a, b) for a, b in zip(some, images, strict=True)])
    assert 0.2 < share < 0.4


def test_missing_sequences_off_draws_nothing_and_on_needs_flair():
    images = np.random.default_rng(6).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    masks = blob_masks(np.random.default_rng(7), 6, 32)
    on = dataclasses.replace(AUG, missing_sequences=0.5)
    a, _ = augment_batch(images, masks, np.random.default_rng(1), AUG)
    b, _ = augment_batch(images, masks, np.random.default_rng(1), dataclasses.replace(AUG, missing_sequences=0.0),
                         flair=1)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="FLAIR"):
        augment_batch(images, masks, np.random.default_rng(1), on)
    c, _ = augment_batch(images, masks, np.random.default_rng(1), on, flair=1)
    assert c.shape == a.shape and not np.array_equal(a, c)


def test_missing_sequences_find_flair_among_the_stores_channels(store: SliceStore, tmp_path: Path):
    flair = LGG_CHANNELS.index("flair")
    on = dataclasses.replace(AUG, enabled=True, flip=False, rotate_deg=0.0, shift=0.0, zoom=0.0, brightness=0.0,
                             contrast=0.0, missing_sequences=1.0)
    x, _ = SliceBatches(store, store.manifest, 8, "mask", on, shuffle=True)[0]
    others = [c for c in range(3) if c != flair]
    filled = [(x[..., c] == x[..., flair]).all(axis=(1, 2)) for c in others]
    assert np.logical_or(*filled).all()  # every slice has FLAIR copied into one or both other channels
    assert SliceBatches(store, store.manifest, 8, "mask", AUG).flair is None  # off: the channels are not read
    image = np.ones((2, SIZE, SIZE, 3), np.uint8)
    write_store([Case("Q", image, np.zeros((2, SIZE, SIZE), np.uint8), "lgg", ("t1", "t1gd", "t2"), np.arange(2))],
                tmp_path / "slices")
    no_flair = SliceStore(tmp_path / "slices")
    with pytest.raises(InputError, match="flair"):
        SliceBatches(no_flair, no_flair.manifest, 2, "mask", on)


def test_a_store_with_mixed_channel_orders_is_an_error(tmp_path: Path):
    image, labels = np.ones((2, SIZE, SIZE, 3), np.uint8), np.zeros((2, SIZE, SIZE), np.uint8)
    write_store([Case("A", image, labels, "lgg", LGG_CHANNELS, np.arange(2)),
                 Case("B", image, labels, "lgg", LGG_CHANNELS[::-1], np.arange(2))], tmp_path / "slices")
    with pytest.raises(InputError, match="channel orders"):
        _ = SliceStore(tmp_path / "slices").channels


def test_fused_per_channel_augmentation_equals_geometric_then_intensity():
    per_channel = dataclasses.replace(AUG, per_channel=True)
    images = np.random.default_rng(6).integers(0, 256, (8, 48, 48, 3), dtype=np.uint8)
    masks = blob_masks(np.random.default_rng(7), 8, 48)
    x, m = augment_batch(images, masks, np.random.default_rng(8), per_channel)
    rng = np.random.default_rng(8)
    g_images, g_masks = apply_geometric(images, masks, random_affine_params(rng, 8, per_channel, (48, 48)))
    np.testing.assert_array_equal(m, g_masks)
    np.testing.assert_allclose(x, apply_intensity(g_images.astype(np.float32), rng, per_channel), atol=1e-3)


def test_disabled_augmentation_only_converts():
    images = np.random.default_rng(10).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    for aug in (None, dataclasses.replace(AUG, enabled=False)):
        x, m = augment_batch(images, None, np.random.default_rng(0), aug)
        assert x.dtype == np.float32 and m is None
        np.testing.assert_array_equal(x, images)


# --- batches ------------------------------------------------------------------------------------

def test_validation_batches_are_the_raw_slices_in_order_every_epoch(store: SliceStore):
    rows = store.manifest.sample(frac=1, random_state=0).iloc[:45]  # any row order is kept
    for aug in (None, dataclasses.replace(AUG, enabled=False)):
        val = SliceBatches(store, rows, 10, "mask", aug, shuffle=False)
        assert len(val) == 5
        for _ in range(3):
            for i in range(len(val)):
                x, y = val[i]
                images, labels = raw_batch(store, rows, i, 10)
                assert x.dtype == np.float32 and y.dtype == np.float32
                np.testing.assert_array_equal(x, images)
                np.testing.assert_array_equal(y[..., 0], labels > 0)
            val.on_epoch_end()
    assert val[4][0].shape[0] == 5  # the last partial batch is included


def test_training_batches_are_augmented_and_change_every_epoch(store: SliceStore):
    rows = store.manifest
    train = SliceBatches(store, rows, 8, "mask", AUG, shuffle=True, seed=1)
    assert len(train) == len(rows) // 8
    x0, y0 = train[0]
    chosen = train.batch_rows(0)
    images, labels = store.read_rows(rows.iloc[chosen])
    assert not np.array_equal(x0, images)
    train.on_epoch_end()
    x1, _ = train[0]
    assert not np.array_equal(x0, x1)
    assert not np.array_equal(chosen, train.batch_rows(0))
    assert set(np.unique(y0)) <= {0.0, 1.0}


def test_each_shuffled_epoch_is_a_new_permutation(store: SliceStore):
    rows = store.manifest
    train = SliceBatches(store, rows, 10, "label", None, shuffle=True, seed=3)
    orders = []
    for _ in range(2):
        seen = np.concatenate([train.batch_rows(i) for i in range(len(train))])
        assert len(seen) == len(train) * 10 == len(np.unique(seen))
        orders.append(seen)
        train.on_epoch_end()
    assert not np.array_equal(orders[0], orders[1])


def test_batches_depend_only_on_seed_epoch_and_index(store: SliceStore):
    rows = store.manifest

    def batches(seed: int, order: list[int]) -> dict[tuple[int, int], tuple[np.ndarray, ...]]:
        ds = SliceBatches(store, rows, 8, "mask", AUG, shuffle=True, seed=seed)
        out = {}
        for epoch in range(2):
            for i in order:
                out[epoch, i] = ds[i]
            ds.on_epoch_end()
        return out

    n = len(SliceBatches(store, rows, 8, "mask"))
    a, b = batches(7, list(range(n))), batches(7, list(range(n))[::-1])
    c = batches(8, list(range(n)))
    for key in a:
        for u, v in zip(a[key], b[key], strict=True):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0, 0][0], c[0, 0][0])


def test_fit_is_reproducible(store: SliceStore):
    """Two fits with the default PyDataset settings train on the same batches, under any backend."""
    keras = pytest.importorskip("keras")

    class Recorded(SliceBatches):
        def __getitem__(self, index: int):
            batch = super().__getitem__(index)
            seen.append((self.epoch, index, float(batch[0].sum()), float(batch[1].sum())))
            return batch

    def run() -> list[tuple]:
        seen.clear()
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile("adam", "binary_crossentropy")
        train = Recorded(store, store.manifest, 8, "label", AUG, shuffle=True, seed=5)
        model.fit(train, epochs=2, verbose=0)
        return sorted(seen)

    seen: list[tuple] = []
    first, second = run(), run()
    assert first == second
    assert len({e for e, *_ in first}) >= 2


def test_label_and_mask_targets(store: SliceStore):
    rows = store.manifest
    x, y = SliceBatches(store, rows, 8, "label")[1]
    assert x.shape == (8, SIZE, SIZE, 3) and y.shape == (8, 1) and y.dtype == np.float32
    np.testing.assert_array_equal(y[:, 0], rows.has_tumour.to_numpy()[8:16])
    x, y = SliceBatches(store, rows, 8, "mask")[1]
    assert y.shape == (8, SIZE, SIZE, 1) and y.dtype == np.float32
    np.testing.assert_array_equal(y.reshape(8, -1).max(axis=1), rows.has_tumour.to_numpy()[8:16])
    x, y = SliceBatches(store, rows, 8, "mask", AUG, shuffle=True)[0]
    assert y.shape == (8, SIZE, SIZE, 1) and set(np.unique(y)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="target"):
        SliceBatches(store, rows, 8, "boxes")


def test_class_weights(store: SliceStore):
    w = class_weights_from(np.array([0, 0, 0, 1]))
    assert w == pytest.approx({0: 4 / 6, 1: 2.0})
    assert class_weights_from(np.array([1, 1])) == pytest.approx({0: 1.0, 1: 0.5})
    rows = store.manifest
    ds = SliceBatches(store, rows, 8, "label", AUG, shuffle=True, seed=0, class_weight=w)
    x, y, sw = ds[0]
    assert sw.shape == (8,) and sw.dtype == np.float32
    np.testing.assert_allclose(sw, np.where(y[:, 0] == 1, 2.0, 4 / 6))
    # weighted classes contribute equally over a whole epoch
    labels = rows.has_tumour.to_numpy(int)
    weights = np.vectorize(class_weights_from(labels).get)(labels)
    assert weights[labels == 1].sum() == pytest.approx(weights[labels == 0].sum())


def test_balanced_batches_are_half_positive(store: SliceStore):
    rows = store.manifest
    rows = pd.concat([rows[rows.has_tumour].iloc[:6], rows[~rows.has_tumour]])  # 6 of 36 positive
    for batch_size in (8, 7):
        ds = SliceBatches(store, rows, batch_size, "label", AUG, seed=2, balanced=True)
        assert len(ds) == len(rows) // batch_size
        fractions = []
        for _ in range(3):
            for i in range(len(ds)):
                y = ds[i][1][:, 0]
                assert len(y) == batch_size and abs(y.sum() - batch_size / 2) <= 0.5
                fractions.append(y.mean())
            ds.on_epoch_end()
        assert np.mean(fractions) == pytest.approx(0.5, abs=0.04)
    # the minority class is cycled: 16 positive places over 6 positives -> each used 2 or 3 times
    ds = SliceBatches(store, rows, 8, "label", None, seed=2, balanced=True)
    chosen = np.concatenate([ds.batch_rows(i) for i in range(len(ds))])
    uses = np.bincount(chosen[rows.has_tumour.to_numpy()[chosen]], minlength=6)
    assert uses.sum() == 16 and set(uses) <= {2, 3}


def test_undersampled_epochs_are_every_positive_and_fresh_negatives(store: SliceStore):
    """classifier.class_balance: undersample: an epoch is one pass over the 18 positives and 18 of the 30
    negatives, half and half per batch, another 18 negatives the next epoch."""
    ds = SliceBatches(store, store.manifest, 4, "label", None, seed=3, balanced=True, undersample=True)
    positive = store.manifest.has_tumour.to_numpy()
    assert positive.sum() == 18 and len(ds) == 2 * 18 // 4
    seen = []
    for _ in range(2):
        chosen = np.concatenate([ds.batch_rows(i) for i in range(len(ds))])
        assert len(set(chosen)) == len(chosen) == 36  # no slice twice in an epoch
        assert set(chosen[positive[chosen]]) == set(np.flatnonzero(positive))
        assert all(ds[i][1].sum() == 2 for i in range(len(ds)))
        seen.append(set(chosen[~positive[chosen]]))
        ds.on_epoch_end()
    assert seen[0] != seen[1]


def test_tumour_area_sampling_draws_slices_by_their_tumour_area(store: SliceStore):
    """segmenter.sampling: tumour_area: over many epochs each slice comes up in proportion to its tumour area
    plus a tenth of the mean area (tumour-free slices too, rarely); the same seed draws the same epochs."""
    rows = store.manifest
    area = rows.tumour_pixels.to_numpy(float)
    assert (area > 0).sum() == 18 and len(set(area[area > 0])) > 5  # blobs of different sizes
    ds = SliceBatches(store, rows, 4, "mask", None, shuffle=True, seed=1, by_tumour_area=True)
    counts = np.zeros(len(rows))
    epochs = 400
    for epoch in range(epochs):
        chosen = np.concatenate([ds.batch_rows(i, epoch) for i in range(len(ds))])
        counts += np.bincount(chosen, minlength=len(rows))
    expected = (area + 0.1 * area.mean()) / (area + 0.1 * area.mean()).sum() * counts.sum()
    assert np.abs(counts - expected).max() < 4 * np.sqrt(expected.max())  # ~binomial noise
    assert counts[area == 0].sum() < 0.1 * counts.sum() < counts[area > 0].sum()
    again = SliceBatches(store, rows, 4, "mask", None, shuffle=True, seed=1, by_tumour_area=True)
    assert np.array_equal(again.batch_rows(3, 7), ds.batch_rows(3, 7))
    assert np.array_equal(tumour_area_weights(np.zeros(3)), np.ones(3))  # no tumour anywhere: uniform
    with pytest.raises(ValueError, match="by_tumour_area"):
        SliceBatches(store, rows, 4, "label", None, shuffle=True, balanced=True, by_tumour_area=True)


def test_balanced_falls_back_to_shuffling_with_one_class(store: SliceStore):
    rows = store.manifest[~store.manifest.has_tumour]
    ds = SliceBatches(store, rows, 8, "label", None, seed=0, balanced=True)
    assert not ds.balanced and len(ds) == len(rows) // 8
    assert ds[0][1].sum() == 0


def test_pickled_batches_reopen_the_store(store: SliceStore):
    ds = SliceBatches(store, store.manifest, 8, "mask", AUG, shuffle=True, seed=4)
    expected = ds[2]
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000  # the memory-mapped arrays are not copied into the pickle
    copy = pickle.loads(blob)
    for u, v in zip(copy[2], expected, strict=True):
        np.testing.assert_array_equal(u, v)


def test_in_memory_matches_unaugmented_batches(store: SliceStore):
    rows = store.manifest.iloc[5:25]
    x, y = in_memory(store, rows, "label")
    assert x.shape == (20, SIZE, SIZE, 3) and x.dtype == np.float32 and y.shape == (20, 1)
    xb = np.concatenate([b[0] for b in SliceBatches(store, rows, 6, "label")])
    np.testing.assert_array_equal(x, xb)
    x, y = in_memory(store, rows, "mask")
    assert y.shape == (20, SIZE, SIZE, 1)
    (x2, masks), labels = in_memory(store, rows, "label+mask")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(masks, y)
    np.testing.assert_array_equal(labels[:, 0], rows.has_tumour.to_numpy(np.float32))


def test_label_and_mask_batches_carry_the_masks_augmented_with_their_images(store: SliceStore):
    """Target "label+mask" (a classifier learning where the tumour is): x = (images, masks), y = labels;
    the same images and masks as target "mask" for the same seed, so image and mask stay aligned."""
    both = SliceBatches(store, store.manifest, 8, "label+mask", AUG, shuffle=True, seed=3, class_weight={0: 1, 1: 2})
    masks_only = SliceBatches(store, store.manifest, 8, "mask", AUG, shuffle=True, seed=3)
    (x, masks), y, weights = both[1]
    x_ref, masks_ref = masks_only[1]
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(masks, masks_ref)
    assert y.shape == (8, 1) and weights.shape == (8,)
    np.testing.assert_array_equal(y[:, 0], store.manifest.has_tumour.to_numpy(np.float32)[both.batch_rows(1)])
    np.testing.assert_array_equal(weights, np.where(y[:, 0] == 1, 2.0, 1.0))


def test_bad_arguments(store: SliceStore, tmp_path: Path):
    with pytest.raises(ValueError, match="batch_size"):
        SliceBatches(store, store.manifest, 0)
    with pytest.raises(ValueError, match="no rows"):
        SliceBatches(store, store.manifest.iloc[:0], 4)
    with pytest.raises(IndexError):
        SliceBatches(store, store.manifest, 8)[100]
