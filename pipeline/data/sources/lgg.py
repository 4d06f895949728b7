"""Reader for the LGG ``kaggle_3m`` layout (Buda et al.): one folder of 2D TIFF slices per patient.

Layout::

    <root>/data.csv                              clinical table, column "Patient" = TCGA_<inst>_<id>
    <root>/TCGA_<inst>_<id>_<date>/<case>_<n>.tif        uint8 [256, 256, 3]: pre-contrast, FLAIR, post-contrast
    <root>/TCGA_<inst>_<id>_<date>/<case>_<n>_mask.tif   uint8 [256, 256], 0 / 255 (0 / 1 reads the same)

Files are read with OpenCV (about 15x faster than tifffile), concurrently in a thread pool
(OpenCV releases the GIL); tifffile is the fallback for what OpenCV cannot decode, and names the
problem when the file is broken. Hidden files (``.*``, ``._*``) and ``__MACOSX`` are ignored; an entry named
like a slice that is no readable file (dangling link, symlink loop, folder, FIFO, empty) is an InputError.

``KAGGLE_3M`` (end of the file) declares the layout to the registry: it serves data.source "lgg" and
"demo" (the demo writes kaggle_3m), and predictions go back as ``<case>_<n>_mask.tif`` files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import tifffile

from pipeline.data.case import Case
from pipeline.data.sources.files import check_file, is_ignored, list_folder
from pipeline.data.sources.layout import CaseReader, Layout, WrittenMask, check_labels_mode
from pipeline.data.sources.volume import intensity_record, normalise_volume
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError
from pipeline.sequences import LGG_CHANNELS

log = logging.getLogger(__name__)

# OpenCV logs libtiff's complaints about a broken file to stderr; the readers name the file and the problem
# themselves (InputError), so those lines are noise. OPENCV_LOG_LEVEL, when set, still decides.
if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # the fallback's complaints about a broken file, likewise

CASE_PREFIX = "TCGA_"
SLICE_FILE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
READ_THREADS = min(8, 2 * (os.cpu_count() or 1))  # file reads in flight per case
LGG_LABEL_NAMES = {0: "background", 1: "FLAIR abnormality"}


def case_folders(root: Path) -> list[Path]:
    """The ``TCGA_*`` case folders of a kaggle_3m root, sorted; InputError naming the root if none."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder")
    # A TCGA_* link that leads nowhere is listed too: reading it names the broken link (skippable).
    folders = [p for p in list_folder(root) if p.name.startswith(CASE_PREFIX) and not is_ignored(p)
               and (p.is_dir() or (p.is_symlink() and not p.exists()))]
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
    folder without slices, an image without mask, a mask without image, a repeated slice number, or
    a slice file named for another case than its folder (``<other case>_<n>.tif``).
    """
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = SLICE_FILE.match(path.name)
        if match is None or path.name.startswith(".") or not path.is_file():
            continue
        if match["stem"] != folder.name:
            raise InputError(path, f"belongs to another case ({match['stem']}), not to its folder {folder.name}; "
                                   "move it to its own case folder")
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
    InputError naming the file when neither can, or when it is no regular file (a FIFO would block).
    """
    check_file(path)
    try:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        array = None
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
    except Exception as e:  # any decoder error (zlib.error, struct.error, KeyError ...) is the file's
        raise InputError(path, f"not a readable TIFF ({_decode_problem(e)})") from None
    if not isinstance(array, np.ndarray) or array.size == 0:
        raise InputError(path, "not a readable TIFF (no image data; truncated?)")
    return array


