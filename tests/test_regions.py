"""The pipeline's one label convention (pipeline.data.regions): every edition's labels -> the same regions, and
back; every BraTS layout through ingest; the shared real cases (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.data import regions
from pipeline.data.demo import write_brats2021, write_brats2023, write_decathlon
from pipeline.data.regions import (
    REGIONS,
    from_region_masks,
    nest,
    parent,
    region_mask,
    region_masks,
    to_dataset_labels,
    to_region_labels,
)
from pipeline.data.slices import SliceStore, write_store
from pipeline.data.sources import detect_layout, read_cases, reading_task, registry
from pipeline.params import DataParams

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WT, TC, ET = "whole_tumour", "tumour_core", "enhancing_tumour"
# Each edition's own numbers for (whole tumour, tumour core, enhancing tumour): the facts the tables must give.
EDITION_REGIONS = {
    "brats2021": {WT: (1, 2, 4), TC: (1, 4), ET: (4,)},
    "brats2023": {WT: (1, 2, 3), TC: (1, 3), ET: (3,)},
    "decathlon": {WT: (1, 2, 3), TC: (2, 3), ET: (3,)},
    "lgg": {WT: (1,), TC: (), ET: ()},
}


def params(source: str, root: Path, image_size: int = 64) -> DataParams:
    return DataParams(source=source, root=str(root), image_size=image_size, channels=("t1", "flair", "t1gd"),
                      clip_percentiles=(0.5, 99.5), min_brain_fraction=0.0, on_error="fail")


@pytest.mark.parametrize("edition", sorted(EDITION_REGIONS))
def test_each_edition_maps_to_the_regions_and_back(edition: str) -> None:
    values = np.array([0, *regions.LABEL_TABLES[edition]], np.uint8)
    mapped = to_region_labels(values, edition)
    for region, members in EDITION_REGIONS[edition].items():
        np.testing.assert_array_equal(region_mask(mapped, region), np.isin(values, members), err_msg=region)
    np.testing.assert_array_equal(mapped > 0, values > 0)  # whole tumour = every tumour label
    np.testing.assert_array_equal(to_dataset_labels(mapped, edition), values)


def test_unknown_label_value_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[3\]"):
        to_region_labels(np.array([0, 3]), "brats2021")


def test_nesting_is_derived_from_the_tables() -> None:
    assert (parent(WT), parent(TC), parent(ET)) == (None, WT, TC)
    masks = np.zeros((2, 3), bool)
    masks[0] = [False, True, True]  # core and enhancing without whole tumour: both dropped
    masks[1] = [True, False, True]  # enhancing outside the core: dropped
    np.testing.assert_array_equal(nest(masks, REGIONS), [[False, False, False], [True, False, False]])


def test_nested_masks_write_back_in_each_editions_numbers() -> None:
    masks = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], bool)
    codes = from_region_masks(masks, REGIONS)
    np.testing.assert_array_equal(region_masks(codes, REGIONS), masks)
    assert to_dataset_labels(codes, "brats2021").tolist() == [0, 2, 1, 4]
    assert to_dataset_labels(codes, "brats2023").tolist() == [0, 2, 1, 3]
    assert to_dataset_labels(codes, "decathlon").tolist() == [0, 1, 2, 3]


def test_a_fourth_region_needs_one_line_and_the_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """"surrounding oedema" = BraTS 2 / Decathlon 1: one more entry in REGIONS, its name in the table rows."""
    oedema = "surrounding_oedema"
    monkeypatch.setattr(regions, "REGIONS", (*REGIONS, oedema))
    tables = {source: {label: (*members, oedema) if label == {"brats2021": 2, "brats2023": 2, "decathlon": 1}.get(source)
                       else members for label, members in table.items()}
              for source, table in regions.LABEL_TABLES.items()}
    monkeypatch.setattr(regions, "LABEL_TABLES", tables)
    assert regions.target_regions("regions") == (WT, TC, ET, oedema)
    assert parent(oedema) == WT and parent(ET) == TC
    for edition, oedema_label in (("brats2021", 2), ("brats2023", 2), ("decathlon", 1)):
        values = np.array([0, *regions.LABEL_TABLES[edition]], np.uint8)
        mapped = to_region_labels(values, edition)
        np.testing.assert_array_equal(region_mask(mapped, oedema), values == oedema_label)
        for region, members in EDITION_REGIONS[edition].items():
            np.testing.assert_array_equal(region_mask(mapped, region), np.isin(values, members))
        np.testing.assert_array_equal(to_dataset_labels(mapped, edition), values)
        masks = nest(region_masks(mapped, regions.REGIONS), regions.REGIONS)
        np.testing.assert_array_equal(to_dataset_labels(from_region_masks(masks, regions.REGIONS), edition), values)


# --- every BraTS layout through ingest ------------------------------------------------------------------

def _native_labels(source: str, root: Path, case_id: str) -> np.ndarray:
    if source == "decathlon":
        return np.asarray(nib.load(root / "labelsTr" / f"{case_id}.nii.gz").dataobj)
    return np.asarray(nib.load(next((root / case_id).glob("*seg.nii.gz"))).dataobj)


@pytest.mark.parametrize("source, writer, kind", [
    ("brats2021", write_brats2021, "brats2021_root"),
    ("brats2023", write_brats2023, "brats2023_root"),
    ("decathlon", write_decathlon, "decathlon_root"),
])
def test_every_brats_layout_ingests_to_regions(tmp_path: Path, source: str, writer, kind: str) -> None:
    root = tmp_path / source
    names = writer(root, patients=2, slices=12, size=64, seed=3)
    assert detect_layout(root) == kind
    write_store(read_cases(params(source, root)), tmp_path / "store")  # 64 px: pad/crop by 0, every slice kept
    store = SliceStore(tmp_path / "store")
    assert sorted(store.patient_ids) == sorted(names)
    tumour_seen = 0
    for case_id in names:
        native = _native_labels(source, root, case_id)
        stored = store.labels(case_id)
        for region, members in EDITION_REGIONS[source].items():
            assert region_mask(stored, region).sum() == np.isin(native, members).sum(), (case_id, region)
        tumour_seen += int((native > 0).sum())
        assert store.patients[case_id]["source"] == source
    assert tumour_seen > 0


def test_demo_editions_hold_the_same_patients(tmp_path: Path) -> None:
    """The three writers give one patient the same region map, whatever its edition's numbers."""
    cases = {}
    for source, writer in (("brats2021", write_brats2021), ("brats2023", write_brats2023),
                           ("decathlon", write_decathlon)):
        writer(tmp_path / source, patients=1, slices=12, size=64, seed=5)
        cases[source] = next(iter(read_cases(params(source, tmp_path / source))))
    assert cases["brats2021"].labels.any()
    for source in ("brats2023", "decathlon"):
        np.testing.assert_array_equal(cases[source].labels, cases["brats2021"].labels)
        np.testing.assert_array_equal(cases[source].image, cases["brats2021"].image)


