"""Readers for the BraTS layouts: BraTS 2017-2021 and BraTS 2023 case folders, and the Medical Segmentation
Decathlon.

BraTS 2021 (and 2017, 2018): ``<root>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` (3D, one sequence a
file); sequence spellings such as t1gd, T1CE, t1c and seg/segm are accepted. Labels 0/1/2/4.
BraTS 2023: ``<root>/BraTS-GLI-xxxxx-xxx/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``, labels 0/1/2/3 (3: enhancing);
a case folder is 2023's when its files use the 2023 spellings t1n, t2w or t2f.
Every reader maps its edition's label numbers to the pipeline's regions (``pipeline.data.regions``) at once.
Decathlon (Task01_BrainTumour): ``<root>/dataset.json``, ``imagesTr/<name>.nii.gz`` (4D, last axis
= the channels named in dataset.json "modality") and ``labelsTr/<name>.nii.gz``; label values and
names come from dataset.json "labels". Files starting with "._" (macOS junk) are ignored.

Both become Cases through ``pipeline.data.sources.volume`` (same orientation, slicing, normalisation),
so one scan stored in either layout gives identical image slices, and predictions of either go back
as a NIfTI mask in the input's voxel grid (``write_volume_mask``). ``BRATS2021`` and ``DECATHLON``
(end of the file) declare the two layouts to the registry.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.data.case import Case
from pipeline.data.regions import label_table, to_region_labels
from pipeline.data.sources.files import check_file, is_ignored, list_folder
from pipeline.data.sources.layout import CaseReader, Layout, check_labels_mode
from pipeline.data.sources.volume import (
    CanonicalVolume,
    canonical_sequence,
    check_labels,
    check_same_grid,
    is_nifti,
    load_canonical,
    nifti_ndim,
    nifti_stem,
    volume_case,
    write_volume_mask,
)
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError

log = logging.getLogger(__name__)

BRATS2021_LABELS = {
    0: "background",
    1: "necrotic / non-enhancing tumour core",
    2: "peritumoral edema",
    4: "enhancing tumour",
}
BRATS2023_LABELS = {
    0: "background",
    1: "necrotic tumour core",
    2: "peritumoral edema",
    3: "enhancing tumour",
}
# File-name tokens that only BraTS 2023 uses (its t1c is also a 2021 spelling of t1ce).
BRATS2023_TOKENS = ("t1n", "t2w", "t2f")
_EDITION_LABELS = {"brats2021": BRATS2021_LABELS, "brats2023": BRATS2023_LABELS}
SEGMENTATION_NAMES = ("seg", "segm", "segmentation", "label", "labels")
# Task01_BrainTumour's channels, used only for a lone 4D file without a dataset.json.
DECATHLON_DEFAULT_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
DECATHLON_DEFAULT_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
# File-name spelling of each canonical sequence, for error messages.
_SPELLINGS = {"t1": "t1", "t1gd": "t1ce (or t1gd)", "t2": "t2", "flair": "flair"}


# --- BraTS 2021 -------------------------------------------------------------------------------

def brats2021_files(folder: Path) -> dict[str, Path]:
    """The NIfTI files of a BraTS 2021 case folder by kind: canonical sequence names and "seg".

    The kind is the last ``_`` or ``-`` separated part of the file name (``<case>_t1ce.nii.gz`` ->
    "t1gd"). Raises InputError for a folder without NIfTI files or two files of one kind.
    """
    files: dict[str, Path] = {}
    # Broken entries (dangling links, folders named *.nii.gz) are listed: reading one names what is wrong.
    niftis = [p for p in list_folder(folder) if is_nifti(p) and not is_ignored(p)]
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


def is_brats2023_case(folder: Path) -> bool:
    """A BraTS case folder whose files use the 2023 spellings (``<case>-t2f.nii.gz`` ...)."""
    try:
        files = brats2021_files(folder)
    except InputError:
        return False
    tokens = {re.split(r"[_-]", nifti_stem(path))[-1].lower() for path in files.values()}
    return any(kind != "seg" for kind in files) and bool(tokens & set(BRATS2023_TOKENS))


def read_brats2021_case(folder: Path, task: TaskSpec, min_brain_fraction: float, *, require_labels: bool = False,
                        on_bad_labels: str = "fail", edition: str = "brats2021") -> Case:
    """One BraTS case folder -> Case (image [D, S, S, 3] of task.channels, labels: the pipeline's region map
    of the edition's labels, 0/1/2/4 for "brats2021", 0/1/2/3 for "brats2023"), the axial slices with a
    brain fraction >= ``min_brain_fraction`` (see ``volume_case``).

    Reads only the sequences in task.channels plus the segmentation, concurrently. Without a
    segmentation file the labels are zeros and meta["has_labels"] is False, unless
    ``require_labels`` (ingest), which makes it an InputError. on_bad_labels "warn" (prediction) reads
    the case without labels when the segmentation is unreadable, off-grid or holds unknown values,
    with a warning naming it; "fail" makes that an InputError.
    """
    folder = Path(folder)
    files = brats2021_files(folder)
    for sequence in task.channels:
        if sequence not in files:
            raise InputError(folder, f"missing sequence {sequence}: no <case>_{_SPELLINGS[sequence]}.nii.gz file")
    has_seg = "seg" in files
    if require_labels and not has_seg:
        raise InputError(folder, "missing segmentation: no <case>_seg.nii.gz file")
    wanted = list(dict.fromkeys(task.channels)) + (["seg"] if has_seg else [])
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        pending = {kind: pool.submit(_load, files[kind], 3) for kind in wanted}
    loaded = {kind: pending[kind].result() for kind in wanted if kind != "seg"}
    reference = loaded[task.channels[0]]
    for volume in loaded.values():
        check_same_grid(volume, reference)
    labels = None
    if has_seg:
        try:
            seg = pending["seg"].result()
            check_same_grid(seg, reference)
            labels = to_region_labels(check_labels(seg.data, (0, *label_table(edition)), files["seg"]), edition)
        except InputError as e:
            if on_bad_labels != "warn":
                raise
            log.warning("%s: %s; %s is read without its segmentation", e.path, e.problem, folder.name)
            wanted.remove("seg")
    return volume_case(
        patient_id=folder.name,
        source=edition,
        channels={sequence: loaded[sequence].data for sequence in task.channels},
        labels=labels,
        reference=reference,
        task=task,
        min_brain_fraction=min_brain_fraction,
        label_names=_EDITION_LABELS[edition],
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
    labels = spec.get("labels", DECATHLON_DEFAULT_LABELS)
    if not isinstance(labels, dict) or not all(
            (str(k).isdigit() and int(k) < 256) or (isinstance(v, int) and 0 <= v < 256) for k, v in labels.items()):
        raise InputError(path, '"labels" must map label values 0..255 to names ({"0": "background", ...})')
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
    return [p for p in list_folder(folder) if is_nifti(p) and not is_ignored(p)] if folder.is_dir() else []


def _load(path: Path, ndim: int) -> CanonicalVolume:
    """``load_canonical`` of a regular file; InputError naming a dangling link, FIFO, folder ... first."""
    check_file(path)
    return load_canonical(path, ndim)


def read_decathlon_case(
    image_path: Path,
    task: TaskSpec,
    min_brain_fraction: float,
    label_path: Path | None = None,
    dataset_json: Path | Mapping[str, Any] | None = None,
) -> Case:
    """One Decathlon 4D image (+ optional label map) -> Case; task and min_brain_fraction as for
    ``read_brats2021_case``.

    dataset_json: a path, the parsed dict, or None to look for ``dataset.json`` two folders up
    (``<root>/imagesTr/<name>``) and fall back to Task01's channel order. Without ``label_path`` the
    labels are zeros and meta["has_labels"] is False.
    """
    image_path = Path(image_path)
    spec = _dataset_spec(image_path, dataset_json)
    sequences = decathlon_channels(spec)
    label_names = decathlon_label_names(spec)
    for sequence in task.channels:
        if sequence not in sequences:
            raise InputError(image_path, f"missing sequence {sequence}: dataset.json modality lists "
                                         f"{[s for s in sequences if s]}")
    jobs = [(image_path, 4)] + ([(Path(label_path), 3)] if label_path is not None else [])
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        loaded = list(pool.map(lambda job: _load(*job), jobs))
    image = loaded[0]
    if image.data.shape[3] != len(sequences):
        raise InputError(image_path, f"4D image has {image.data.shape[3]} channels, dataset.json declares {len(sequences)}")
    labels = None
    if label_path is not None:
        check_same_grid(loaded[1], image)
        labels = to_region_labels(check_labels(loaded[1].data, (0, *label_table("decathlon")), Path(label_path)),
                                  "decathlon")
    files = {"image": str(image_path)} | ({"labels": str(label_path)} if label_path is not None else {})
    return volume_case(
        patient_id=nifti_stem(image_path),
        source="decathlon",
        channels={sequence: image.data[..., sequences.index(sequence)] for sequence in task.channels},
        labels=labels,
        reference=image,
        task=task,
        min_brain_fraction=min_brain_fraction,
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


# --- the two layouts: detect, list, read one case, write a prediction ---------------------------------

def brats_edition(folder: Path) -> str:
    """"brats2023" for a case folder with the 2023 file names, else "brats2021" (2017-2021 names)."""
    return "brats2023" if is_brats2023_case(folder) else "brats2021"


def detect_brats2023(path: Path) -> str | None:
    """"brats2023_case" (a folder of ``-t1n -t1c -t2w -t2f`` NIfTIs), "brats2023_root" (a folder of such
    folders) or None."""
    if not path.is_dir():
        return None
    if is_brats2023_case(path):
        return "brats2023_case"
    folders = [p for p in list_folder(path) if p.is_dir() and not is_ignored(p)]
    return "brats2023_root" if any(is_brats2023_case(p) for p in folders) else None


def detect_brats2021(path: Path) -> str | None:
    """"brats2021_case" (a folder of sequence NIfTIs), "brats2021_root" (a folder of such folders) or
    None. A single 3D NIfTI is an InputError: it is one sequence, and its case folder is the input."""
    if path.is_dir():
        if is_brats2021_case(path):
            return "brats2021_case"
        folders = [p for p in list_folder(path) if p.is_dir() and not is_ignored(p)]
        return "brats2021_root" if any(is_brats2021_case(p) for p in folders) else None
    if not is_nifti(path):
        return None
    ndim = nifti_ndim(path)
    if ndim == 4:
        return None  # a Decathlon image
    kinds = sorted(brats2021_files(path.parent))
    raise InputError(path, f"a {ndim}D NIfTI holds one sequence; give its case folder (found {kinds})")


def list_brats2021_cases(root: Path, task: TaskSpec, min_brain_fraction: float) -> list[tuple[Path, CaseReader]]:
    """Every case folder of a BraTS root (2017-2021 or 2023 file names), each read with its segmentation
    required and its own edition's label table (``brats_edition``)."""
    if is_brats2021_case(root):
        raise InputError(root, "this is one BraTS case folder; data.root must be the folder holding case folders")
    folders = [p for p in list_folder(root) if p.is_dir() and not is_ignored(p)]
    if not folders:
        raise InputError(root, "no BraTS case folders found (BraTS 2017-2021 or 2023)")
    return [(f, partial(read_brats2021_case, f, task, min_brain_fraction, require_labels=True, edition=brats_edition(f)))
            for f in folders]


def read_brats2021(path: Path, task: TaskSpec, *, min_brain_fraction: float, labels: str) -> Case:
    """One BraTS case folder -> Case, read with its edition's labels (``brats_edition``); as ``Layout.read`` says."""
    check_labels_mode(labels)
    required = labels == "required"
    return read_brats2021_case(path, task, min_brain_fraction, require_labels=required,
                               on_bad_labels="fail" if required else "warn", edition=brats_edition(Path(path)))


def detect_decathlon(path: Path) -> str | None:
    """"decathlon_root" (a folder with dataset.json or imagesTr/), "decathlon_file" (a 4D NIfTI) or None."""
    if path.is_dir():
        return "decathlon_root" if (path / "dataset.json").is_file() or (path / "imagesTr").is_dir() else None
    return "decathlon_file" if is_nifti(path) and nifti_ndim(path) == 4 else None


def list_decathlon_cases(root: Path, task: TaskSpec, min_brain_fraction: float) -> list[tuple[Path, CaseReader]]:
    """The imagesTr/ files of a Decathlon task folder, each read with its labelsTr/ file; an image or
    label without its partner is listed with a reader that raises InputError naming it."""
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
            readers.append((image, partial(read_decathlon_case, image, task, min_brain_fraction, label, spec)))
    return readers


def _raise(path: Path, problem: str) -> Case:
    raise InputError(path, problem)


def read_decathlon(path: Path, task: TaskSpec, *, min_brain_fraction: float, labels: str) -> Case:
    """One Decathlon 4D image -> Case, its dataset.json found two folders up. labels "required": with its
    ``labelsTr/`` file of the same name (InputError when there is none); "optional": with that file when it
    is there and valid (scored by predict), else the image alone, with a warning for a bad label map."""
    check_labels_mode(labels)
    path = Path(path)
    check_file(path)  # a dangling link or a FIFO named like a scan: say so (a FIFO would block)
    label = path.parent.parent / "labelsTr" / path.name
    if labels == "optional":
        if path.parent.name == "imagesTr" and label.is_file():
            try:
                return read_decathlon_case(path, task, min_brain_fraction, label)
            except InputError as e:
                if e.path != label:
                    raise
                log.warning("%s; %s is read without its label map", e, nifti_stem(path))
        return read_decathlon_case(path, task, min_brain_fraction)
    if not label.exists():
        raise InputError(path, "image without label (no labelsTr/ file of this name)")
    return read_decathlon_case(path, task, min_brain_fraction, label)


def decathlon_root_cases(root: Path) -> list[tuple[Path, str]]:
    """Every image of a Decathlon task folder for prediction: the imagesTr/ and imagesTs/ files."""
    return [(p, "decathlon_file") for sub in ("imagesTr", "imagesTs") if (root / sub).is_dir()
            for p in list_folder(root / sub) if is_nifti(p) and not is_ignored(p)]


BRATS2021 = Layout(
    name="brats2021",
    sources=("brats2021",),
    case_kinds=("brats2021_case",),
    root_kinds=("brats2021_root",),
    detect=detect_brats2021,
    list_cases=list_brats2021_cases,
    read=read_brats2021,
    write_prediction=write_volume_mask,
    folder_hint="BraTS NIfTI files or case folders",
    cases_hint="BraTS 2021 case folders",
)

BRATS2023 = Layout(
    name="brats2023",
    sources=("brats2023",),
    case_kinds=("brats2023_case",),
    root_kinds=("brats2023_root",),
    detect=detect_brats2023,
    list_cases=list_brats2021_cases,
    read=read_brats2021,
    write_prediction=write_volume_mask,
    folder_hint="BraTS 2023 case folders (-t1n -t1c -t2w -t2f)",
    cases_hint="BraTS 2023 case folders",
)

DECATHLON = Layout(
    name="decathlon",
    sources=("decathlon",),
    case_kinds=("decathlon_file",),
    root_kinds=("decathlon_root",),
    detect=detect_decathlon,
    list_cases=list_decathlon_cases,
    read=read_decathlon,
    write_prediction=write_volume_mask,
    folder_hint="dataset.json",
    file_hint="a 4D .nii.gz volume",
    cases_hint="Decathlon 4D NIfTI files",
    root_cases=decathlon_root_cases,
)
