"""BraTS 2021 and Decathlon readers, volume normalisation, slice fitting and the way back to scan space."""

from __future__ import annotations

import gzip
import json
import re
import warnings
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bad_files import BAD_ENTRIES, make_bad_entry

from pipeline.data.regions import to_region_labels
from pipeline.data.sources import (
    Skipped,
    detect_layout,
    normalise_volume,
    read_brats2021_case,
    read_cases,
    read_decathlon_case,
    reading_task,
    to_scan_space,
)
from pipeline.data.sources.volume import canonical_sequence, fit_plan
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError
from pipeline.params import DataParams

SHAPE = (30, 28, 12)  # small scan, X x Y x Z voxels
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # BraTS' own orientation: not canonical RAS
LPS[:3, 3] = [29, 27, 0]
PERMUTED = np.array([[0, -1.0, 0, 10], [1.2, 0, 0, -5], [0, 0, -2.0, 3], [0, 0, 0, 1]])  # axes swapped, flipped
SEQUENCES = {"flair": 1, "t1": 2, "t1gd": 3, "t2": 4}
BRATS_TO_DECATHLON = {0: 0, 1: 2, 2: 1, 4: 3}
CASE = "BraTS2021_00001"


def params(image_size: int = 32, min_brain_fraction: float = 0.0, channels: tuple[str, ...] = ("t1", "flair", "t1gd"),
           source: str = "brats2021", root: Path | str = "", on_error: str = "fail") -> DataParams:
    return DataParams(source=source, root=str(root), image_size=image_size, channels=channels,
                      clip_percentiles=(0.5, 99.5), min_brain_fraction=min_brain_fraction, on_error=on_error)


def reading(image_size: int = 32, min_brain_fraction: float = 0.0,
            channels: tuple[str, ...] = ("t1", "flair", "t1gd")) -> tuple[TaskSpec, float]:
    """What a single-case reader takes: the task spec (as ingest reads with ``params``) and the brain-fraction cut."""
    data = params(image_size, min_brain_fraction, channels)
    return reading_task(data), data.min_brain_fraction


