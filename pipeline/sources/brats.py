"""Readers for the two BraTS layouts: BraTS 2021 case folders and the Medical Segmentation Decathlon.

BraTS 2021: ``<root>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` (3D, one sequence a file);
sequence spellings such as t1gd, T1CE, t1c and seg/segm are accepted. Labels 0/1/2/4.
Decathlon (Task01_BrainTumour): ``<root>/dataset.json``, ``imagesTr/<name>.nii.gz`` (4D, last axis
= the channels named in dataset.json "modality") and ``labelsTr/<name>.nii.gz``; label values and
names come from dataset.json "labels". Files starting with "._" (macOS junk) are ignored.

Both become Cases through ``pipeline.sources.volume`` (same orientation, slicing, normalisation),
so one scan stored in either layout gives identical image slices.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.case import Case
from pipeline.errors import InputError
from pipeline.params import DataParams
from pipeline.sources.volume import (
    CanonicalVolume,
    canonical_sequence,
    check_labels,
    is_nifti,
    load_canonical,
    nifti_stem,
    volume_case,
)

log = logging.getLogger(__name__)

BRATS2021_LABELS = {
    0: "background",
    1: "necrotic / non-enhancing tumour core",
    2: "peritumoral edema",
    4: "enhancing tumour",
}
SEGMENTATION_NAMES = ("seg", "segm", "segmentation", "label", "labels")
# Task01_BrainTumour's channels, used only for a lone 4D file without a dataset.json.
DECATHLON_DEFAULT_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
DECATHLON_DEFAULT_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
# File-name spelling of each canonical sequence, for error messages.
_SPELLINGS = {"t1": "t1", "t1gd": "t1ce (or t1gd)", "t2": "t2", "flair": "flair"}


def _check_same_grid(volume: CanonicalVolume, reference: CanonicalVolume) -> None:
    """InputError naming ``volume`` when its spatial shape differs from ``reference``'s."""
    if volume.shape != reference.shape:
        raise InputError(volume.path, f"shape {volume.shape} differs from {reference.path.name} {reference.shape}")
    if not np.allclose(volume.affine, reference.affine, atol=1e-3):
        log.warning("%s: affine differs from %s; using the latter", volume.path, reference.path.name)


# --- BraTS 2021 -------------------------------------------------------------------------------

def brats2021_files(folder: Path) -> dict[str, Path]:
    """The NIfTI files of a BraTS 2021 case folder by kind: canonical sequence names and "seg".

    The kind is the last ``_`` or ``-`` separated part of the file name (``<case>_t1ce.nii.gz`` ->
    "t1gd"). Raises InputError for a folder without NIfTI files or two files of one kind.
    """
    files: dict[str, Path] = {}
    niftis = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
    if not niftis:
        raise InputError(folder, "no NIfTI files (.nii/.nii.gz): not a BraTS 2021 case folder")
    for path in niftis:
        token = re.split(r"[_-]", nifti_stem(path))[-1]
        kind = "seg" if token.lower() in SEGMENTATION_NAMES else canonical_sequence(token)
        if kind is None:
            log.debug("%s: not a known sequence, ignored", path)
            continue
        if kind in files:
            raise InputError(folder, f"two files for {kind}: {files[kind].name} and {path.name}")
        files[kind] = path
    return files


def is_brats2021_case(folder: Path) -> bool:
    """A folder holding at least one NIfTI named like a BraTS sequence (``*_flair.nii.gz`` ...)."""
    try:
        return any(kind != "seg" for kind in brats2021_files(folder))
    except InputError:
        return False


def read_brats2021_case(folder: Path, data: DataParams, *, require_labels: bool = False) -> Case:
    """One BraTS 2021 case folder -> Case (image [D, S, S, 3] of data.channels, labels 0/1/2/4).

    Reads only the sequences in data.channels plus the segmentation, concurrently. Without a
    segmentation file the labels are zeros and meta["has_labels"] is False, unless
    ``require_labels`` (ingest), which makes it an InputError.
    """
    folder = Path(folder)
    files = brats2021_files(folder)
    for sequence in data.channels:
        if sequence not in files:
            raise InputError(folder, f"missing sequence {sequence}: no <case>_{_SPELLINGS[sequence]}.nii.gz file")
    has_seg = "seg" in files
    if require_labels and not has_seg:
        raise InputError(folder, "missing segmentation: no <case>_seg.nii.gz file")
    wanted = list(dict.fromkeys(data.channels)) + (["seg"] if has_seg else [])
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        loaded = dict(zip(wanted, pool.map(lambda kind: load_canonical(files[kind], 3), wanted), strict=True))
    reference = loaded[data.channels[0]]
    for kind in wanted:
        _check_same_grid(loaded[kind], reference)
    labels = check_labels(loaded["seg"].data, tuple(BRATS2021_LABELS), files["seg"]) if has_seg else None
    return volume_case(
        patient_id=folder.name,
        source="brats2021",
        channels={sequence: loaded[sequence].data for sequence in data.channels},
        labels=labels,
        reference=reference,
        data=data,
        label_names=BRATS2021_LABELS,
        meta={"path": str(folder), "files": {kind: str(files[kind]) for kind in wanted}},
    )


