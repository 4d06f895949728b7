"""Synthetic brain-MRI patients written in the real on-disk layouts (kaggle_3m TIFFs; BraTS 2021, BraTS 2023
and Decathlon NIfTI).

The demo data goes through the same readers as real data, so the writers here reproduce the
real layouts file for file; only the pixels are made up, by one anatomy generator for both
(``pipeline.data.anatomy.generate_patient``: head, folded brain, ventricles, at most one tumour
with BraTS labels, per-patient contrast, bias field and noise).

About 1 patient in 8 has no tumour, a few have low-contrast tumours, and about a third of the
slices of a kaggle_3m set show tumour (real LGG sample: 123 of 325).

Every patient draws from its own generator seeded by (seed, layout, patient index), so patient i
is the same whatever the number of patients.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import tifffile

from pipeline.data.anatomy import generate_patient
from pipeline.params import DemoParams
from pipeline.sequences import LGG_CHANNELS, SEQUENCES
from pipeline.writing import atomic_dir

log = logging.getLogger(__name__)

LGG_INSTITUTIONS = ("CS", "DU", "EZ", "FG", "HT")
NO_TUMOUR_EVERY = 8  # one patient in each block of 8 has no tumour (12.5%)
LOW_CONTRAST_P = 0.15  # fraction of tumour patients with a faint FLAIR signal
_LAYOUT_TAG = {"kaggle_3m": 1, "brats2021": 2}


def _patient_plan(seed: int, layout: str, i: int) -> tuple[np.random.Generator, bool, bool]:
    """Generator and (has_tumour, low_contrast) for patient i; independent of the number of patients."""
    tag, seed = _LAYOUT_TAG[layout], seed % 2**64  # (SeedSequence wants non-negative entries)
    block = np.random.default_rng([seed, tag, i // NO_TUMOUR_EVERY, 1])
    has_tumour = i % NO_TUMOUR_EVERY != int(block.integers(NO_TUMOUR_EVERY))
    rng = np.random.default_rng([seed, tag, i, 0])
    low_contrast = bool(rng.random() < LOW_CONTRAST_P)
    return rng, has_tumour, low_contrast


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------


def _write_atomically(root: Path, fill: Callable[[Path], None]) -> None:
    """Run fill(tmp) on a fresh folder next to root, then put it in root's place (``atomic_dir``: replacing
    a folder, never a link or a file; what a killed run left next to it is removed first)."""
    with atomic_dir(root) as tmp:
        fill(tmp)


def lgg_case_names(seed: int, patients: int) -> list[str]:
    """Unique kaggle_3m case names ``TCGA_<INST>_<ID>_<YYYYMMDD>``; the first k are the same for any count >= k."""
    rng = np.random.default_rng([seed % 2**64, _LAYOUT_TAG["kaggle_3m"], 2**31])
    alnum = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    names: list[str] = []
    ids: set[str] = set()
    first, last = dt.date(1983, 1, 1).toordinal(), dt.date(2005, 12, 31).toordinal()
    while len(names) < patients:
        inst = LGG_INSTITUTIONS[int(rng.integers(len(LGG_INSTITUTIONS)))]
        if rng.random() < 0.7:
            pid = f"{int(rng.integers(1000, 10000))}"
        else:
            pid = "A" + "".join(rng.choice(alnum, 3))
        date = dt.date.fromordinal(int(rng.integers(first, last + 1)))
        if (inst, pid) in ids or pid in ids:
            continue
        ids.add(pid)
        names.append(f"TCGA_{inst}_{pid}_{date:%Y%m%d}")
    return names


def to_uint8(image: np.ndarray, gains: Sequence[float]) -> np.ndarray:
    """Relative intensities [..., C] times per-channel gains [C] -> uint8, rounded and clipped to 0..255."""
    if image.shape[-1] <= 4 and image.dtype == np.float32:  # OpenCV: one pass, saturating
        scale = tuple(float(x) for x in gains) + (0.0,) * (4 - len(gains))
        flat = image.reshape(-1, image.shape[-2], image.shape[-1])
        return cv2.multiply(flat, scale, dtype=cv2.CV_8U).reshape(image.shape)
    return np.clip(np.rint(image * np.asarray(gains, np.float32)), 0, 255).astype(np.uint8)


def _workers() -> int:
    """Threads for writing patients in parallel (NumPy, OpenCV and file writes release the GIL)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def write_kaggle_3m(root: Path, patients: int, slices_per_patient: int, image_size: int = 256, seed: int = 0) -> list[str]:
    """Write a synthetic LGG set in the kaggle_3m layout; returns the case names (folder names).

    ``root/<CASE>/<CASE>_<n>.tif``: uint8 [S, S, 3] RGB TIFF, channels pre-contrast T1, FLAIR,
    post-contrast T1; ``<CASE>_<n>_mask.tif``: uint8 [S, S], 0 or 255; n = 1..N from the skull
    base up. ``root/data.csv``: one row per patient ("Patient" = ``TCGA_<INST>_<ID>``) with a few
    clinical columns, blanks for missing values; ``root/README.md``. ``root`` is replaced only
    once everything is written. Same seed, same bytes.
    """
    start = time.perf_counter()
    names = lgg_case_names(seed, patients)
    positives: list[int] = []

    def fill(tmp: Path) -> None:
        def one(i: int) -> tuple[int, dict[str, str]]:
            return _write_lgg_patient(tmp / names[i], seed, i, slices_per_patient, image_size)

        with ThreadPoolExecutor(_workers()) as pool:
            done = list(pool.map(one, range(patients)))
        positives.extend(k for k, _ in done)
        _write_csv(tmp / "data.csv", [row for _, row in done])
        (tmp / "README.md").write_text(
            f"Synthetic demo data in the kaggle_3m layout (pipeline.data.demo, seed {seed}).\n"
            "Not real patients: only the layout and file formats follow the LGG MRI Segmentation dataset.\n"
        )

    _write_atomically(Path(root), fill)
    log.info("wrote %d synthetic kaggle_3m patients (%d slices, %d with tumour) to %s in %.1f s",
             patients, patients * slices_per_patient, sum(positives), root, time.perf_counter() - start)
    return names


