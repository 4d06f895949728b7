"""What `predict` finds and reads, without models: junk next to the data is ignored, broken links are
named, and ground truth is optional (a bad mask warns and the case is read unlabelled). Issue 13."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from bad_files import BAD_ENTRIES, junk, make_bad_entry, truncate, write_brats_case, write_compressed_tiff

from pipeline.data.case import LGG_CHANNELS
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError
from pipeline.predict import InputItem, Predictor, find_inputs

SIZE = 32
LGG = "TCGA_CS_4941_19960909"
BRATS = "BraTS2021_00001"


def lgg_case(parent: Path, name: str = LGG, slices: int = 3) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    for n in range(1, slices + 1):
        tifffile.imwrite(folder / f"{name}_{n}.tif", np.full((SIZE, SIZE, 3), 30 + n, np.uint8), photometric="rgb")
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[3:9, 3:9] = 255
        tifffile.imwrite(folder / f"{name}_{n}_mask.tif", mask)
    return folder


def brats_case(parent: Path, name: str = BRATS) -> Path:
    return write_brats_case(parent, name, (30, 28, 12), (4, 3, 2), np.s_[10:14, 8:12, 4:7])


@pytest.fixture
def predictor() -> Predictor:
    """Enough of a Predictor to read inputs (no models)."""
    return Predictor(cascade=None, task=TaskSpec(SIZE, LGG_CHANNELS, {"mode": "as_stored", "clip_percentiles": None}))


def test_discovery_ignores_hidden_files_and_macos_junk(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    lgg = lgg_case(scans / "lgg")
    brats = brats_case(scans / "brats")
    junk(scans / "lgg", LGG)
    junk(scans / "brats", BRATS)
    junk(scans, LGG)
    (lgg / f"._{LGG}_1.tif").write_bytes(b"\0\5\26\7")
    (brats / f"._{BRATS}_seg.nii.gz").write_bytes(b"\0\5\26\7")
    lgg_case(scans / ".Trash", "TCGA_HT_0002_20000101")  # a hidden folder holding a case: not an input
    items = find_inputs(scans)
    assert [(i.path, i.layout, i.error) for i in items] == [(brats, "brats2021_case", None), (lgg, "lgg_case", None)]


@pytest.mark.parametrize("kind", ["dangling_link", "symlink_loop"])
def test_broken_link_among_the_inputs_is_a_failed_item_naming_it(tmp_path: Path, kind: str) -> None:
    good = lgg_case(tmp_path / "scans")
    link = tmp_path / "scans" / "TCGA_HT_0002_20000101"
    make_bad_entry(link, kind)
    items = {i.path: i for i in find_inputs(tmp_path / "scans")}
    assert items[good].layout == "lgg_case" and items[good].error is None
    assert BAD_ENTRIES[kind] in items[link].error.problem and items[link].error.path == link


@pytest.mark.parametrize("kind", ["dangling_link", "symlink_loop"])
def test_input_path_that_is_a_broken_link(tmp_path: Path, kind: str) -> None:
    make_bad_entry(tmp_path / "scans", kind)
    with pytest.raises(InputError, match=BAD_ENTRIES[kind]):
        find_inputs(tmp_path / "scans")


def _break(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "bad_values":
        if path.suffix == ".tif":
            tifffile.imwrite(path, np.full((SIZE, SIZE), 9, np.uint8))
        else:
            nib.save(nib.Nifti1Image(np.full((30, 28, 12), 9, np.uint8), np.eye(4)), path)
    elif how == "wrong_shape":
        if path.suffix == ".tif":
            tifffile.imwrite(path, np.zeros((SIZE + 4, SIZE), np.uint8))
        else:
            nib.save(nib.Nifti1Image(np.zeros((30, 28, 13), np.uint8), np.eye(4)), path)
    elif how == "truncated":
        if path.suffix == ".tif":
            write_compressed_tiff(path, np.zeros((SIZE, SIZE), np.uint8), "lzw")
        truncate(path, 0.5)
    else:
        make_bad_entry(path, how)


@pytest.mark.timeout(60, method="thread")  # a FIFO read would block for ever
@pytest.mark.parametrize("how", ["missing", "bad_values", "wrong_shape", "truncated", "dangling_link", "fifo"])
@pytest.mark.parametrize("layout", ["lgg_case", "lgg_slice", "brats2021_case"])
def test_predict_reads_a_case_with_a_bad_mask_unlabelled(tmp_path: Path, predictor: Predictor, layout: str,
                                                        how: str, caplog: pytest.LogCaptureFixture) -> None:
    """Prediction needs no ground truth: a missing mask is fine, an unusable one a warning naming it."""
    if layout == "brats2021_case":
        path = brats_case(tmp_path)
        mask = path / f"{BRATS}_seg.nii.gz"
    else:
        folder = lgg_case(tmp_path)
        path = folder if layout == "lgg_case" else folder / f"{LGG}_2.tif"
        mask = folder / f"{LGG}_2_mask.tif"
    expected = predictor.read(InputItem(path, layout))
    assert expected.meta["has_labels"] is True
    _break(mask, how)
    case = predictor.read(InputItem(path, layout))
    np.testing.assert_array_equal(case.image, expected.image)
    assert case.meta["has_labels"] is False and not case.labels.any()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if how == "missing" and layout != "lgg_case":
        assert not warnings  # no mask at all: nothing to say
    else:
        assert len(warnings) == 1 and mask.name in warnings[0], warnings


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("kind", ["dangling_link", "symlink_loop", "folder", "fifo", "empty"])
def test_predict_names_a_slice_file_that_is_no_file(tmp_path: Path, predictor: Predictor, kind: str) -> None:
    path = lgg_case(tmp_path) / f"{LGG}_2.tif"
    make_bad_entry(path, kind)
    with pytest.raises(InputError, match=re.escape(BAD_ENTRIES[kind])) as e:
        predictor.read(InputItem(path, "lgg_slice"))
    assert e.value.path == path
