"""Readers: one per on-disk layout, each producing ``Case``s (see ``pipeline.case``).

``read_cases(data)`` streams the cases under ``data.root`` one at a time with the reader that
``data.source`` names ("lgg" and "demo": kaggle_3m TIFF folders; "brats2021": BraTS 2021 case
folders; "decathlon": a Medical Segmentation Decathlon task folder). With ``data.on_error: skip``
a case that raises InputError becomes a ``Skipped(path, reason)`` record and reading goes on.

``detect_layout(path)`` tells what a folder or file is, for commands that take any of them;
the single-case readers (``read_lgg_case``, ``read_brats2021_case``, ``read_decathlon_case``)
accept unlabelled cases for prediction (zero labels, ``meta["has_labels"] = False``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import nibabel as nib
from nibabel.filebasedimages import ImageFileError

from pipeline.case import Case
from pipeline.errors import InputError
from pipeline.params import DataParams
from pipeline.slices import Skipped  # the record write_store lists in skipped.csv
from pipeline.sources.brats import (
    brats2021_files,
    decathlon_pairs,
    is_brats2021_case,
    load_dataset_json,
    read_brats2021_case,
    read_decathlon_case,
)
from pipeline.sources.lgg import SLICE_FILE, case_folders, load_clinical, read_lgg_case, read_lgg_slice
from pipeline.sources.volume import is_nifti, normalise_volume, to_scan_space

__all__ = [
    "LAYOUTS", "Skipped", "detect_layout", "list_case_paths", "read_cases", "read_lgg_case", "read_lgg_slice",
    "read_brats2021_case", "read_decathlon_case", "normalise_volume", "to_scan_space",
]

log = logging.getLogger(__name__)

LAYOUTS = ("lgg_case", "lgg_root", "lgg_slice", "brats2021_case", "brats2021_root", "decathlon_root", "decathlon_file")
CaseReader = Callable[[], Case]


def read_cases(data: DataParams, root: Path | None = None) -> Iterator[Case | Skipped]:
    """Stream the cases under ``root`` (default ``data.root``).

    The next case is read in a background thread while the caller handles the current one
    (so reading overlaps storing); at most two cases are in memory, whatever their number.
    Every case is read with labels required (ingest is training data). An InputError for a case
    is raised (``data.on_error == "fail"``) or yielded as Skipped (``"skip"``); a root that holds
    no case at all always raises.
    """
    readers = _case_readers(data, Path(root if root is not None else data.root))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read_cases") as prefetch:
        pending = prefetch.submit(readers[0][1]) if readers else None
        for i, (case_path, _) in enumerate(readers):
            current = pending
            pending = prefetch.submit(readers[i + 1][1]) if i + 1 < len(readers) else None
            try:
                case = current.result()
            except InputError as e:
                if data.on_error != "skip":
                    if pending is not None:
                        pending.cancel()
                    raise
                reason = e.problem if e.path == case_path else str(e)
                log.warning("skipping %s: %s", case_path, reason)
                yield Skipped(path=str(case_path), reason=reason)
                continue
            yield case


def list_case_paths(data: DataParams, root: Path | None = None) -> list[Path]:
    """The case folders (LGG, BraTS 2021) or image files (Decathlon) that ``read_cases`` would read."""
    return [path for path, _ in _case_readers(data, Path(root if root is not None else data.root))]


def _case_readers(data: DataParams, root: Path) -> list[tuple[Path, CaseReader]]:
    if not root.is_dir():
        raise InputError(root, "not a folder" if root.exists() else "no such folder")
    if data.source in ("lgg", "demo"):
        folders = case_folders(root)
        csv_path = root / "data.csv"
        clinical = load_clinical(csv_path) if csv_path.is_file() else {}
        return [(f, partial(read_lgg_case, f, data.image_size, clinical, require_labels=True,
                                 intensity=data.intensity, clip_percentiles=data.clip_percentiles)) for f in folders]
    if data.source == "brats2021":
        return [(f, partial(read_brats2021_case, f, data, require_labels=True)) for f in _brats2021_folders(root)]
    if data.source == "decathlon":
        return _decathlon_readers(data, root)
    raise ValueError(f"unknown data.source {data.source!r}")


def _brats2021_folders(root: Path) -> list[Path]:
    if is_brats2021_case(root):
        raise InputError(root, "this is one BraTS 2021 case folder; data.root must be the folder holding case folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(root, "no BraTS 2021 case folders found")
    return folders


def _decathlon_readers(data: DataParams, root: Path) -> list[tuple[Path, CaseReader]]:
    json_path = root / "dataset.json"
    if not json_path.is_file():
        raise InputError(root, "no dataset.json: not a Decathlon task folder")
    spec = load_dataset_json(json_path)
    pairs = decathlon_pairs(root)
    if not pairs:
        raise InputError(root / "imagesTr", "no .nii.gz images found")
    readers: list[tuple[Path, CaseReader]] = []
    for image, label in pairs:
        if image is None:
            readers.append((label, partial(_raise, label, "label without image (no imagesTr/ file of this name)")))
        elif label is None:
            readers.append((image, partial(_raise, image, "image without label (no labelsTr/ file of this name)")))
        else:
            readers.append((image, partial(read_decathlon_case, image, data, label, spec)))
    return readers


def _raise(path: Path, problem: str) -> Case:
    raise InputError(path, problem)


def detect_layout(path: Path) -> str:
    """Which layout a folder or file is: one of LAYOUTS. InputError naming it when none fits.

    Files: ``<case>_<n>.tif`` -> "lgg_slice", a 4D NIfTI -> "decathlon_file". Folders: with
    dataset.json or imagesTr/ -> "decathlon_root"; with slice TIFFs -> "lgg_case"; with BraTS
    sequence files -> "brats2021_case"; with TCGA_* folders -> "lgg_root"; with BraTS case
    folders -> "brats2021_root".
    """
    path = Path(path)
    if path.is_file():
        return _file_layout(path)
    if not path.is_dir():
        raise InputError(path, "no such file or folder")
    if (path / "dataset.json").is_file() or (path / "imagesTr").is_dir():
        return "decathlon_root"
    if any(SLICE_FILE.match(p.name) and not p.name.startswith(".") for p in path.iterdir()):
        return "lgg_case"
    if is_brats2021_case(path):
        return "brats2021_case"
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if any(p.name.startswith("TCGA_") for p in folders):
        return "lgg_root"
    if any(is_brats2021_case(p) for p in folders):
        return "brats2021_root"
    raise InputError(path, "unrecognised folder: no kaggle_3m slices or TCGA_* folders, no BraTS NIfTI files "
                           "or case folders, no dataset.json")


def _file_layout(path: Path) -> str:
    match = SLICE_FILE.match(path.name)
    if match is not None:
        if match["mask"]:
            raise InputError(path, "this is a mask; give the slice image (<case>_<n>.tif)")
        return "lgg_slice"
    if is_nifti(path):
        try:
            ndim = len(nib.load(path).shape)
        except (ImageFileError, OSError, EOFError, ValueError) as e:
            raise InputError(path, f"not a readable NIfTI file ({e})") from None
        if ndim == 4:
            return "decathlon_file"
        kinds = sorted(brats2021_files(path.parent))
        raise InputError(path, f"a {ndim}D NIfTI holds one sequence; give its case folder (found {kinds})")
    raise InputError(path, "unrecognised file: expected a <case>_<n>.tif slice or a 4D .nii.gz volume")