def scan(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sequences (int16 [X, Y, Z], brain in a box, distinct per sequence) and BraTS labels 0/1/2/4."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, bool)
    brain[4:-4, 3:-3, 2:-2] = True
    sequences = {}
    for name, scale in SEQUENCES.items():
        vol = (rng.normal(100 * scale, 20, shape) * brain).astype(np.int16)
        vol[brain & (vol == 0)] = 1
        sequences[name] = vol
    labels = np.zeros(shape, np.uint8)
    labels[10:14, 8:12, 4:7] = 2
    labels[11:13, 9:11, 5] = 1
    labels[12, 10, 4:6] = 4
    return sequences, labels


def save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_brats_case(root: Path, name: str = CASE, affine: np.ndarray = LPS, seed: int = 0,
                     spellings: dict[str, str] | None = None, seg: bool = True) -> Path:
    spellings = {"flair": "flair", "t1": "t1", "t1gd": "t1ce", "t2": "t2", "seg": "seg", **(spellings or {})}
    folder = root / name
    folder.mkdir(parents=True)
    sequences, labels = scan(seed)
    for sequence, vol in sequences.items():
        save(vol, affine, folder / f"{name}_{spellings[sequence]}.nii.gz")
    if seg:
        save(labels, affine, folder / f"{name}_{spellings['seg']}.nii.gz")
    return folder


def write_decathlon(root: Path, affine: np.ndarray = LPS, modality: tuple[str, ...] = ("FLAIR", "T1w", "t1gd", "T2w"),
                    names: tuple[str, ...] = ("BRATS_001",)) -> Path:
    """A Decathlon task folder; channel order follows ``modality`` (any order), labels mapped to 0/1/2/3."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    spec = {"name": "BRATS", "modality": dict(enumerate(modality)),
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}
    (root / "dataset.json").write_text(json.dumps(spec))
    for seed, name in enumerate(names):
        sequences, labels = scan(seed)
        stacked = np.stack([sequences.get(canonical_sequence(m), sequences["t2"]) for m in modality], axis=-1)
        save(stacked, affine, root / "imagesTr" / f"{name}.nii.gz")
        save(np.vectorize(BRATS_TO_DECATHLON.get)(labels).astype(np.uint8), affine, root / "labelsTr" / f"{name}.nii.gz")
    (root / "imagesTr" / f"._{names[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    return root


# --- normalise_volume ---------------------------------------------------------------------------

def test_normalise_volume_maps_brain_percentiles_to_0_255() -> None:
    vol = np.zeros((10, 10, 10), np.float32)
    brain = np.zeros(vol.shape, bool)
    brain[2:8, 2:8, 2:8] = True
    vol[brain] = np.linspace(100, 200, brain.sum())
    vol[0, 0, 0] = 5000  # outside the brain: ignored, stays 0
    out = normalise_volume(vol, brain, (0, 100))
    assert out.dtype == np.uint8 and out[~brain].max() == 0
    assert out[brain].min() == 0 and out[brain].max() == 255
    assert np.all(np.diff(out[brain].astype(int)) >= 0)  # monotonic in intensity
    clipped = normalise_volume(vol, brain, (10, 90))
    assert (clipped[brain] == 255).mean() == pytest.approx(0.10, abs=0.01)
    assert (clipped[brain] == 0).mean() == pytest.approx(0.10, abs=0.01)


@pytest.mark.parametrize("case", ["constant", "empty", "zero_channel"])
def test_normalise_volume_constant_or_empty_gives_zeros_without_warnings(case: str) -> None:
    vol = np.full((6, 6, 6), 7.0) if case == "constant" else np.zeros((6, 6, 6))
    brain = np.zeros(vol.shape, bool) if case == "empty" else np.ones(vol.shape, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalise_volume(vol, brain, (0.5, 99.5))
    assert out.dtype == np.uint8 and not out.any()


# --- BraTS 2021 ---------------------------------------------------------------------------------

def test_brats2021_case_follows_the_slice_convention(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path, affine=PERMUTED)
    case = read_brats2021_case(folder, *reading(min_brain_fraction=0.0), require_labels=True)
    canonical = nib.as_closest_canonical(nib.load(folder / f"{CASE}_t1ce.nii.gz"))
    data = np.asarray(canonical.dataobj)
    assert case.channels == ("t1", "flair", "t1gd")
    assert case.slice_numbers.tolist() == list(range(data.shape[2]))
    plan = case.geometry
    assert plan["canonical_shape"] == list(data.shape) and plan["fit"] == "pad_crop"
    brain = np.zeros(data.shape, bool)
    for sequence in ("t1", "flair", "t1ce"):
        brain |= np.asarray(nib.as_closest_canonical(nib.load(folder / f"{CASE}_{sequence}.nii.gz")).dataobj) != 0
    expected = normalise_volume(data, brain, (0.5, 99.5))
    (r0, c0), (h, w) = plan["pad_before"], data.shape[:2]
    for z in (3, 6):
        np.testing.assert_array_equal(case.image[z, r0:r0 + h, c0:c0 + w, 2], expected[:, :, z])
    assert case.image[:, :r0].max() == 0  # padding is background


def test_brats2021_labels_spacing_and_meta(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path)
    case = read_brats2021_case(folder, *reading(min_brain_fraction=0.5))
    assert case.patient_id == CASE and case.source == "brats2021"
    assert set(np.unique(case.labels)) == {0, 1, 3, 7}  # the region map of 2, 1, 4 (pipeline.data.regions)
    assert case.meta["label_names"][4] == "enhancing tumour" and case.meta["has_labels"] is True
    assert case.slice_numbers.tolist() == list(range(2, 10))  # slices without brain dropped
    assert case.image.shape == (8, 32, 32, 3) and case.spacing_mm == (1.0, 1.0, 1.0)
    resized = read_brats2021_case(folder, *reading(image_size=64))
    assert resized.geometry["fit"] == "resize" and resized.image.shape[1:3] == (64, 64)
    assert resized.spacing_mm == pytest.approx((30 / 64, 28 / 64, 1.0))
    assert set(np.unique(resized.labels)) <= {0, 1, 3, 7}


@pytest.mark.parametrize("spellings", [
    {"t1gd": "t1gd", "seg": "segm"},
    {"t1gd": "T1GD", "flair": "FLAIR", "t1": "T1", "seg": "SEG"},
    {"t1gd": "T1CE"},
])
def test_brats2021_spellings(tmp_path: Path, spellings: dict[str, str]) -> None:
    reference = read_brats2021_case(write_brats_case(tmp_path / "a"), *reading())
    case = read_brats2021_case(write_brats_case(tmp_path / "b", spellings=spellings), *reading())
    np.testing.assert_array_equal(case.image, reference.image)
    np.testing.assert_array_equal(case.labels, reference.labels)


def test_channels_pick_sequences_in_order(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path)
    a = read_brats2021_case(folder, *reading(channels=("t1", "flair", "t1gd")))
    b = read_brats2021_case(folder, *reading(channels=("flair", "t2", "t1")))
    assert b.channels == ("flair", "t2", "t1")
    np.testing.assert_array_equal(b.image[..., 0], a.image[..., 1])


def test_brats2021_without_seg_is_unlabelled_unless_required(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path, seg=False)
    case = read_brats2021_case(folder, *reading())
    assert case.meta["has_labels"] is False and not case.labels.any()
    with pytest.raises(InputError, match="missing segmentation") as e:
        read_brats2021_case(folder, *reading(), require_labels=True)
    assert e.value.path == folder


def test_to_scan_space_round_trip(tmp_path: Path) -> None:
    for name, affine in (("lps", LPS), ("permuted", PERMUTED)):
        folder = write_brats_case(tmp_path / name, affine=affine)
        original = to_region_labels(np.asarray(nib.load(folder / f"{CASE}_seg.nii.gz").dataobj), "brats2021")
        for how in (reading(), reading(min_brain_fraction=0.5), reading(image_size=24)):
            case = read_brats2021_case(folder, *how)
            back = to_scan_space(case.labels, case.geometry)
            assert back.shape == original.shape
            np.testing.assert_array_equal(back, original)  # labels lie in kept, uncropped voxels
        case = read_brats2021_case(folder, *reading(image_size=64))  # resized: nearest-neighbour way back
        back = to_scan_space(case.labels, case.geometry)
        assert back.shape == original.shape and (back == original).mean() > 0.99


def test_fit_plan_pads_crops_or_resizes() -> None:
    assert fit_plan((240, 240), 256) == {"slice_shape": [240, 240], "image_size": [256, 256], "fit": "pad_crop",
                                        "pad_before": [8, 8], "pad_after": [8, 8]}
    assert fit_plan((270, 250), 256)["pad_before"] == [-7, 3]
    assert fit_plan((240, 240), 128)["fit"] == "resize"


# --- Decathlon ----------------------------------------------------------------------------------

def test_same_scan_in_both_layouts_gives_identical_slices(tmp_path: Path) -> None:
    brats = read_brats2021_case(write_brats_case(tmp_path / "brats", name="BRATS_001"), *reading(min_brain_fraction=0.3))
    root = write_decathlon(tmp_path / "task", modality=("T2w", "t1gd", "FLAIR", "T1w"))
    decathlon = read_decathlon_case(root / "imagesTr" / "BRATS_001.nii.gz", *reading(min_brain_fraction=0.3),
                                    root / "labelsTr" / "BRATS_001.nii.gz")
    assert decathlon.patient_id == "BRATS_001" and decathlon.source == "decathlon"
    np.testing.assert_array_equal(decathlon.image, brats.image)
    np.testing.assert_array_equal(decathlon.slice_numbers, brats.slice_numbers)
    np.testing.assert_array_equal(decathlon.labels, brats.labels)  # both editions' labels -> the same regions
    assert decathlon.meta["label_names"] == {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
    assert decathlon.geometry == brats.geometry


def test_decathlon_root_skips_macos_junk_and_reads_every_case(tmp_path: Path) -> None:
    root = write_decathlon(tmp_path / "task", names=("BRATS_001", "BRATS_002"))
    cases = list(read_cases(params(source="decathlon", root=root)))
    assert [c.patient_id for c in cases] == ["BRATS_001", "BRATS_002"]
    assert all(c.meta["has_labels"] for c in cases)
    assert detect_layout(root) == "decathlon_root"
    assert detect_layout(root / "imagesTr" / "BRATS_001.nii.gz") == "decathlon_file"


def test_decathlon_without_label_for_prediction(tmp_path: Path) -> None:
    root = write_decathlon(tmp_path / "task")
    case = read_decathlon_case(root / "imagesTr" / "BRATS_001.nii.gz", *reading())
    assert case.meta["has_labels"] is False and not case.labels.any()


def test_brats2021_root_reads_and_detects(tmp_path: Path) -> None:
    write_brats_case(tmp_path / "root", name="BraTS2021_00001")
    write_brats_case(tmp_path / "root", name="BraTS2021_00002", seed=1)
    (tmp_path / "root" / "name_mapping.csv").write_text("x")
    cases = list(read_cases(params(root=tmp_path / "root")))
    assert [c.patient_id for c in cases] == ["BraTS2021_00001", "BraTS2021_00002"]
    assert detect_layout(tmp_path / "root") == "brats2021_root"
    assert detect_layout(tmp_path / "root" / "BraTS2021_00001") == "brats2021_case"


# --- bad input ----------------------------------------------------------------------------------

def test_missing_modality(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path)
    (folder / f"{CASE}_t1ce.nii.gz").unlink()
    with pytest.raises(InputError, match="missing sequence t1gd") as e:
        read_brats2021_case(folder, *reading())
    assert e.value.path == folder


def test_unexpected_brats_label_value(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path)
    _, labels = scan()
    labels[1, 1, 1] = 3
    save(labels, LPS, folder / f"{CASE}_seg.nii.gz")
    with pytest.raises(InputError, match=r"unexpected label values \[3\]") as e:
        read_brats2021_case(folder, *reading())
    assert e.value.path.name == f"{CASE}_seg.nii.gz"


def test_image_label_shape_mismatch(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path)
    save(np.zeros((30, 28, 11), np.uint8), LPS, folder / f"{CASE}_seg.nii.gz")
    with pytest.raises(InputError, match="differs from") as e:
        read_brats2021_case(folder, *reading())
    assert e.value.path.name == f"{CASE}_seg.nii.gz"


def moved(affine: np.ndarray, how: str) -> np.ndarray:
    """``affine`` with its orientation, spacing or origin changed (or a float-noise change, "noise")."""
    out = affine.copy()
    if how == "orientation":
        out[:3, :3] = np.diag([1.0, -1.0, 1.0])  # RPS instead of LPS, same spacing and origin
    elif how == "spacing":
        out[2, 2] *= 1.2
    elif how == "origin":
        out[:3, 3] += [0.0, 0.5, 0.0]
    elif how == "noise":  # float32 round-off in headers written by other tools: within the tolerances
        out[:3, :3] *= 1 + 1e-6
        out[:3, 3] += 1e-5
    return out


GEOMETRY_MESSAGES = {"orientation": "orientation RPS vs LPS", "spacing": r"spacing \(1, 1, 1.2\) vs \(1, 1, 1\) mm",
                     "origin": r"origin \(29, 27.5, 0\) vs \(29, 27, 0\) mm"}


@pytest.mark.parametrize("how", ["orientation", "spacing", "origin"])
def test_label_geometry_differs_from_image(tmp_path: Path, how: str) -> None:
    """Refused in one line naming the label and the image, never reoriented on the label's own affine."""
    folder = write_brats_case(tmp_path)
    _, labels = scan()
    seg = save(labels, moved(LPS, how), folder / f"{CASE}_seg.nii.gz")
    with pytest.raises(InputError, match=GEOMETRY_MESSAGES[how]) as e:
        read_brats2021_case(folder, *reading())
    assert e.value.path == seg
    assert str(e.value).startswith(f"{seg}: geometry differs from {folder / f'{CASE}_t1.nii.gz'}: ")
    assert "\n" not in str(e.value)


def test_images_of_one_case_must_share_geometry(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path)
    flair = save(scan()[0]["flair"], moved(LPS, "origin"), folder / f"{CASE}_flair.nii.gz")
    with pytest.raises(InputError, match=GEOMETRY_MESSAGES["origin"]) as e:
        read_brats2021_case(folder, *reading())
    assert e.value.path == flair and str(folder / f"{CASE}_t1.nii.gz") in str(e.value)


def test_decathlon_label_geometry_names_both_files(tmp_path: Path) -> None:
    """Image and label share a file name in Decathlon: the message gives both full paths."""
    root = write_decathlon(tmp_path / "task")
    label = root / "labelsTr" / "BRATS_001.nii.gz"
    save(np.asarray(nib.load(label).dataobj), moved(LPS, "spacing"), label)
    with pytest.raises(InputError, match=GEOMETRY_MESSAGES["spacing"]) as e:
        list(read_cases(params(source="decathlon", root=root)))
    assert str(e.value).startswith(f"{label}: geometry differs from {root / 'imagesTr' / 'BRATS_001.nii.gz'}: ")


def test_geometry_within_tolerance_is_accepted(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path)
    _, labels = scan()
    save(labels, moved(LPS, "noise"), folder / f"{CASE}_seg.nii.gz")
    case = read_brats2021_case(folder, *reading())
    assert case.labels.any()


def test_same_image_under_two_case_ids_is_named_at_ingest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.data.slices import write_store

    root = tmp_path / "root"
    write_brats_case(root, name="BraTS2021_00001", seed=0)
    write_brats_case(root, name="BraTS2021_00002", seed=1)
    write_brats_case(root, name="BraTS2021_00003", seed=0)  # the scan of 00001 again
    with caplog.at_level("WARNING", logger="pipeline.data.slices"):
        write_store(read_cases(params(root=root)), tmp_path / "slices")
    warnings_ = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings_) == 1
    assert "case BraTS2021_00003" in warnings_[0] and "same image as case BraTS2021_00001" in warnings_[0]
    assert str(root / "BraTS2021_00003") in warnings_[0] and str(root / "BraTS2021_00001") in warnings_[0]