def _decode_problem(error: Exception) -> str:
    """tifffile's error in words: a codec it lacks means OpenCV (which has it) could not decode the data."""
    if "imagecodecs" in str(error):  # "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package"
        codec = re.search(r"COMPRESSION\.(\w+)", str(error))
        return f"truncated or corrupt {codec[1] if codec else 'compressed'} data"
    if isinstance(error, (ValueError, OSError, EOFError)):  # TiffFileError is a ValueError
        return str(error)
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"truncated or corrupt data ({name}: {error})"


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
    top = mask.max(initial=0)
    if ((mask != 0) & (mask != top)).any() or top not in (0, 1, 255):  # 0/255 as distributed, or 0/1
        values = np.unique(mask)
        raise InputError(path, f"mask values must be 0/255 or 0/1, got {values[:8].tolist()}"
                               f"{' ...' if len(values) > 8 else ''}")
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
    on_bad_labels: str = "fail",
    intensity: str = "as_stored",
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
) -> Case:
    """One kaggle_3m case folder -> Case (image uint8 [D, S, S, 3] t1/flair/t1gd, labels 0/1).

    image_size: S; slices of another size are resized (INTER_AREA images, INTER_NEAREST masks);
    None keeps the files' size (all slices must then agree). clinical: the ``load_clinical`` table;
    None reads ``data.csv`` next to the folder when there is one. A folder without any mask file
    gives zero labels and meta["has_labels"] False, unless ``require_labels`` (ingest).
    on_bad_labels: "fail" makes a missing, unreadable or odd mask file an InputError; "warn" (prediction,
    which needs no ground truth) logs a warning naming the file and reads the whole case without labels.
    intensity: "as_stored" keeps the files' uint8 values; "per_volume" rescales each channel over the
    case's brain pixels (non-zero in any channel) to ``clip_percentiles`` (``rescale_per_volume``).
    """
    folder = Path(folder)
    try:
        _check_slice_entries(folder)
        numbers, image_paths, mask_paths = slice_files(folder)
    except InputError as e:
        if on_bad_labels != "warn":
            raise
        numbers, image_paths = _image_slices(folder)  # raises what is wrong with the images themselves
        _warn_unlabelled(e, folder.name)
        mask_paths = []
    if require_labels and not mask_paths:
        raise InputError(image_paths[0], f"image without mask (no {image_paths[0].stem}_mask{image_paths[0].suffix})")
    first = _checked_image(image_paths[0])
    size = image_size
    shape = (size, size) if size is not None else first.shape[:2]
    images = np.empty((len(numbers), *shape, 3), np.uint8)
    labels = np.zeros((len(numbers), *shape), np.uint8)
    bad_masks: list[InputError] = []  # on_bad_labels "warn": masks that could not be used

    def read_slice(i: int) -> None:
        image = first if i == 0 else _checked_image(image_paths[i])
        if size is None and image.shape[:2] != shape:
            raise InputError(image_paths[i], f"slice is {image.shape[:2]}, {image_paths[0].name} is {shape}")
        images[i] = _fit(image, size, cv2.INTER_AREA)
        if mask_paths:
            try:
                mask = _checked_mask(mask_paths[i], image.shape, image_paths[i])
            except InputError as e:
                if on_bad_labels != "warn":
                    raise
                bad_masks.append(e)
                return
            labels[i] = _fit(mask, size, cv2.INTER_NEAREST) > 0

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(numbers))) as pool:
        for _ in pool.map(read_slice, range(len(numbers))):  # re-raises a slice's InputError
            pass
    if bad_masks:
        first_bad = min(bad_masks, key=lambda e: e.path)
        more = f" (and {len(bad_masks) - 1} more bad masks)" if len(bad_masks) > 1 else ""
        _warn_unlabelled(InputError(first_bad.path, first_bad.problem + more), folder.name)
        labels[:] = 0
        mask_paths = []
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


def _check_slice_entries(folder: Path) -> None:
    """InputError for an entry named like a slice or mask that is no readable file (a dangling link, a symlink
    loop, a folder, a FIFO), which ``slice_files`` would otherwise pass over as if it were not there."""
    for path in list_folder(folder):
        if SLICE_FILE.match(path.name) and not is_ignored(path) and not path.is_file():
            check_file(path)


def _image_slices(folder: Path) -> tuple[list[int], list[Path]]:
    """Slice numbers and image paths of a case folder, its masks left out (prediction when they are bad);
    InputError for what is wrong with the images: none, a repeated number, a broken entry, another case's."""
    images: dict[int, Path] = {}
    for path in list_folder(folder):
        match = SLICE_FILE.match(path.name)
        if match is None or match["mask"] or is_ignored(path):
            continue
        check_file(path)
        if match["stem"] != folder.name:
            raise InputError(path, f"belongs to another case ({match['stem']}), not to its folder {folder.name}")
        n = int(match["n"])
        if n in images:
            raise InputError(path, f"slice number {n} appears twice (also {images[n].name})")
        images[n] = path
    if not images:
        raise InputError(folder, "no <case>_<n>.tif slices: not a kaggle_3m case folder")
    numbers = sorted(images)
    return numbers, [images[n] for n in numbers]


def _warn_unlabelled(error: InputError, case: str) -> None:
    log.warning("%s: %s; %s is read without reference masks", error.path, error.problem, case)


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


