"""LGG kaggle_3m reader: layout, channel order, resizing, clinical join, every bad input."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bad_files import BAD_ENTRIES, COMPRESSIONS, make_bad_entry, truncate, write_compressed_tiff

from pipeline.data.case import LGG_CHANNELS
from pipeline.data.sources import Skipped, detect_layout, list_case_paths, read_cases, read_lgg_case, read_lgg_slice
from pipeline.errors import InputError
from pipeline.params import DataParams

SIZE = 32
CASE = "TCGA_CS_4941_19960909"


def lgg_params(root: Path, image_size: int = SIZE, on_error: str = "fail") -> DataParams:
    return DataParams(source="lgg", root=str(root), image_size=image_size, channels=("t1", "flair", "t1gd"),
                      clip_percentiles=(0.5, 99.5), min_brain_fraction=0.05, on_error=on_error)


def slice_image(n: int, size: int = SIZE) -> np.ndarray:
    """uint8 [size, size, 3] whose channels differ: channel c holds 10 * (c + 1) + n, plus a gradient."""
    image = np.zeros((size, size, 3), np.uint8)
    for c in range(3):
        image[..., c] = 10 * (c + 1) + n
    image[0, :, 0] = np.arange(size)
    return image


def slice_mask(n: int, size: int = SIZE) -> np.ndarray:
    """uint8 [size, size], 0/255, tumour on odd slices."""
    mask = np.zeros((size, size), np.uint8)
    if n % 2:
        mask[4:10, 5:12] = 255
    return mask


def write_case(root: Path, name: str = CASE, slices: int = 12, size: int = SIZE, masks: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for n in range(1, slices + 1):
        tifffile.imwrite(folder / f"{name}_{n}.tif", slice_image(n, size), photometric="rgb")
        if masks:
            tifffile.imwrite(folder / f"{name}_{n}_mask.tif", slice_mask(n, size))
    return folder


def write_clinical(root: Path) -> None:
    (root / "data.csv").write_text("Patient,RNASeqCluster,age_at_initial_pathologic\n"
                                   "TCGA_CS_4941,2,67\nTCGA_DU_0001,,44\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "kaggle_3m"
    write_case(root)
    write_case(root, "TCGA_DU_0001_20000101", slices=3)
    write_clinical(root)
    (root / "README.md").write_text("not a case")
    (root / "other").mkdir()
    return root


def test_reads_cases_in_file_order_with_labels_and_meta(root: Path) -> None:
    cases = list(read_cases(lgg_params(root)))
    assert [c.patient_id for c in cases] == [CASE, "TCGA_DU_0001_20000101"]
    case = cases[0]
    assert case.image.shape == (12, SIZE, SIZE, 3) and case.image.dtype == np.uint8
    assert case.channels == LGG_CHANNELS and case.source == "lgg"
    assert case.slice_numbers.tolist() == list(range(1, 13))  # 10 after 9, not after 1
    for i, n in enumerate(case.slice_numbers):
        np.testing.assert_array_equal(case.image[i], slice_image(n))
        np.testing.assert_array_equal(case.labels[i], slice_mask(n) // 255)
    assert set(np.unique(case.labels)) == {0, 1}
    assert case.spacing_mm is None and case.geometry is None
    assert case.meta["institution"] == "CS" and case.meta["has_labels"] is True
    assert case.meta["clinical"] == {"RNASeqCluster": 2.0, "age_at_initial_pathologic": 67}
    assert cases[1].meta["clinical"]["RNASeqCluster"] is None  # NaN -> None
    assert cases[1].meta["institution"] == "DU"


def test_channels_come_out_in_file_order(tmp_path: Path) -> None:
    """OpenCV decodes 3-channel TIFFs as BGR; the reader must give the file's order back."""
    folder = tmp_path / CASE
    folder.mkdir()
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 11, 22, 33  # pre-contrast, FLAIR, post-contrast
    tifffile.imwrite(folder / f"{CASE}_1.tif", image, photometric="rgb")
    tifffile.imwrite(folder / f"{CASE}_1_mask.tif", np.zeros((SIZE, SIZE), np.uint8))
    case = read_lgg_case(folder)
    assert case.image[0, 0, 0].tolist() == [11, 22, 33]
    np.testing.assert_array_equal(case.image[0], tifffile.imread(folder / f"{CASE}_1.tif"))


