"""Reader for the LGG ``kaggle_3m`` layout (Buda et al.): one folder of 2D TIFF slices per patient.

Layout::

    <root>/data.csv                              clinical table, column "Patient" = TCGA_<inst>_<id>
    <root>/TCGA_<inst>_<id>_<date>/<case>_<n>.tif        uint8 [256, 256, 3]: pre-contrast, FLAIR, post-contrast
    <root>/TCGA_<inst>_<id>_<date>/<case>_<n>_mask.tif   uint8 [256, 256], 0 / 255

Files are read with OpenCV (about 15x faster than tifffile), concurrently in a thread pool
(OpenCV releases the GIL); tifffile is the fallback for what OpenCV cannot decode, and names the
problem when the file is broken.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import tifffile

from pipeline.case import LGG_CHANNELS, Case
from pipeline.errors import InputError
from pipeline.sources.volume import intensity_record, normalise_volume

log = logging.getLogger(__name__)

CASE_PREFIX = "TCGA_"
SLICE_FILE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
READ_THREADS = min(8, 2 * (os.cpu_count() or 1))  # file reads in flight per case
LGG_LABEL_NAMES = {0: "background", 1: "FLAIR abnormality"}


def case_folders(root: Path) -> list[Path]:
    """The ``TCGA_*`` case folders of a kaggle_3m root, sorted; InputError naming the root if none."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CASE_PREFIX))
    if not folders:
        raise InputError(root, "no kaggle_3m case folders (TCGA_*) found")
    return folders


def load_clinical(csv_path: Path) -> dict[str, dict[str, Any]]:
    """data.csv -> {"TCGA_<inst>_<id>": {column: value}} with NaN as None; InputError when unreadable."""
    try:
        table = pd.read_csv(csv_path, dtype={"Patient": str})
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise InputError(csv_path, f"not a readable CSV table ({e})") from None
    if "Patient" not in table.columns:
        raise InputError(csv_path, 'no "Patient" column')
    table = table.astype(object).where(table.notna(), None)
    return {str(row.pop("Patient")): row for row in table.to_dict(orient="records")}


def slice_files(folder: Path) -> tuple[list[int], list[Path], list[Path]]:
    """Slice numbers (ascending, 10 after 9), image paths and mask paths of a case folder.

    Masks may be absent altogether (an unlabelled case: empty mask list). Raises InputError for a
    folder without slices, an image without mask, a mask without image, or a repeated slice number.
    """
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in folder.iterdir():
        match = SLICE_FILE.match(path.name)
        if match is None or path.name.startswith(".") or not path.is_file():
            continue
        found = masks if match["mask"] else images
        n = int(match["n"])
        if n in found:
            raise InputError(path, f"slice number {n} appears twice (also {found[n].name})")
        found[n] = path
    if not images and not masks:
        raise InputError(folder, "no <case>_<n>.tif slices: not a kaggle_3m case folder")
    orphan_masks = sorted(masks.keys() - images.keys())
    if orphan_masks:
        raise InputError(masks[orphan_masks[0]], "mask without image (no matching <case>_<n>.tif)")
    numbers = sorted(images)
    if masks:
        for n in numbers:
            if n not in masks:
                image = images[n]
                raise InputError(image, f"image without mask (no {image.stem}_mask{image.suffix})")
    return numbers, [images[n] for n in numbers], [masks[n] for n in numbers] if masks else []


def read_tiff(path: Path) -> np.ndarray:
    """A TIFF's first image in the file's channel order: [H, W] or [H, W, C].

    OpenCV first (returns BGR, flipped back here); tifffile when OpenCV cannot decode it.
    InputError naming the file when neither can.
    """
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        return _read_tiff_fallback(path)
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)  # 10x faster than a [..., ::-1] copy
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def _read_tiff_fallback(path: Path) -> np.ndarray:
    try:
        array = tifffile.imread(path)
    except (ValueError, OSError, EOFError, IndexError, KeyError) as e:  # TiffFileError is a ValueError
        raise InputError(path, f"not a readable TIFF ({e})") from None
    if not isinstance(array, np.ndarray) or array.size == 0:
        raise InputError(path, "not a readable TIFF (no image data; truncated?)")
    return array


def _checked_image(path: Path) -> np.ndarray:
    image = read_tiff(path)
    if image.ndim != 3 or image.shape[2] != 3:
        channels = 1 if image.ndim == 2 else image.shape[-1]
        raise InputError(path, f"expected 3 channels (pre-contrast, FLAIR, post-contrast), got shape "
                               f"{image.shape} ({channels} channels)")
    if image.dtype != np.uint8:
        raise InputError(path, f"expected uint8 pixels, got {image.dtype}")
    return image


def _checked_mask(path: Path, image_shape: tuple[int, ...], image_path: Path) -> np.ndarray:
    mask = read_tiff(path)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(path, f"expected a 1-channel mask, got shape {mask.shape}")
    if mask.shape != image_shape[:2]:
        raise InputError(path, f"mask is {mask.shape[0]}x{mask.shape[1]} but image {image_path.name} is "
                               f"{image_shape[0]}x{image_shape[1]}")
    if mask.dtype != np.uint8:
        raise InputError(path, f"expected a uint8 mask, got {mask.dtype}")
    if ((mask != 0) & (mask != 255)).any():
        values = np.unique(mask)
        raise InputError(path, f"mask values must be 0/255, got {values[:8].tolist()}{' ...' if len(values) > 8 else ''}")
    return mask