def _write_lgg_patient(folder: Path, seed: int, i: int, n_slices: int, size: int) -> tuple[int, dict[str, str]]:
    """Generate patient i and write its TIFFs into folder; returns (slices with tumour, data.csv row)."""
    rng, has_tumour, low_contrast = _patient_plan(seed, "kaggle_3m", i)
    p = generate_patient(rng, n_slices, size, has_tumour=has_tumour, low_contrast=low_contrast, sequences=LGG_CHANNELS)
    image = to_uint8(p.image, rng.uniform(95, 150) * rng.uniform(0.9, 1.1, len(LGG_CHANNELS)))
    masks = np.where(p.labels > 0, np.uint8(255), np.uint8(0))
    folder.mkdir()
    case = folder.name
    for n in range(n_slices):
        tifffile.imwrite(folder / f"{case}_{n + 1}.tif", image[n], photometric="rgb", metadata=None, software=False)
        tifffile.imwrite(folder / f"{case}_{n + 1}_mask.tif", masks[n], photometric="minisblack", metadata=None, software=False)
    return int(masks.any(axis=(1, 2)).sum()), _clinical_row(rng, case)


_CSV_COLUMNS = ("Patient", "histological_type", "neoplasm_histologic_grade", "gender", "age_at_initial_pathologic", "death01")


def _clinical_row(rng: np.random.Generator, case: str) -> dict[str, str]:
    def maybe(value: str, p_missing: float = 0.1) -> str:
        return "" if rng.random() < p_missing else value

    return {
        "Patient": case.rsplit("_", 1)[0],
        "histological_type": maybe(str(int(rng.integers(1, 4)))),
        "neoplasm_histologic_grade": maybe(str(int(rng.integers(1, 3)))),
        "gender": maybe(str(int(rng.integers(1, 3))), 0.05),
        "age_at_initial_pathologic": maybe(str(int(rng.integers(20, 76))), 0.05),
        "death01": maybe(str(int(rng.random() < 0.3))),
    }


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def brats_case_names(seed: int, patients: int) -> list[str]:
    """Unique ``BraTS2021_<5 digits>`` ids in increasing order (gaps, as in the real set)."""
    rng = np.random.default_rng([seed % 2**64, _LAYOUT_TAG["brats2021"], 2**31])
    numbers = np.sort(rng.choice(max(1700, 2 * patients), patients, replace=False))
    return [f"BraTS2021_{int(k):05d}" for k in numbers]