def test_resizes_only_when_image_size_differs(root: Path) -> None:
    same = read_lgg_case(root / CASE, SIZE)
    native = read_lgg_case(root / CASE, None)
    np.testing.assert_array_equal(same.image, native.image)
    bigger = read_lgg_case(root / CASE, 64)
    assert bigger.image.shape == (12, 64, 64, 3) and bigger.labels.shape == (12, 64, 64)
    assert set(np.unique(bigger.labels)) == {0, 1}  # nearest neighbour: still a binary mask
    assert bigger.labels[0].sum() == 4 * same.labels[0].sum()


def test_unlabelled_case_for_prediction(tmp_path: Path) -> None:
    folder = write_case(tmp_path, masks=False, slices=2)
    case = read_lgg_case(folder)
    assert case.meta["has_labels"] is False and not case.labels.any()
    with pytest.raises(InputError, match="image without mask"):
        read_lgg_case(folder, require_labels=True)


def test_single_slice(root: Path) -> None:
    case = read_lgg_slice(root / CASE / f"{CASE}_3.tif")
    assert case.image.shape == (1, SIZE, SIZE, 3) and case.slice_numbers.tolist() == [3]
    np.testing.assert_array_equal(case.labels[0], slice_mask(3) // 255)


def test_detect_layout(root: Path) -> None:
    assert detect_layout(root) == "lgg_root"
    assert detect_layout(root / CASE) == "lgg_case"
    assert detect_layout(root / CASE / f"{CASE}_1.tif") == "lgg_slice"
    with pytest.raises(InputError, match="unrecognised folder"):
        detect_layout(root / "other")
    with pytest.raises(InputError, match="mask"):
        detect_layout(root / CASE / f"{CASE}_1_mask.tif")


def test_list_case_paths_ignores_non_case_entries(root: Path) -> None:
    assert [p.name for p in list_case_paths(lgg_params(root))] == [CASE, "TCGA_DU_0001_20000101"]


def test_demo_source_uses_the_lgg_reader(root: Path) -> None:
    assert len(list(read_cases(replace(lgg_params(root), source="demo")))) == 2


# --- bad input: each an InputError naming the file and the problem ------------------------------

def test_root_without_case_folders(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(InputError, match=r"no kaggle_3m case folders \(TCGA_\*\) found") as e:
        list(read_cases(lgg_params(tmp_path)))
    assert e.value.path == tmp_path


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        list(read_cases(lgg_params(tmp_path / "nope")))


def test_empty_case_folder(tmp_path: Path) -> None:
    (tmp_path / CASE).mkdir()
    with pytest.raises(InputError, match="no <case>_<n>.tif slices") as e:
        list(read_cases(lgg_params(tmp_path)))
    assert e.value.path == tmp_path / CASE


def test_image_without_mask(root: Path) -> None:
    (root / CASE / f"{CASE}_5_mask.tif").unlink()
    with pytest.raises(InputError, match="image without mask") as e:
        read_lgg_case(root / CASE)
    assert e.value.path.name == f"{CASE}_5.tif"


def test_mask_without_image(root: Path) -> None:
    (root / CASE / f"{CASE}_5.tif").unlink()
    with pytest.raises(InputError, match="mask without image") as e:
        read_lgg_case(root / CASE)
    assert e.value.path.name == f"{CASE}_5_mask.tif"


def test_slice_file_of_another_case_is_refused(root: Path) -> None:
    """TCGA_CS_4942_..._3.tif in the folder of TCGA_CS_4941_...: an error naming the file, never merged."""
    stray = root / CASE / "TCGA_CS_4942_19970222_3.tif"
    tifffile.imwrite(stray, slice_image(3), photometric="rgb")
    with pytest.raises(InputError, match="belongs to another case") as e:
        read_lgg_case(root / CASE)
    assert e.value.path == stray
    assert "TCGA_CS_4942_19970222" in str(e.value) and f"its folder {CASE}" in str(e.value)
    assert "\n" not in str(e.value)


def test_patient_is_recorded_apart_from_the_scan(tmp_path: Path) -> None:
    """Folders TCGA_<site>_<patient>_<date>: two scans of one patient share meta["patient"]."""
    for name in (CASE, "TCGA_CS_4941_20010101", "TCGA_HT_A5RC_19990831", "scan7"):
        write_case(tmp_path, name, slices=2)
    cases = {c.patient_id: c for c in read_cases(lgg_params(tmp_path))}
    assert {pid: c.meta["patient"] for pid, c in cases.items()} == {
        CASE: "TCGA_CS_4941", "TCGA_CS_4941_20010101": "TCGA_CS_4941",
        "TCGA_HT_A5RC_19990831": "TCGA_HT_A5RC"}
    assert read_lgg_case(tmp_path / "scan7").meta["patient"] == "scan7"  # not the TCGA pattern: its own patient


def test_image_mask_shape_mismatch(root: Path) -> None:
    tifffile.imwrite(root / CASE / f"{CASE}_4_mask.tif", np.zeros((SIZE, SIZE + 2), np.uint8))
    with pytest.raises(InputError, match="mask is 32x34 but image") as e:
        read_lgg_case(root / CASE)
    assert e.value.path.name == f"{CASE}_4_mask.tif"


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (SIZE, SIZE, 4)])
def test_wrong_image_channel_count(root: Path, shape: tuple[int, ...]) -> None:
    kwargs = {"photometric": "rgb", "extrasamples": ["unspecified"]} if len(shape) == 3 else {}
    tifffile.imwrite(root / CASE / f"{CASE}_2.tif", np.zeros(shape, np.uint8), **kwargs)
    with pytest.raises(InputError, match="expected 3 channels") as e:
        read_lgg_case(root / CASE)
    assert e.value.path.name == f"{CASE}_2.tif"