def lgg_patient(case_name: str) -> str:
    """The patient ``TCGA_<inst>_<patient>`` of a case folder ``TCGA_<inst>_<patient>_<scan date>``.

    Two scans of one patient are two folders with one patient; the split keeps them together.
    A name not in the TCGA pattern is its own patient.
    """
    parts = case_name.split("_")
    return "_".join(parts[:3]) if case_name.startswith(CASE_PREFIX) and len(parts) > 3 else case_name


def _case_meta(folder: Path, clinical: Mapping[str, Mapping[str, Any]] | None, has_labels: bool) -> dict[str, Any]:
    parts = folder.name.split("_")
    institution = parts[1] if len(parts) > 2 and folder.name.startswith(CASE_PREFIX) else None
    if clinical is None:
        csv_path = folder.parent / "data.csv"
        clinical = load_clinical(csv_path) if csv_path.is_file() else {}
    patient = lgg_patient(folder.name)
    row = clinical.get(patient)
    return {
        "path": str(folder),
        "patient": patient,
        "institution": institution,
        "clinical": dict(row) if row is not None else None,
        "has_labels": has_labels,
        "label_names": LGG_LABEL_NAMES,
    }


def read_lgg_slice(image_path: Path, image_size: int | None = None, *, intensity: str = "as_stored",
                   clip_percentiles: tuple[float, float] = (0.5, 99.5), on_bad_labels: str = "fail") -> Case:
    """One ``<case>_<n>.tif`` (and its ``_mask.tif`` when present) -> a one-slice Case; with
    intensity "per_volume" the one slice is the volume its channels are rescaled over. on_bad_labels
    as in ``read_lgg_case``: "warn" reads the slice unlabelled when its mask is unusable."""
    image_path = Path(image_path)
    match = SLICE_FILE.match(image_path.name)
    if match is None or match["mask"]:
        raise InputError(image_path, "not a kaggle_3m slice image (<case>_<n>.tif)")
    image = _checked_image(image_path)
    mask_path = image_path.with_name(f"{image_path.stem}_mask{image_path.suffix}")
    labels = np.zeros((1, *(image.shape[:2] if image_size is None else (image_size, image_size))), np.uint8)
    has_labels = os.path.lexists(mask_path)  # a broken link is a bad mask, not a missing one
    if has_labels:
        try:
            labels[0] = _fit(_checked_mask(mask_path, image.shape, image_path), image_size, cv2.INTER_NEAREST) > 0
        except InputError as e:
            if on_bad_labels != "warn":
                raise
            _warn_unlabelled(e, image_path.name)
            has_labels = False
    meta = _case_meta(image_path.parent, {}, has_labels=has_labels)  # one slice: no data.csv join
    return Case(
        patient_id=image_path.parent.name,
        image=_scaled(_fit(image, image_size, cv2.INTER_AREA)[np.newaxis], intensity, clip_percentiles),
        labels=labels,
        source="lgg",
        channels=LGG_CHANNELS,
        slice_numbers=np.asarray([int(match["n"])]),
        meta={**meta, "path": str(image_path), "intensity": intensity_record(intensity, clip_percentiles)},
    )


# --- the kaggle_3m layout: detect, list, read one case, write a prediction ------------------------------

def detect_kaggle_3m(path: Path) -> str | None:
    """"lgg_case" (a folder with <case>_<n>.tif files), "lgg_root" (a folder with TCGA_* folders),
    "lgg_slice" (a file named <case>_<n>.tif) or None; InputError for a mask file (give the image)."""
    if path.is_dir():
        entries = [p for p in list_folder(path) if not is_ignored(p)]
        if any(SLICE_FILE.match(p.name) for p in entries):
            return "lgg_case"
        if any(p.name.startswith(CASE_PREFIX) and p.is_dir() for p in entries):
            return "lgg_root"
        return None
    match = SLICE_FILE.match(path.name)
    if match is None:
        return None
    if match["mask"]:
        raise InputError(path, "this is a mask; give the slice image (<case>_<n>.tif)")
    return "lgg_slice"


