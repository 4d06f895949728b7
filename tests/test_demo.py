"""Synthetic demo data: real on-disk layouts, determinism, and tumours a model can learn."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from pipeline.data import anatomy, demo
from pipeline.params import DataParams, DemoParams

CASE_NAME = re.compile(r"^TCGA_[A-Z]{2}_[A-Z0-9]{4}_\d{8}$")
PATIENTS, SLICES, SIZE = 4, 8, 64


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _masks(root: Path, case: str, n: int) -> np.ndarray:
    """bool [n, H, W] tumour masks of one written kaggle_3m case."""
    return np.stack([tifffile.imread(root / case / f"{case}_{k}_mask.tif") > 0 for k in range(1, n + 1)])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("demo") / "kaggle_3m"
    return root, demo.write_kaggle_3m(root, PATIENTS, SLICES, SIZE, seed=1)


@pytest.fixture(scope="module")
def default_sized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The default demo set's patients and slices (30 x 24), at 64 px to stay quick."""
    root = tmp_path_factory.mktemp("demo30") / "kaggle_3m"
    return root, demo.write_kaggle_3m(root, 30, 24, SIZE, seed=7)


# --- kaggle_3m layout -------------------------------------------------------------------------


def test_kaggle_3m_layout_and_names(small: tuple[Path, list[str]]) -> None:
    root, names = small
    assert len(names) == PATIENTS == len(set(names))
    assert all(CASE_NAME.match(name) for name in names), names
    assert {name.split("_")[1] for name in names} <= set(demo.LGG_INSTITUTIONS)
    assert sorted(p.name for p in root.iterdir()) == sorted([*names, "README.md", "data.csv"])
    for name in names:
        expected = {f"{name}_{n}.tif" for n in range(1, SLICES + 1)} | {f"{name}_{n}_mask.tif" for n in range(1, SLICES + 1)}
        assert {p.name for p in (root / name).iterdir()} == expected
    assert not list(root.parent.glob(".kaggle_3m.*")), "temporary folders left behind"


