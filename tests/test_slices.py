"""The slice store: round trip, manifest counts, memory-mapped reads, atomic writes, input errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data.case import LGG_CHANNELS, Case
from pipeline.data.slices import MANIFEST_COLUMNS, Skipped, SliceStore, write_store
from pipeline.errors import InputError

N_SLICES, SIZE = 5, 32


def make_case(patient_id: str, seed: int, size: int = SIZE, n: int = N_SLICES) -> Case:
    """n slices of size x size x 3: brain in a centred square (rows/cols 8..23), tumour on slices 1 and 3."""
    rng = np.random.default_rng(seed)
    image = np.zeros((n, size, size, 3), np.uint8)
    image[:, 8:24, 8:24] = rng.integers(1, 256, (n, 16, 16, 3), dtype=np.uint8)
    labels = np.zeros((n, size, size), np.uint8)
    labels[1, 10:14, 10:13] = 1  # 12 pixels
    labels[3, 12:20, 12:20] = 2  # 64 pixels, another label value
    return Case(patient_id=patient_id, image=image, labels=labels, source="lgg", channels=LGG_CHANNELS,
                slice_numbers=np.arange(10, 10 + n), meta={"path": f"/raw/{patient_id}"})


def make_cases() -> list[Case]:
    return [make_case(f"TCGA_{i}", seed=i) for i in range(3)]


def test_round_trip_and_manifest(tmp_path: Path):
    cases = make_cases()
    manifest = write_store(cases, tmp_path / "slices")
    store = SliceStore(tmp_path / "slices")

    assert list(store.manifest.columns) == MANIFEST_COLUMNS
    pd.testing.assert_frame_equal(store.manifest, manifest, check_dtype=False)
    assert len(store.manifest) == 3 * N_SLICES
    assert store.patient_ids == [c.patient_id for c in cases]
    assert store.image_shape == (SIZE, SIZE, 3)
    for case in cases:
        np.testing.assert_array_equal(store.images(case.patient_id), case.image)
        np.testing.assert_array_equal(store.labels(case.patient_id), case.labels)
        rows = store.manifest[store.manifest.patient_id == case.patient_id]
        assert rows.slice_index.tolist() == list(range(N_SLICES))
        assert rows.slice_number.tolist() == list(range(10, 10 + N_SLICES))
        assert rows.has_tumour.tolist() == [False, True, False, True, False]
        assert rows.tumour_pixels.tolist() == [0, 12, 0, 64, 0]
        assert (rows.brain_pixels == (case.image.max(axis=3) > 0).sum(axis=(1, 2))).all()
        assert (rows.brain_pixels <= 16 * 16).all() and (rows.brain_pixels > 200).all()
        assert (rows.source == "lgg").all()
    assert store.manifest.has_tumour.sum() == 6


def test_reads_are_memory_mapped_and_gather_in_order(tmp_path: Path):
    cases = make_cases()
    write_store(cases, tmp_path / "slices")
    store = SliceStore(tmp_path / "slices")
    assert isinstance(store.images("TCGA_1"), np.memmap)
    assert isinstance(store.labels("TCGA_1"), np.memmap)
    assert store.images("TCGA_1").dtype == np.uint8 and store.labels("TCGA_1").dtype == np.uint8

    images, labels = store.read(["TCGA_2", "TCGA_0", "TCGA_2"], [4, 1, 0])
    assert images.shape == (3, SIZE, SIZE, 3) and labels.shape == (3, SIZE, SIZE)
    assert not isinstance(images, np.memmap)  # a copy: the caller may modify it
    np.testing.assert_array_equal(images[0], cases[2].image[4])
    np.testing.assert_array_equal(images[1], cases[0].image[1])
    np.testing.assert_array_equal(labels[1], cases[0].labels[1])
    np.testing.assert_array_equal(images[2], cases[2].image[0])

    rows = store.manifest.iloc[[7, 2]]
    images, labels = store.read_rows(rows)
    np.testing.assert_array_equal(images[0], cases[1].image[2])
    np.testing.assert_array_equal(labels[1], cases[0].labels[2])


def test_failed_write_leaves_no_store_and_no_temp_folder(tmp_path: Path):
    def failing() -> Iterator[Case]:
        yield make_case("TCGA_0", 0)
        raise RuntimeError("reader crashed")

    with pytest.raises(RuntimeError, match="reader crashed"):
        write_store(failing(), tmp_path / "slices")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_existing_store(tmp_path: Path):
    write_store(make_cases(), tmp_path / "slices")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "slices").rglob("*") if p.is_file()}

    def failing() -> Iterator[Case]:
        yield make_case("NEW_0", 5)
        raise RuntimeError("reader crashed")

    with pytest.raises(RuntimeError):
        write_store(failing(), tmp_path / "slices")
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "slices").rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["slices"]
    assert SliceStore(tmp_path / "slices").patient_ids == ["TCGA_0", "TCGA_1", "TCGA_2"]


def test_successful_write_replaces_the_old_store(tmp_path: Path):
    write_store(make_cases(), tmp_path / "slices")
    write_store([make_case("OTHER", 9)], tmp_path / "slices")
    assert SliceStore(tmp_path / "slices").patient_ids == ["OTHER"]
    assert [p.name for p in tmp_path.iterdir()] == ["slices"]


def test_duplicate_patient_id_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="appears twice"):
        write_store([make_case("TCGA_0", 0), make_case("TCGA_0", 1)], tmp_path / "slices")
    assert list(tmp_path.iterdir()) == []


def test_mismatched_slice_shapes_are_an_input_error(tmp_path: Path):
    with pytest.raises(InputError) as info:
        write_store([make_case("TCGA_0", 0), make_case("TCGA_1", 1, size=64)], tmp_path / "slices")
    assert "/raw/TCGA_1" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_skipped_records_land_in_skipped_csv(tmp_path: Path):
    items = [make_case("TCGA_0", 0), Skipped("/raw/broken_1", "unreadable TIFF"),
             make_case("TCGA_1", 1), Skipped("/raw/broken_2", "mask shape differs")]
    manifest = write_store(items, tmp_path / "slices")
    store = SliceStore(tmp_path / "slices")
    assert store.patient_ids == ["TCGA_0", "TCGA_1"]
    assert len(manifest) == 2 * N_SLICES
    skipped = pd.read_csv(tmp_path / "slices" / "skipped.csv")
    assert skipped.to_dict("records") == [{"path": "/raw/broken_1", "reason": "unreadable TIFF"},
                                          {"path": "/raw/broken_2", "reason": "mask shape differs"}]
    pd.testing.assert_frame_equal(store.skipped, skipped)


def test_only_skipped_records_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="nothing to store"):
        write_store([Skipped("/raw/a", "bad")], tmp_path / "slices")
    assert list(tmp_path.iterdir()) == []


def test_unsafe_patient_ids_get_distinct_file_stems(tmp_path: Path):
    write_store([make_case("a/b", 0), make_case("a_b", 1), make_case("a:b", 2)], tmp_path / "slices")
    store = SliceStore(tmp_path / "slices")
    stems = [store.patients[p]["stem"] for p in ("a/b", "a_b", "a:b")]
    assert len(set(stems)) == 3 and all("/" not in s for s in stems)
    np.testing.assert_array_equal(store.images("a_b"), make_case("a_b", 1).image)
    np.testing.assert_array_equal(store.images("a:b"), make_case("a:b", 2).image)


def test_opening_a_folder_without_manifest_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="not a slice store"):
        SliceStore(tmp_path)