@pytest.mark.parametrize("damage", ["truncated_gz", "garbage", "truncated_nii"])
def test_corrupt_or_truncated_nifti(tmp_path: Path, damage: str) -> None:
    folder = write_brats_case(tmp_path)
    path = folder / f"{CASE}_flair.nii.gz"
    raw = path.read_bytes()
    if damage == "truncated_gz":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a nifti at all" * 20)
    else:
        path.unlink()
        path = folder / f"{CASE}_flair.nii"
        path.write_bytes(gzip.decompress(raw)[:2000])
    with pytest.raises(InputError, match="not a readable NIfTI") as e:
        read_brats2021_case(folder, *reading())
    assert e.value.path == path


def test_sequence_with_wrong_dimensions(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path)
    path = save(np.zeros((*SHAPE, 2), np.int16), LPS, folder / f"{CASE}_t1.nii.gz")
    with pytest.raises(InputError, match="expected a 3D image") as e:
        read_brats2021_case(folder, *reading())
    assert e.value.path == path


def test_empty_or_unrecognised_brats_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "case_without_files").mkdir(parents=True)
    with pytest.raises(InputError, match="no NIfTI files") as e:
        list(read_cases(params(root=root)))
    assert e.value.path == root / "case_without_files"
    with pytest.raises(InputError, match="no BraTS case folders"):
        list(read_cases(params(root=tmp_path / "root" / "case_without_files")))
    case = write_brats_case(tmp_path / "single")
    with pytest.raises(InputError, match="one BraTS case folder"):
        list(read_cases(params(root=case)))