def test_wrong_mask_channel_count(root: Path) -> None:
    tifffile.imwrite(root / CASE / f"{CASE}_2_mask.tif", np.zeros((SIZE, SIZE, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="1-channel mask"):
        read_lgg_case(root / CASE)


def test_image_not_uint8(root: Path) -> None:
    tifffile.imwrite(root / CASE / f"{CASE}_2.tif", np.zeros((SIZE, SIZE, 3), np.uint16), photometric="rgb")
    with pytest.raises(InputError, match="expected uint8 pixels, got uint16"):
        read_lgg_case(root / CASE)


def test_corrupt_tiff(root: Path) -> None:
    (root / CASE / f"{CASE}_3.tif").write_bytes(b"this is not a TIFF file")
    with pytest.raises(InputError, match="not a readable TIFF") as e:
        read_lgg_case(root / CASE)
    assert e.value.path.name == f"{CASE}_3.tif"


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_tiff(root: Path, keep: float) -> None:
    path = root / CASE / f"{CASE}_3_mask.tif"
    tifffile.imwrite(path, slice_mask(3), compression=None)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match="not a readable TIFF") as e:
        read_lgg_case(root / CASE)
    assert e.value.path == path


def test_skip_mode_yields_skipped_and_goes_on(root: Path) -> None:
    (root / CASE / f"{CASE}_3.tif").write_bytes(b"garbage")
    items = list(read_cases(lgg_params(root, on_error="skip")))
    assert isinstance(items[0], Skipped) and items[0].path == str(root / CASE)
    assert f"{CASE}_3.tif" in items[0].reason and "not a readable TIFF" in items[0].reason
    assert items[1].patient_id == "TCGA_DU_0001_20000101"
    with pytest.raises(InputError):
        list(read_cases(lgg_params(root, on_error="fail")))


def test_bad_clinical_table(root: Path) -> None:
    (root / "data.csv").write_text("Case,age\nx,1\n")
    with pytest.raises(InputError, match='no "Patient" column'):
        list(read_cases(lgg_params(root)))


# --- broken files, odd masks, junk next to the data (issue 13) -----------------------------------

@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
@pytest.mark.parametrize("which", ["image", "mask"])
def test_truncated_compressed_tiff_names_the_file(root: Path, compression: str, keep: float, which: str,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """Deflate, LZW and PackBits data cut short: an InputError naming the file (no zlib.error escapes),
    and OpenCV / libtiff print nothing."""
    suffix = "_mask" if which == "mask" else ""
    path = root / CASE / f"{CASE}_3{suffix}.tif"
    write_compressed_tiff(path, slice_mask(3) if which == "mask" else slice_image(3), compression)
    read_lgg_case(root / CASE)  # intact: reads
    truncate(path, keep)
    with pytest.raises(InputError, match="not a readable TIFF") as e:
        read_lgg_case(root / CASE)
    assert e.value.path == path and "\n" not in str(e.value)
    assert capfd.readouterr().err == ""


def test_truncated_tiff_is_skipped_under_on_error_skip(root: Path) -> None:
    path = root / CASE / f"{CASE}_3.tif"
    write_compressed_tiff(path, slice_image(3), "deflate")
    truncate(path, 0.5)
    items = list(read_cases(lgg_params(root, on_error="skip")))
    assert isinstance(items[0], Skipped) and f"{CASE}_3.tif: not a readable TIFF" in items[0].reason
    assert items[1].patient_id == "TCGA_DU_0001_20000101"


@pytest.mark.timeout(60, method="thread")  # a FIFO read would block for ever
@pytest.mark.parametrize("kind", sorted(BAD_ENTRIES))
@pytest.mark.parametrize("which", ["image", "mask"])
def test_slice_that_is_no_file_says_what_it_is(root: Path, kind: str, which: str) -> None:
    """A dangling link, a symlink loop, a folder, a FIFO or an empty file where a slice should be: said as
    such, naming it (not "mask without image"); a FIFO must not block the reader."""
    path = root / CASE / f"{CASE}_3{'_mask' if which == 'mask' else ''}.tif"
    make_bad_entry(path, kind)
    with pytest.raises(InputError, match=re.escape(BAD_ENTRIES[kind])) as e:
        read_lgg_case(root / CASE)
    assert e.value.path == path


@pytest.mark.parametrize("kind", ["dangling_link", "symlink_loop"])
def test_case_folder_link_that_leads_nowhere(root: Path, kind: str) -> None:
    make_bad_entry(root / "TCGA_HT_0002_20000101", kind)
    items = list(read_cases(lgg_params(root, on_error="skip")))
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert skipped[0].path == str(root / "TCGA_HT_0002_20000101")  # (a loop's other link is a second one)
    assert all(BAD_ENTRIES[kind] in s.reason for s in skipped)
    assert [c.patient_id for c in items if not isinstance(c, Skipped)] == [CASE, "TCGA_DU_0001_20000101"]


def test_masks_stored_as_0_1_read_as_0_255(root: Path) -> None:
    """Binary masks saved as 0/1 give the same labels as the distributed 0/255 (ingest and predict)."""
    expected = read_lgg_case(root / CASE)
    for n in range(1, 13):
        tifffile.imwrite(root / CASE / f"{CASE}_{n}_mask.tif", slice_mask(n) // 255)
    case = read_lgg_case(root / CASE)
    np.testing.assert_array_equal(case.labels, expected.labels)
    assert case.labels.sum() > 0
    np.testing.assert_array_equal(read_lgg_slice(root / CASE / f"{CASE}_3.tif").labels[0], slice_mask(3) // 255)


@pytest.mark.parametrize("values", [[0, 128], [0, 1, 255], [0, 2], [254]])
def test_mask_values_other_than_0_255_or_0_1(root: Path, values: list[int]) -> None:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask.flat[: len(values)] = values
    tifffile.imwrite(root / CASE / f"{CASE}_7_mask.tif", mask)
    with pytest.raises(InputError, match=r"mask values must be 0/255 or 0/1, got \[") as e:
        read_lgg_case(root / CASE)
    assert e.value.path.name == f"{CASE}_7_mask.tif"


def _write_junk(root: Path) -> None:
    """What macOS and Windows leave next to data: .DS_Store, ._* AppleDouble files, __MACOSX/, Thumbs.db."""
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / f"._{CASE}").write_bytes(b"\0\5\26\7")
    (root / CASE / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / CASE / f"._{CASE}_1.tif").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / CASE / f"._{CASE}_1_mask.tif").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / CASE / "Thumbs.db").write_bytes(b"x")
    (root / ".TCGA_HT_9999_20000101").mkdir()
    macosx = root / "__MACOSX" / CASE
    macosx.mkdir(parents=True)
    (macosx / f"._{CASE}_1.tif").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "__MACOSX" / f"._{CASE}").write_bytes(b"\0\5\26\7")