# --- Decathlon --------------------------------------------------------------------------------

def load_dataset_json(path: Path) -> dict[str, Any]:
    """Parse a Decathlon dataset.json; InputError naming it when unreadable or without "modality"."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"not a readable dataset.json ({e})") from None
    modality = spec.get("modality", spec.get("channel_names")) if isinstance(spec, dict) else None
    if not isinstance(modality, dict) or not modality or not all(str(k).isdigit() for k in modality):
        raise InputError(path, 'no "modality" mapping of channel index -> sequence name')
    return spec


def decathlon_channels(spec: Mapping[str, Any]) -> list[str | None]:
    """Canonical sequence name per 4D channel index from dataset.json "modality" (None: unknown)."""
    modality = spec.get("modality", spec.get("channel_names"))
    names = {int(index): str(name) for index, name in modality.items()}
    return [canonical_sequence(names[i]) if i in names else None for i in range(max(names) + 1)]


def decathlon_label_names(spec: Mapping[str, Any]) -> dict[int, str]:
    """Label value -> name from dataset.json "labels" ({"0": "background"} or {"background": 0})."""
    labels = spec.get("labels", DECATHLON_DEFAULT_LABELS)
    out: dict[int, str] = {}
    for key, value in labels.items():
        if str(key).isdigit():
            out[int(key)] = str(value)
        elif isinstance(value, int):
            out[value] = str(key)
    return out


def decathlon_pairs(root: Path) -> list[tuple[Path | None, Path | None]]:
    """(image, label) file pairs of a Decathlon root matched by file name; None where one is missing."""
    images = {p.name: p for p in _niftis(root / "imagesTr")}
    labels = {p.name: p for p in _niftis(root / "labelsTr")}
    return [(images.get(name), labels.get(name)) for name in sorted(images.keys() | labels.keys())]


def _niftis(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p)) if folder.is_dir() else []


def read_decathlon_case(
    image_path: Path,
    data: DataParams,
    label_path: Path | None = None,
    dataset_json: Path | Mapping[str, Any] | None = None,
) -> Case:
    """One Decathlon 4D image (+ optional label map) -> Case.

    dataset_json: a path, the parsed dict, or None to look for ``dataset.json`` two folders up
    (``<root>/imagesTr/<name>``) and fall back to Task01's channel order. Without ``label_path`` the
    labels are zeros and meta["has_labels"] is False.
    """
    image_path = Path(image_path)
    spec = _dataset_spec(image_path, dataset_json)
    sequences = decathlon_channels(spec)
    label_names = decathlon_label_names(spec)
    for sequence in data.channels:
        if sequence not in sequences:
            raise InputError(image_path, f"missing sequence {sequence}: dataset.json modality lists "
                                         f"{[s for s in sequences if s]}")
    jobs = [(image_path, 4)] + ([(Path(label_path), 3)] if label_path is not None else [])
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        loaded = list(pool.map(lambda job: load_canonical(*job), jobs))
    image = loaded[0]
    if image.data.shape[3] != len(sequences):
        raise InputError(image_path, f"4D image has {image.data.shape[3]} channels, dataset.json declares {len(sequences)}")
    labels = None
    if label_path is not None:
        _check_same_grid(loaded[1], image)
        labels = check_labels(loaded[1].data, tuple(label_names), Path(label_path))
    files = {"image": str(image_path)} | ({"labels": str(label_path)} if label_path is not None else {})
    return volume_case(
        patient_id=nifti_stem(image_path),
        source="decathlon",
        channels={sequence: image.data[..., sequences.index(sequence)] for sequence in data.channels},
        labels=labels,
        reference=image,
        data=data,
        label_names=label_names,
        meta={"path": str(image_path), "files": files},
    )


def _dataset_spec(image_path: Path, dataset_json: Path | Mapping[str, Any] | None) -> Mapping[str, Any]:
    if isinstance(dataset_json, Mapping):
        return dataset_json
    if dataset_json is not None:
        return load_dataset_json(Path(dataset_json))
    candidate = image_path.parent.parent / "dataset.json"
    if candidate.is_file():
        return load_dataset_json(candidate)
    log.warning("%s: no dataset.json found; assuming Task01 channels %s", image_path, DECATHLON_DEFAULT_MODALITY)
    return {"modality": DECATHLON_DEFAULT_MODALITY, "labels": DECATHLON_DEFAULT_LABELS}