def test_skip_mode_for_volumes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bad = write_brats_case(root, name="BraTS2021_00001")
    write_brats_case(root, name="BraTS2021_00002")
    (bad / "BraTS2021_00001_t1.nii.gz").unlink()
    items = list(read_cases(params(root=root, on_error="skip")))
    assert isinstance(items[0], Skipped) and items[0].path == str(bad) and "missing sequence t1" in items[0].reason
    assert items[1].patient_id == "BraTS2021_00002"


def test_decathlon_image_without_label_and_label_without_image(tmp_path: Path) -> None:
    root = write_decathlon(tmp_path / "task", names=("BRATS_001", "BRATS_002", "BRATS_003"))
    (root / "labelsTr" / "BRATS_001.nii.gz").unlink()
    (root / "imagesTr" / "BRATS_003.nii.gz").unlink()
    items = list(read_cases(params(source="decathlon", root=root, on_error="skip")))
    assert [type(i).__name__ for i in items] == ["Skipped", "Case", "Skipped"]
    assert "image without label" in items[0].reason and items[0].path.endswith("imagesTr/BRATS_001.nii.gz")
    assert "label without image" in items[2].reason and items[2].path.endswith("labelsTr/BRATS_003.nii.gz")
    with pytest.raises(InputError, match="image without label"):
        list(read_cases(params(source="decathlon", root=root)))