def test_kaggle_3m_data_csv(small: tuple[Path, list[str]]) -> None:
    root, names = small
    with open(root / "data.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["Patient"] for r in rows] == [name.rsplit("_", 1)[0] for name in names]
    for r in rows:
        assert r["age_at_initial_pathologic"] == "" or 18 <= int(r["age_at_initial_pathologic"]) <= 90
        assert r["gender"] in ("", "1", "2")


def test_kaggle_3m_images_and_masks(small: tuple[Path, list[str]]) -> None:
    root, names = small
    for name in names:
        for n in (1, SLICES // 2, SLICES):
            with tifffile.TiffFile(root / name / f"{name}_{n}.tif") as tif:
                page = tif.pages[0]
                assert page.photometric == tifffile.PHOTOMETRIC.RGB
                image = page.asarray()
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            mask = tifffile.imread(root / name / f"{name}_{n}_mask.tif")
            assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
        middle = tifffile.imread(root / name / f"{name}_{SLICES // 2}.tif")
        assert all(middle[..., c].max() > 60 for c in range(3)), "a channel is empty"
        assert middle[:3, :3].max() < 40, "the corners should be background"


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, small: tuple[Path, list[str]]) -> None:
    root, names = small
    again = tmp_path / "again"
    assert demo.write_kaggle_3m(again, PATIENTS, SLICES, SIZE, seed=1) == names
    assert _hashes(again) == _hashes(root)
    other = tmp_path / "other"
    demo.write_kaggle_3m(other, PATIENTS, SLICES, SIZE, seed=2)
    assert set(_hashes(other).values()).isdisjoint(
        v for k, v in _hashes(root).items() if k.endswith(".tif") and not k.endswith("_mask.tif")
    )


def test_patient_does_not_depend_on_the_number_of_patients(tmp_path: Path, small: tuple[Path, list[str]]) -> None:
    root, names = small
    fewer = demo.write_kaggle_3m(tmp_path / "fewer", 2, SLICES, SIZE, seed=1)
    assert fewer == names[:2]
    assert _hashes(tmp_path / "fewer" / fewer[1]) == _hashes(root / names[1])


def test_rewrite_replaces_the_old_folder(tmp_path: Path) -> None:
    root = tmp_path / "kaggle_3m"
    root.mkdir()
    (root / "stale.txt").write_text("old")
    demo.write_kaggle_3m(root, 3, 4, 32, seed=0)
    assert not (root / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle_3m"]


def test_failed_write_keeps_the_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "kaggle_3m"
    root.mkdir()
    (root / "keep.txt").write_text("old")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "generate_patient", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.write_kaggle_3m(root, 3, 4, 32, seed=0)
    assert (root / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle_3m"]


def test_write_demo_uses_the_params(tmp_path: Path) -> None:
    names = demo.write_demo(tmp_path / "d", DemoParams(patients=3, slices_per_patient=5, image_size=32, seed=3))
    assert names == demo.lgg_case_names(3, 3)
    assert tifffile.imread(tmp_path / "d" / names[0] / f"{names[0]}_5.tif").shape == (32, 32, 3)


# --- tumours ----------------------------------------------------------------------------------


def test_about_a_third_of_slices_show_tumour(default_sized: tuple[Path, list[str]]) -> None:
    root, names = default_sized
    positive = [_masks(root, name, 24).any(axis=(1, 2)) for name in names]
    fraction = np.mean(positive)
    assert 0.25 <= fraction <= 0.45, fraction
    tumour_free = sum(not p.any() for p in positive)
    assert 2 <= tumour_free <= 5, tumour_free  # about 1 in 8


def test_tumour_slices_are_one_contiguous_run(default_sized: tuple[Path, list[str]]) -> None:
    root, names = default_sized
    for name in names:
        slices = np.flatnonzero(_masks(root, name, 24).any(axis=(1, 2)))
        if len(slices):
            assert slices[-1] - slices[0] + 1 == len(slices), f"{name}: tumour on slices {slices.tolist()}"


def test_tumour_is_bright_in_flair_and_mostly_clear() -> None:
    ratios = []
    for i in range(24):
        rng, has_tumour, low_contrast = demo._patient_plan(0, "kaggle_3m", i)
        if not has_tumour:
            continue
        p = anatomy.generate_patient(rng, 16, SIZE, has_tumour=True, low_contrast=low_contrast, sequences=("flair", "t1"))
        tumour = p.labels > 0
        assert tumour.any()
        ring = ndimage.binary_dilation(tumour, np.ones((1, 9, 9), bool)) & ~tumour & p.brain
        flair, t1 = p.image[..., 0], p.image[..., 1]
        ratios.append(flair[tumour].mean() / flair[ring].mean())
        assert t1[tumour].mean() < t1[ring].mean() * 1.05, "tumour should be iso/hypointense in T1"
    ratios = np.array(ratios)
    assert (ratios > 1.05).all(), ratios.round(2)
    assert np.mean(ratios > 1.3) >= 0.7, ratios.round(2)  # most clear, a few faint


def test_brats_labels_are_nested() -> None:
    seen = set()
    for i in range(12):
        rng, has_tumour, low_contrast = demo._patient_plan(0, "brats2021", i)
        p = anatomy.generate_patient(rng, 20, SIZE, has_tumour=has_tumour, low_contrast=low_contrast)
        values = set(np.unique(p.labels).tolist())
        assert values <= {0, 1, 2, 4}
        seen |= values
        if values != {0}:
            assert 2 in values, "edema surrounds the core"
            whole = p.labels > 0
            core = (p.labels == 1) | (p.labels == 4)
            assert (ndimage.binary_erosion(whole, iterations=1) | ~core).mean() > 0.99  # the core stays inside
        assert not (p.labels.astype(bool) & ~p.brain).any(), "tumour outside the brain"
    assert seen == {0, 1, 2, 4}


# --- BraTS 2021 layout ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brats(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("brats") / "BraTS2021"
    return root, demo.write_brats2021(root, 3, 24, 48, seed=0)


def test_brats2021_files(brats: tuple[Path, list[str]]) -> None:
    root, names = brats
    assert all(re.fullmatch(r"BraTS2021_\d{5}", name) for name in names) and names == sorted(names)
    for name in names:
        files = {p.name for p in (root / name).iterdir()}
        assert files == {f"{name}_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2", "seg")}
        seg_img = nib.load(root / name / f"{name}_seg.nii.gz")
        seg = np.asanyarray(seg_img.dataobj)
        assert seg.shape == (48, 48, 24) and seg.dtype == np.uint8
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
        assert nib.aff2axcodes(seg_img.affine) == ("L", "P", "S")
        assert np.allclose(seg_img.header.get_zooms(), 1.0)
        brain = None
        for s in ("flair", "t1", "t1ce", "t2"):
            img = nib.load(root / name / f"{name}_{s}.nii.gz")
            data = np.asanyarray(img.dataobj)
            assert data.shape == (48, 48, 24) and data.dtype == np.int16
            assert np.array_equal(img.affine, seg_img.affine)
            assert data.min() >= 0 and data.max() > 100
            brain = data > 0 if brain is None else brain
        assert brain is not None and not brain[:2, :2].any(), "skull-stripped: corners are zero"
        assert not (seg > 0)[~brain].any(), "tumour outside the brain"


def test_brats2021_same_seed_same_bytes(tmp_path: Path, brats: tuple[Path, list[str]]) -> None:
    root, names = brats
    assert demo.write_brats2021(tmp_path / "again", 3, 24, 48, seed=0) == names
    assert _hashes(tmp_path / "again") == _hashes(root)


# --- read back through the project's readers ----------------------------------------------------


def _data_params(source: str, root: Path, size: int) -> DataParams:
    return DataParams(source=source, root=str(root), image_size=size, channels=("t1", "flair", "t1gd"),
                      clip_percentiles=(0.5, 99.5), min_brain_fraction=0.0, on_error="fail")


def test_kaggle_3m_reads_back_through_the_lgg_reader(small: tuple[Path, list[str]]) -> None:
    sources = pytest.importorskip("pipeline.data.sources")
    if not hasattr(sources, "read_cases"):
        pytest.skip("pipeline.data.sources.read_cases not there yet")
    root, names = small
    cases = list(sources.read_cases(_data_params("demo", root, SIZE)))
    assert [c.patient_id for c in cases] == sorted(names)
    for case in cases:
        assert case.image.shape == (SLICES, SIZE, SIZE, 3)
        assert case.slice_numbers.tolist() == list(range(1, SLICES + 1))
        masks = _masks(root, case.patient_id, SLICES)
        assert np.array_equal(case.labels > 0, masks)
        first = tifffile.imread(root / case.patient_id / f"{case.patient_id}_1.tif")
        assert np.array_equal(case.image[0], first)
        assert case.meta["clinical"] is not None


def test_brats2021_reads_back_through_the_brats_reader(brats: tuple[Path, list[str]]) -> None:
    sources = pytest.importorskip("pipeline.data.sources")
    brats_reader = pytest.importorskip("pipeline.data.sources.brats")
    if not hasattr(brats_reader, "read_brats2021_case"):
        pytest.skip("pipeline.data.sources.brats.read_brats2021_case not there yet")
    root, names = brats
    for name in names:
        data = _data_params("brats2021", root, 48)
        case = brats_reader.read_brats2021_case(root / name, sources.reading_task(data), data.min_brain_fraction)
        seg = np.asanyarray(nib.load(root / name / f"{name}_seg.nii.gz").dataobj)
        assert case.image.shape[1:] == (48, 48, 3)
        assert set(np.unique(case.labels).tolist()) <= {0, 1, 3, 7}  # the region map of BraTS 0, 2, 1, 4
        assert int((case.labels > 0).sum()) == int((seg > 0).sum())


def test_demo_writer_removes_what_a_killed_run_left(tmp_path):
    """The demo stage writes its folder atomically (``pipeline.writing.atomic_dir``): a temporary folder that a
    killed run left next to it is removed by the next run; nothing else there is touched."""
    import subprocess

    done = subprocess.Popen(["true"])
    done.wait()
    left = tmp_path / f".kaggle_3m.tmp-{done.pid}-abc123"
    (left / "TCGA_XX_0000_20000101").mkdir(parents=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    demo.write_kaggle_3m(tmp_path / "kaggle_3m", patients=3, slices_per_patient=4, image_size=64, seed=0)
    assert not left.exists() and notes.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle_3m", "notes.txt"]