def test_hidden_files_and_macos_junk_are_ignored(root: Path) -> None:
    _write_junk(root)
    assert detect_layout(root) == "lgg_root" and detect_layout(root / CASE) == "lgg_case"
    cases = list(read_cases(lgg_params(root)))
    assert [c.patient_id for c in cases] == [CASE, "TCGA_DU_0001_20000101"]
    assert cases[0].slice_numbers.tolist() == list(range(1, 13))


# --- prediction needs no ground truth: on_bad_labels="warn" --------------------------------------

def _break_mask(folder: Path, how: str) -> Path:
    path = folder / f"{CASE}_5_mask.tif"
    if how == "missing":
        path.unlink()
        return folder / f"{CASE}_5.tif"  # slice_files names the image without its mask
    if how == "wrong_shape":
        tifffile.imwrite(path, np.zeros((SIZE, SIZE + 2), np.uint8))
    elif how == "bad_values":
        tifffile.imwrite(path, np.full((SIZE, SIZE), 7, np.uint8))
    elif how == "truncated":
        write_compressed_tiff(path, slice_mask(5), "deflate")
        truncate(path, 0.5)
    else:
        make_bad_entry(path, how)
    return path


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("how", ["missing", "wrong_shape", "bad_values", "truncated", "dangling_link", "fifo"])
def test_bad_mask_gives_an_unlabelled_case_when_labels_are_optional(root: Path, how: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    expected = read_lgg_case(root / CASE)
    named = _break_mask(root / CASE, how)
    with pytest.raises(InputError):
        read_lgg_case(root / CASE)  # ingest: still an error
    caplog.set_level("WARNING", logger="pipeline.data.sources.lgg")
    case = read_lgg_case(root / CASE, on_bad_labels="warn")
    np.testing.assert_array_equal(case.image, expected.image)
    assert case.meta["has_labels"] is False and not case.labels.any()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(named) in warnings[0] and "without reference masks" in warnings[0]


@pytest.mark.parametrize("how", ["wrong_shape", "bad_values", "truncated", "dangling_link"])
def test_bad_mask_of_a_single_slice_when_labels_are_optional(root: Path, how: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    named = _break_mask(root / CASE, how)
    with pytest.raises(InputError):
        read_lgg_slice(root / CASE / f"{CASE}_5.tif")
    case = read_lgg_slice(root / CASE / f"{CASE}_5.tif", on_bad_labels="warn")
    assert case.meta["has_labels"] is False and not case.labels.any()
    assert any(str(named) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_bad_image_still_fails_when_labels_are_optional(root: Path) -> None:
    path = root / CASE / f"{CASE}_4.tif"
    make_bad_entry(path, "dangling_link")
    (root / CASE / f"{CASE}_5_mask.tif").unlink()
    with pytest.raises(InputError, match="dangling link") as e:
        read_lgg_case(root / CASE, on_bad_labels="warn")
    assert e.value.path == path