# --- the shared real cases -------------------------------------------------------------------------------

SHARED_CASES = [  # (path, kind, edition of its label numbers)
    ("brats/BraTS2021/BraTS2021_00006", "brats2021_case", "brats2021"),
    ("brats/Task01_BrainTumour/imagesTr/BRATS_900.nii.gz", "decathlon_file", "decathlon"),
    ("brats-more/Brats17_2013_27_1", "brats2021_case", "brats2021"),
    ("brats-more/Brats18_2013_2_1", "brats2021_case", "brats2021"),
    ("brats-more/Brats18_TCIA05_396_1", "brats2021_case", "brats2021"),
    ("brats-more/BraTS-GLI-00000-000", "brats2023_case", "brats2023"),
]


@pytest.mark.parametrize("relative, kind, edition", SHARED_CASES, ids=[c[0].split("/")[-1] for c in SHARED_CASES])
def test_shared_brats_cases_read_with_the_right_regions(relative: str, kind: str, edition: str) -> None:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared sample data not found at {path}")
    layout, found = registry.detect(path)
    assert found == kind
    case = layout.read(path, reading_task(params(edition, path, image_size=256)), min_brain_fraction=0.0,
                       labels="required")
    assert case.source == edition
    seg = (path.parent.parent / "labelsTr" / path.name) if edition == "decathlon" else next(path.glob("*seg.nii.gz"))
    native = np.asarray(nib.load(seg).dataobj)
    for region, members in EDITION_REGIONS[edition].items():
        assert region_mask(case.labels, region).sum() == np.isin(native, members).sum() > 0, region


# --- data.target "regions": training targets and the cascade's nested masks --------------------------------

def test_region_batches_give_one_mask_channel_per_region(tmp_path: Path) -> None:
    from pipeline.models.batches import SliceBatches

    write_brats2021(tmp_path / "brats", patients=1, slices=12, size=64, seed=5)
    write_store(read_cases(params("brats2021", tmp_path / "brats")), tmp_path / "store")
    store = SliceStore(tmp_path / "store")
    rows = store.manifest[store.manifest.has_tumour]
    x, y = SliceBatches(store, rows, 4, "mask", regions=REGIONS)[0]
    assert x.shape[:3] == y.shape[:3] and y.shape[3] == 3 and y[..., 0].any()
    labels = store.read_rows(rows.iloc[:4])[1]
    np.testing.assert_array_equal(y, region_masks(labels, REGIONS).astype(np.float32))
    assert (y[..., 2] <= y[..., 1]).all() and (y[..., 1] <= y[..., 0]).all()  # nested
    _, whole = SliceBatches(store, rows, 4, "mask")[0]
    np.testing.assert_array_equal(whole[..., 0], y[..., 0])