def test_decathlon_channel_count_disagrees_with_dataset_json(tmp_path: Path) -> None:
    root = write_decathlon(tmp_path / "task")
    spec = json.loads((root / "dataset.json").read_text())
    spec["modality"]["4"] = "ADC"
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match="4D image has 4 channels, dataset.json declares 5") as e:
        list(read_cases(params(source="decathlon", root=root)))
    assert e.value.path.name == "BRATS_001.nii.gz"


def test_decathlon_3d_image(tmp_path: Path) -> None:
    root = write_decathlon(tmp_path / "task")
    save(scan()[0]["t1"], LPS, root / "imagesTr" / "BRATS_001.nii.gz")
    with pytest.raises(InputError, match="expected a 4D image"):
        list(read_cases(params(source="decathlon", root=root)))


def test_decathlon_label_outside_declared_set(tmp_path: Path) -> None:
    root = write_decathlon(tmp_path / "task")
    _, labels = scan()  # BraTS values 0/1/2/4: 4 is not a Decathlon label
    save(labels, LPS, root / "labelsTr" / "BRATS_001.nii.gz")
    with pytest.raises(InputError, match=r"unexpected label values \[4\]") as e:
        list(read_cases(params(source="decathlon", root=root)))
    assert e.value.path == root / "labelsTr" / "BRATS_001.nii.gz"


