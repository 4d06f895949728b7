"""The readers on the real sample data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.sources import read_brats2021_case, read_cases, read_decathlon_case, reading_task
from pipeline.params import DataParams

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LGG_ROOT = SHARED_DATA / "lgg" / "kaggle_3m"
BRATS_CASE = SHARED_DATA / "brats" / "BraTS2021" / "BraTS2021_00006"
DECATHLON = SHARED_DATA / "brats" / "Task01_BrainTumour"


def params(source: str, root: Path, image_size: int = 256) -> DataParams:
    return DataParams(source=source, root=str(root), image_size=image_size, channels=("t1", "flair", "t1gd"),
                      clip_percentiles=(0.5, 99.5), min_brain_fraction=0.05, on_error="fail")


def need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared sample data not found at {path}")


def test_lgg_sample_gives_325_slices_123_with_tumour() -> None:
    need(LGG_ROOT)
    cases = list(read_cases(params("lgg", LGG_ROOT)))
    assert len(cases) == 10
    assert sum(len(c.image) for c in cases) == 325
    assert sum(int(c.mask.any(axis=(1, 2)).sum()) for c in cases) == 123
    assert all(c.image.shape[1:] == (256, 256, 3) for c in cases)
    by_id = {c.patient_id: c for c in cases}
    assert by_id["TCGA_DU_5851_19950428"].meta["institution"] == "DU"
    assert by_id["TCGA_CS_4943_20000902"].meta["clinical"]["age_at_initial_pathologic"] == 37


def test_lgg_sample_resized_to_128() -> None:
    need(LGG_ROOT)
    case = next(iter(read_cases(params("lgg", LGG_ROOT, image_size=128))))
    assert case.image.shape[1:] == (128, 128, 3) and set(np.unique(case.labels)) <= {0, 1}


def test_brats_case_reads_the_same_from_both_layouts() -> None:
    need(BRATS_CASE)
    need(DECATHLON)
    data = params("brats2021", BRATS_CASE.parent)
    brats = read_brats2021_case(BRATS_CASE, reading_task(data), data.min_brain_fraction, require_labels=True)
    decathlon = read_decathlon_case(DECATHLON / "imagesTr" / "BRATS_900.nii.gz", reading_task(data), data.min_brain_fraction,
                                    DECATHLON / "labelsTr" / "BRATS_900.nii.gz", DECATHLON / "dataset.json")
    assert brats.image.shape[1:] == (256, 256, 3) and len(brats.image) > 50
    np.testing.assert_array_equal(decathlon.slice_numbers, brats.slice_numbers)
    np.testing.assert_array_equal(decathlon.image, brats.image)
    np.testing.assert_array_equal(decathlon.mask, brats.mask)
    np.testing.assert_array_equal(decathlon.labels, brats.labels)  # 0/1/2/4 and 0/1/2/3 -> the same regions
    assert set(np.unique(brats.labels)) == {0, 1, 3, 7}
    assert brats.mask.any()