def list_kaggle_3m_cases(root: Path, task: TaskSpec, min_brain_fraction: float) -> list[tuple[Path, CaseReader]]:
    """The TCGA_* case folders of a kaggle_3m root, each read with labels required and joined to the
    root's data.csv (read once, here) when there is one. Every slice is kept (min_brain_fraction is for
    volumes: a kaggle_3m case is already its brain's slices)."""
    folders = case_folders(root)
    csv_path = root / "data.csv"
    clinical = load_clinical(csv_path) if csv_path.is_file() else {}
    return [(f, partial(read_lgg_case, f, task.image_size, clinical, require_labels=True,
                        intensity=task.intensity_mode, clip_percentiles=task.clip_percentiles)) for f in folders]


def read_kaggle_3m(path: Path, task: TaskSpec, *, min_brain_fraction: float, labels: str) -> Case:
    """A kaggle_3m case folder or one ``<case>_<n>.tif`` slice (its own case, named by its file stem) ->
    Case at task.image_size; no clinical join; every slice kept (min_brain_fraction is for volumes).
    labels as in ``Layout.read``. InputError when task.channels are not the TIFFs' fixed t1, flair, t1gd."""
    check_labels_mode(labels)
    path = Path(path)
    is_slice = SLICE_FILE.match(path.name) is not None
    if is_slice:
        check_file(path)  # a dangling link or a FIFO named like a scan: say so (a FIFO would block)
    if tuple(task.channels) != LGG_CHANNELS:
        raise InputError(path, f"kaggle_3m TIFFs hold the channels {','.join(LGG_CHANNELS)} (fixed LGG order); "
                               f"the models were trained on {','.join(task.channels)}")
    on_bad_labels = "fail" if labels == "required" else "warn"
    if not is_slice:
        return read_lgg_case(path, task.image_size, clinical={}, require_labels=labels == "required",
                             on_bad_labels=on_bad_labels, intensity=task.intensity_mode,
                             clip_percentiles=task.clip_percentiles)
    case = read_lgg_slice(path, task.image_size, intensity=task.intensity_mode,
                          clip_percentiles=task.clip_percentiles, on_bad_labels=on_bad_labels)
    if labels == "required" and not case.meta["has_labels"]:
        raise InputError(path, f"image without mask (no {path.stem}_mask{path.suffix})")
    return dataclasses.replace(case, patient_id=path.stem)  # one slice: its own output folder


def write_kaggle_3m_masks(case: Case, mask: np.ndarray, folder: Path) -> WrittenMask:
    """kaggle_3m masks ``<case>_<n>_mask.tif`` (uint8 0/255) in ``folder``, one per slice of mask bool
    [D, S, S], each at its input slice's own size (nearest neighbour from S). The input's own mask files play
    no part: a case with some of them missing, orphaned or broken is written in full like any other."""
    source = Path(case.meta["path"])
    if source.is_file():
        paths = {int(case.slice_numbers[0]): source}
    else:
        numbers, images = _image_slices(source)
        paths = dict(zip(numbers, images, strict=True))
    names, area = [], np.zeros(len(mask), np.int64)
    for k, n in enumerate(case.slice_numbers):
        image_path = paths[int(n)]
        height, width = _tiff_shape(image_path)
        slice_mask = mask[k].astype(np.uint8) * np.uint8(255)
        if slice_mask.shape != (height, width):
            slice_mask = cv2.resize(slice_mask, (width, height), interpolation=cv2.INTER_NEAREST)
        area[k] = np.count_nonzero(slice_mask)
        name = f"{image_path.stem}_mask{image_path.suffix}"
        tifffile.imwrite(folder / name, slice_mask, photometric="minisblack", metadata=None)
        names.append(name)
    return WrittenMask(outputs={"masks": names}, tumour_px=area)


def _tiff_shape(path: Path) -> tuple[int, int]:
    """(rows, cols) of a TIFF's first image, from its header when tifffile can parse it."""
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
    except (ValueError, OSError, IndexError, KeyError):
        shape = read_tiff(path).shape  # OpenCV could read it (the reader did); so can this
    return int(shape[0]), int(shape[1])


KAGGLE_3M = Layout(
    name="kaggle_3m",
    sources=("lgg", "demo"),
    case_kinds=("lgg_case", "lgg_slice"),
    root_kinds=("lgg_root",),
    detect=detect_kaggle_3m,
    list_cases=list_kaggle_3m_cases,
    read=read_kaggle_3m,
    write_prediction=write_kaggle_3m_masks,
    folder_hint="kaggle_3m slices or TCGA_* folders",
    file_hint="a <case>_<n>.tif slice",
    cases_hint="kaggle_3m slices or case folders",
)