def test_decathlon_missing_modality_and_bad_dataset_json(tmp_path: Path) -> None:
    root = write_decathlon(tmp_path / "task", modality=("FLAIR", "T1w", "T2w", "ADC"))
    with pytest.raises(InputError, match="missing sequence t1gd"):
        list(read_cases(params(source="decathlon", root=root)))
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable dataset.json"):
        list(read_cases(params(source="decathlon", root=root)))
    (root / "dataset.json").unlink()
    with pytest.raises(InputError, match="no dataset.json"):
        list(read_cases(params(source="decathlon", root=root)))


def test_detect_layout_rejects_a_3d_nifti(tmp_path: Path) -> None:
    folder = write_brats_case(tmp_path)
    with pytest.raises(InputError, match="holds one sequence"):
        detect_layout(folder / f"{CASE}_t1.nii.gz")


def test_sequence_spellings() -> None:
    assert [canonical_sequence(s) for s in ("FLAIR", "T1w", "t1gd", "T1Gd", "T1c", "T1CE", "T2w", "T2", "ADC")] == [
        "flair", "t1", "t1gd", "t1gd", "t1gd", "t1gd", "t2", "t2", None]


def test_source_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data.source"):
        list(read_cases(replace(params(root=tmp_path), source="nifti")))


# --- broken files, junk next to the data, labels optional for prediction (issue 13) --------------

def test_macos_junk_and_hidden_folders_are_not_cases(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    write_brats_case(root)
    (root / "__MACOSX" / CASE).mkdir(parents=True)
    (root / "__MACOSX" / CASE / f"._{CASE}_flair.nii.gz").write_bytes(b"\0\5\26\7")
    (root / ".cache").mkdir()
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / CASE / f"._{CASE}_seg.nii.gz").write_bytes(b"\0\5\26\7")
    assert detect_layout(root) == "brats2021_root"
    assert [c.patient_id for c in read_cases(params(source="brats2021", root=root))] == [CASE]


@pytest.mark.timeout(60, method="thread")  # a FIFO read would block for ever
@pytest.mark.parametrize("kind", ["dangling_link", "symlink_loop", "folder", "fifo", "empty"])
@pytest.mark.parametrize("which", ["flair", "seg"])
def test_volume_that_is_no_file_says_what_it_is(tmp_path: Path, kind: str, which: str) -> None:
    folder = write_brats_case(tmp_path)
    path = folder / f"{CASE}_{which}.nii.gz"
    make_bad_entry(path, kind)
    with pytest.raises(InputError, match=re.escape(BAD_ENTRIES[kind])) as e:
        read_brats2021_case(folder, *reading(), require_labels=True)
    assert e.value.path == path


def _break_seg(folder: Path, how: str) -> Path:
    path = folder / f"{CASE}_seg.nii.gz"
    if how == "wrong_grid":
        save(np.zeros((SHAPE[0] + 2, *SHAPE[1:]), np.uint8), LPS, path)
    elif how == "bad_values":
        save(np.full(SHAPE, 3, np.uint8), LPS, path)
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        make_bad_entry(path, how)
    return path


@pytest.mark.parametrize("how", ["wrong_grid", "bad_values", "truncated", "dangling_link"])
def test_bad_segmentation_gives_an_unlabelled_case_when_labels_are_optional(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_brats_case(tmp_path)
    expected = read_brats2021_case(folder, *reading())
    path = _break_seg(folder, how)
    with pytest.raises(InputError) as e:
        read_brats2021_case(folder, *reading())
    assert e.value.path == path
    case = read_brats2021_case(folder, *reading(), on_bad_labels="warn")
    np.testing.assert_array_equal(case.image, expected.image)
    assert case.meta["has_labels"] is False and not case.labels.any() and "seg" not in case.meta["files"]
    assert any(str(path) in r.getMessage() and "without its segmentation" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