def test_combine_regions_gates_cleans_and_nests() -> None:
    from pipeline.evaluation.cascade import combine_regions
    from pipeline.evaluation.postprocess import PostProcessing

    probabilities = np.zeros((3, 8, 8, 3), np.float32)
    probabilities[:, 2:6, 2:6, 0] = 0.9  # whole tumour on every slice
    probabilities[:, 3:5, 3:5, 1] = 0.9  # core inside it
    probabilities[:, 0, 0, 1] = 0.9  # core outside the whole tumour: cut
    probabilities[:, 3:7, 3:7, 2] = 0.9  # enhancing, partly outside the core: cut to it
    gated = np.array([True, True, False])
    masks = combine_regions(probabilities, gated, 0.5, REGIONS, PostProcessing(0, True))
    assert masks.shape == (3, 8, 8, 3) and not masks[2].any()
    assert (masks[..., 2] <= masks[..., 1]).all() and (masks[..., 1] <= masks[..., 0]).all()
    np.testing.assert_array_equal(masks[:2, ..., 1], masks[:2, ..., 2])  # enhancing = the core here
    assert masks[0, ..., 0].sum() == 16 and masks[0, ..., 1].sum() == 4 and not masks[:, 0, 0, 1].any()


def test_combine_regions_fills_the_holes_of_the_whole_tumour_only() -> None:
    from pipeline.evaluation.cascade import combine_regions
    from pipeline.evaluation.postprocess import PostProcessing

    probabilities = np.zeros((1, 9, 9, 3), np.float32)
    probabilities[0, 1:8, 1:8, 0] = 0.9
    probabilities[0, 3:6, 3:6, 0] = 0.1  # the whole tumour marked as a rim: its 3x3 inside a hole
    probabilities[0, 2:7, 2:7, 1:] = 0.9
    probabilities[0, 3:6, 3:6, 1:] = 0.1  # core and enhancing rings: a necrotic centre, a real hole
    masks = combine_regions(probabilities, np.array([True]), 0.5, REGIONS, PostProcessing(fill_holes=True))
    assert masks[0, 1:8, 1:8, 0].all()  # filled
    assert masks[0, ..., 1].sum() == masks[0, ..., 2].sum() == 16 and not masks[0, 3:6, 3:6, 1:].any()


def test_ingest_declares_every_data_key_but_the_target() -> None:
    """Switching data.target retrains the segmenter but does not re-ingest; any other data key re-ingests."""
    import dataclasses

    import yaml

    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    declared = {key.split(".", 1)[1] for key in stages["ingest"]["params"] if key.startswith("data.")}
    assert declared == {f.name for f in dataclasses.fields(DataParams)} - {"target"}
    assert "data.target" in stages["train_segmenter"]["params"]


def test_region_scores_of_a_perfect_segmenter(tmp_path: Path) -> None:
    """A segmenter that outputs the reference regions scores Dice 1, no volume error, sensitivity and
    specificity 1 for every region, at the gate it is given."""
    from types import SimpleNamespace

    import pandas as pd

    from pipeline.evaluation.postprocess import PostProcessing
    from pipeline.evaluation.region_scores import region_patient_rows, region_summary
    from pipeline.evaluation.scoring import Scored

    write_brats2021(tmp_path / "brats", patients=3, slices=12, size=64, seed=8)
    write_store(read_cases(params("brats2021", tmp_path / "brats")), tmp_path / "store")
    store = SliceStore(tmp_path / "store")

    class Perfect(SimpleNamespace):
        def segment_regions(self, images: np.ndarray, index: np.ndarray) -> np.ndarray:  # the reference asked for
            labels = next(np.asarray(store.labels(pid)) for pid in store.patient_ids
                          if np.array_equal(np.asarray(store.images(pid)), images))
            return region_masks(labels[index], REGIONS).astype(np.float32)

    slices = store.manifest.assign(split=["val" if i % 2 else "test" for i in pd.factorize(store.manifest.patient_id)[0]],
                                   probability=1.0)
    cascade = Perfect(threshold=0.5, seg_threshold=0.5, post=PostProcessing())
    rows, masks = region_patient_rows(Scored(slices, {}, {}), store, cascade, REGIONS)
    assert len(rows) == 3 * len(REGIONS)
    there = rows[rows.has_region]
    assert len(there) and (there.dice == 1).all() and (there.sensitivity == 1).all() and (there.volume_error == 0).all()
    assert (rows.specificity == 1).all() and (rows.volume_unit == "ml").all()
    summary = region_summary(rows, REGIONS)
    assert summary["test"]["enhancing_tumour"]["dice_slice_mean"] == 1.0
    for pid, predicted in masks.items():
        np.testing.assert_array_equal(predicted, region_masks(np.asarray(store.labels(pid)), REGIONS))