def brats_affine(size: int) -> np.ndarray:
    """Voxel -> world (mm) affine of a real BraTS 2021 scan: 1 mm, axes L, P, S (x and y flipped)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = size - 1
    return affine


def write_brats2021(root: Path, patients: int, slices: int, size: int = 240, seed: int = 0) -> list[str]:
    """Write a synthetic BraTS 2021 set; returns the case ids.

    ``root/BraTS2021_<k>/BraTS2021_<k>_{flair,t1,t1ce,t2,seg}.nii.gz``: int16 images and uint8
    seg (0, 1 necrotic/non-enhancing core, 2 edema, 4 enhancing), shape (size, size, slices)
    as (x, y, z) with the real BraTS affine (1 mm, L-P-S); skull-stripped (zero outside the
    brain); slice z = 0 at the bottom, the last slices above the brain empty. ``root`` is replaced
    only once everything is written. Same seed, same bytes.
    """
    start = time.perf_counter()
    names = brats_case_names(seed, patients)

    def fill(tmp: Path) -> None:
        def one(i: int) -> None:
            _write_brats_patient(tmp / names[i], seed, i, slices, size)

        with ThreadPoolExecutor(_workers()) as pool:
            list(pool.map(one, range(patients)))

    _write_atomically(Path(root), fill)
    log.info("wrote %d synthetic BraTS 2021 patients to %s in %.1f s", patients, root, time.perf_counter() - start)
    return names


def write_brats2023(root: Path, patients: int, slices: int, size: int = 240, seed: int = 0) -> list[str]:
    """Write a synthetic BraTS 2023 set; returns the case ids: the patients of ``write_brats2021`` (same
    seed, same pixels) as ``root/BraTS-GLI-<5 digits>-000/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` with the
    2023 labels (0, 1 necrotic core, 2 edema, 3 enhancing; seg float32, as the published files)."""
    names = [f"BraTS-GLI-{name.rsplit('_', 1)[1]}-000" for name in brats_case_names(seed, patients)]

    def fill(tmp: Path) -> None:
        def one(i: int) -> None:
            _write_brats_patient(tmp / names[i], seed, i, slices, size, edition="brats2023")

        with ThreadPoolExecutor(_workers()) as pool:
            list(pool.map(one, range(patients)))

    _write_atomically(Path(root), fill)
    return names


# file suffix -> sequence, per edition, in the order the files are written
_BRATS_FILES = {
    "brats2021": {"_flair": "flair", "_t1": "t1", "_t1ce": "t1gd", "_t2": "t2", "_seg": "seg"},
    "brats2023": {"-t2f": "flair", "-t1n": "t1", "-t1c": "t1gd", "-t2w": "t2", "-seg": "seg"},
}


def _write_brats_patient(folder: Path, seed: int, i: int, slices: int, size: int, edition: str = "brats2021") -> None:
    """Generate patient i and write its five NIfTI files into folder, named and labelled as ``edition``."""
    rng, has_tumour, low_contrast = _patient_plan(seed, "brats2021", i)
    z_lo = rng.uniform(-0.98, -0.88)
    p = generate_patient(rng, slices, size, has_tumour=has_tumour, low_contrast=low_contrast, z_range=(z_lo, 1.2))
    folder.mkdir()
    case = folder.name
    gains = rng.uniform(300, 1500, len(SEQUENCES))
    for suffix, seq in _BRATS_FILES[edition].items():
        if seq == "seg":
            data = p.labels if edition == "brats2021" else np.where(p.labels == 4, 3, p.labels).astype(np.float32)
        else:
            k = p.sequences.index(seq)
            data = np.where(p.brain, np.clip(np.rint(p.image[..., k] * gains[k]), 0, 32767), 0).astype(np.int16)
        _save_nifti(data, folder / f"{case}{suffix}.nii.gz")


DECATHLON_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}  # Task01_BrainTumour's channels
DECATHLON_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
_BRATS_TO_DECATHLON = np.array([0, 2, 1, 0, 3], np.uint8)  # BraTS 2021 label -> Decathlon label


def write_decathlon(root: Path, patients: int, slices: int, size: int = 240, seed: int = 0) -> list[str]:
    """Write the patients of ``write_brats2021`` (same seed, same pixels) as a Decathlon Task01 folder:
    ``root/dataset.json``, ``imagesTr/BRATS_<k>.nii.gz`` (4D, channels FLAIR, T1w, t1gd, T2w) and
    ``labelsTr/BRATS_<k>.nii.gz`` (0, 1 edema, 2 non-enhancing, 3 enhancing); returns the case ids."""
    names = [f"BRATS_{k + 1:03d}" for k in range(patients)]

    def fill(tmp: Path) -> None:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for i, name in enumerate(names):
            _write_brats_patient(tmp / "one", seed, i, slices, size)
            case = next((tmp / "one").glob("*_seg.nii.gz")).name[: -len("_seg.nii.gz")]
            volumes = [nib.load(tmp / "one" / f"{case}_{suffix}.nii.gz")
                       for suffix in ("flair", "t1", "t1ce", "t2")]
            stacked = np.stack([np.asarray(v.dataobj) for v in volumes], axis=-1)
            nib.save(nib.Nifti1Image(stacked, volumes[0].affine), tmp / "imagesTr" / f"{name}.nii.gz")
            seg = nib.load(tmp / "one" / f"{case}_seg.nii.gz")
            labels = _BRATS_TO_DECATHLON[np.asarray(seg.dataobj)]
            nib.save(nib.Nifti1Image(labels, seg.affine), tmp / "labelsTr" / f"{name}.nii.gz")
            shutil.rmtree(tmp / "one")
        (tmp / "dataset.json").write_text(json.dumps({
            "name": "BRATS", "modality": DECATHLON_MODALITY, "labels": DECATHLON_LABELS, "numTraining": patients,
            "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names]}))

    _write_atomically(Path(root), fill)
    return names


def _save_nifti(volume: np.ndarray, path: Path) -> None:
    """Save a [D, H, W] volume (slices, rows = posterior, cols = patient's left) as a BraTS-like (x, y, z) NIfTI."""
    data = np.ascontiguousarray(volume.transpose(2, 1, 0))
    affine = brats_affine(data.shape[0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def write_demo(root: Path, params: DemoParams) -> list[str]:
    """The demo stage's data: ``write_kaggle_3m`` with the demo params; returns the case names."""
    return write_kaggle_3m(Path(root), params.patients, params.slices_per_patient, params.image_size, params.seed)