def _fit(array: np.ndarray, size: int | None, interpolation: int) -> np.ndarray:
    if size is None or array.shape[:2] == (size, size):
        return array
    return cv2.resize(array, (size, size), interpolation=interpolation)


def read_lgg_case(
    folder: Path,
    image_size: int | None = None,
    clinical: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    require_labels: bool = False,
    intensity: str = "as_stored",
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
) -> Case:
    """One kaggle_3m case folder -> Case (image uint8 [D, S, S, 3] t1/flair/t1gd, labels 0/1).

    image_size: S; slices of another size are resized (INTER_AREA images, INTER_NEAREST masks);
    None keeps the files' size (all slices must then agree). clinical: the ``load_clinical`` table;
    None reads ``data.csv`` next to the folder when there is one. A folder without any mask file
    gives zero labels and meta["has_labels"] False, unless ``require_labels`` (ingest).
    intensity: "as_stored" keeps the files' uint8 values; "per_volume" rescales each channel over the
    case's brain pixels (non-zero in any channel) to ``clip_percentiles`` (``rescale_per_volume``).
    """
    folder = Path(folder)
    numbers, image_paths, mask_paths = slice_files(folder)
    if require_labels and not mask_paths:
        raise InputError(image_paths[0], f"image without mask (no {image_paths[0].stem}_mask{image_paths[0].suffix})")
    first = _checked_image(image_paths[0])
    size = image_size
    shape = (size, size) if size is not None else first.shape[:2]
    images = np.empty((len(numbers), *shape, 3), np.uint8)
    labels = np.zeros((len(numbers), *shape), np.uint8)

    def read_slice(i: int) -> None:
        image = first if i == 0 else _checked_image(image_paths[i])
        if size is None and image.shape[:2] != shape:
            raise InputError(image_paths[i], f"slice is {image.shape[:2]}, {image_paths[0].name} is {shape}")
        images[i] = _fit(image, size, cv2.INTER_AREA)
        if mask_paths:
            labels[i] = _fit(_checked_mask(mask_paths[i], image.shape, image_paths[i]), size, cv2.INTER_NEAREST) > 0

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(numbers))) as pool:
        for _ in pool.map(read_slice, range(len(numbers))):  # re-raises a slice's InputError
            pass
    return Case(
        patient_id=folder.name,
        image=_scaled(images, intensity, clip_percentiles),
        labels=labels,
        source="lgg",
        channels=LGG_CHANNELS,
        slice_numbers=np.asarray(numbers),
        spacing_mm=None,
        geometry=None,
        meta={**_case_meta(folder, clinical, has_labels=bool(mask_paths)),
              "intensity": intensity_record(intensity, clip_percentiles)},
    )


def rescale_per_volume(images: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """uint8 [D, H, W, C] -> uint8 [D, H, W, C]: each channel rescaled over the brain pixels (non-zero in
    any channel) of the whole case, percentiles[0] -> 0 and percentiles[1] -> 255; background stays 0.
    The same robust per-volume scaling the NIfTI readers apply (``normalise_volume``)."""
    brain = images.any(axis=-1)
    out = np.empty_like(images)
    for c in range(images.shape[-1]):
        out[..., c] = normalise_volume(images[..., c], brain, percentiles)
    return out


def _scaled(images: np.ndarray, intensity: str, percentiles: tuple[float, float]) -> np.ndarray:
    return rescale_per_volume(images, percentiles) if intensity == "per_volume" else images


def _case_meta(folder: Path, clinical: Mapping[str, Mapping[str, Any]] | None, has_labels: bool) -> dict[str, Any]:
    parts = folder.name.split("_")
    institution = parts[1] if len(parts) > 2 and folder.name.startswith(CASE_PREFIX) else None
    if clinical is None:
        csv_path = folder.parent / "data.csv"
        clinical = load_clinical(csv_path) if csv_path.is_file() else {}
    row = clinical.get("_".join(parts[:3]))
    return {
        "path": str(folder),
        "institution": institution,
        "clinical": dict(row) if row is not None else None,
        "has_labels": has_labels,
        "label_names": LGG_LABEL_NAMES,
    }


def read_lgg_slice(image_path: Path, image_size: int | None = None, *, intensity: str = "as_stored",
                   clip_percentiles: tuple[float, float] = (0.5, 99.5)) -> Case:
    """One ``<case>_<n>.tif`` (and its ``_mask.tif`` when present) -> a one-slice Case; with
    intensity "per_volume" the one slice is the volume its channels are rescaled over."""
    image_path = Path(image_path)
    match = SLICE_FILE.match(image_path.name)
    if match is None or match["mask"]:
        raise InputError(image_path, "not a kaggle_3m slice image (<case>_<n>.tif)")
    image = _checked_image(image_path)
    mask_path = image_path.with_name(f"{image_path.stem}_mask{image_path.suffix}")
    labels = np.zeros((1, *(image.shape[:2] if image_size is None else (image_size, image_size))), np.uint8)
    if mask_path.is_file():
        labels[0] = _fit(_checked_mask(mask_path, image.shape, image_path), image_size, cv2.INTER_NEAREST) > 0
    meta = _case_meta(image_path.parent, None, has_labels=mask_path.is_file())
    return Case(
        patient_id=image_path.parent.name,
        image=_scaled(_fit(image, image_size, cv2.INTER_AREA)[np.newaxis], intensity, clip_percentiles),
        labels=labels,
        source="lgg",
        channels=LGG_CHANNELS,
        slice_numbers=np.asarray([int(match["n"])]),
        meta={**meta, "path": str(image_path), "intensity": intensity_record(intensity, clip_percentiles)},
    )
