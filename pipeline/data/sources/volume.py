"""Shared handling of 3D scans (BraTS 2021, Decathlon): load, reorient, normalise, slice, and back.

A volume becomes a ``Case`` in five steps, the same for every volume layout:

1. ``load_canonical``: read a NIfTI with nibabel and bring it to the closest canonical (RAS+)
   orientation with ``nibabel.as_closest_canonical``. The files of one case must share one voxel
   grid (``check_same_grid``: shape, orientation, spacing, origin); a label map is never moved
   onto its images by its own affine.
2. brain = any selected channel non-zero; ``normalise_volume`` rescales each channel over the
   brain voxels to uint8 (background stays 0).
3. axial slices: slice ``z`` of the case is ``vol[:, :, z]`` of the canonical array (rows = R axis,
   columns = A axis); slices with a brain fraction below ``min_brain_fraction`` are dropped.
4. ``fit_slices``: centred pad/crop to ``image_size`` when the size is close, resize otherwise.
5. ``Case.geometry`` records all of it, so ``to_scan_space`` can write a [D, H, W] prediction
   back into the scan's own voxel grid (``write_volume_mask``: the volume layouts' prediction writer).

Geometry dict (JSON-serialisable, stored in the slice store's patients.json)::

    affine           4x4 list: the scan's original affine (voxel -> world mm)
    shape            [X, Y, Z]: the scan's original spatial shape
    orientation      [[axis, flip], ...] per original array axis (nibabel ``io_orientation``):
                     original axis i becomes canonical axis ``axis``, reversed when flip == -1
    canonical_shape  [X, Y, Z] after reorientation
    kept_z           canonical z index of each stored slice, in stored order
    slice_shape      [rows, cols] of a canonical slice before fitting
    image_size       [rows, cols] of the stored slices
    fit              "pad_crop" or "resize"
    pad_before       [rows, cols] pixels padded (> 0) or cropped (< 0) before; "pad_crop" only
    pad_after        [rows, cols] the same after
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from nibabel.spatialimages import HeaderDataError

from pipeline.data.case import Case
from pipeline.data.sources.files import check_file
from pipeline.data.sources.layout import WrittenMask
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError

# nibabel prints its warnings (e.g. "pixdim[1,2,3] should be non-zero") on stderr through a handler of its
# own; without it they reach the pipeline's log once, as warnings naming nibabel.
logging.getLogger("nibabel.global").handlers.clear()

# Pad/crop (not resize) when the slice and the target size differ by at most this factor.
PAD_CROP_MAX_RATIO = 1.25
# How far the files of one case (images with each other, the label map with the images) may disagree
# on geometry before they are refused (``check_same_grid``), as nnU-Net's dataset integrity check refuses
# them: far above float32 round-off in NIfTI headers, far below anything visible.
GEOMETRY_SPACING_RTOL = 1e-3  # voxel size, relative (1 um on a 1 mm voxel)
GEOMETRY_DIRECTION_ATOL = 1e-3  # direction cosines, absolute (about 0.06 degrees)
GEOMETRY_ORIGIN_ATOL_MM = 1e-3  # origin (world position of voxel 0, 0, 0), mm

# Spellings of MRI sequence names (lower case, separators removed) -> canonical name.
_SEQUENCE_ALIASES = {
    "flair": "flair", "t2flair": "flair", "t2f": "flair",
    "t1": "t1", "t1w": "t1", "t1n": "t1", "t1pre": "t1", "t1native": "t1",
    "t1gd": "t1gd", "t1wgd": "t1gd", "t1ce": "t1gd", "t1wce": "t1gd", "t1c": "t1gd", "t1post": "t1gd",
    "t1contrast": "t1gd",
    "t2": "t2", "t2w": "t2",
}
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def canonical_sequence(name: str) -> str | None:
    """Canonical sequence name ("t1", "t1gd", "t2", "flair") for a spelling, e.g. "T1ce" -> "t1gd"; else None."""
    return _SEQUENCE_ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def is_nifti(path: Path) -> bool:
    """A .nii or .nii.gz file that is not macOS junk ("._*")."""
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")


def nifti_ndim(path: Path) -> int:
    """Number of axes of a NIfTI file, from its header; InputError naming it when it is no regular file
    (checked first: opening a FIFO would block) or no readable NIfTI."""
    if not path.is_file():
        check_file(path)
    try:
        return len(nib.load(path).shape)
    except NIFTI_ERRORS as e:
        raise InputError(path, f"not a readable NIfTI file ({e})") from None


def nifti_stem(path: Path) -> str:
    """File name without .nii / .nii.gz."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class CanonicalVolume:
    """A scan in canonical (RAS+) array order plus what is needed to undo the reorientation."""

    path: Path
    data: np.ndarray  # [X, Y, Z] or [X, Y, Z, C], canonical order, the file's (scaled) dtype
    affine: np.ndarray  # 4x4, original
    shape: tuple[int, ...]  # original spatial shape (3 values)
    orientation: np.ndarray  # [3, 2] nibabel io_orientation of the original affine
    spacing_mm: tuple[float, float, float]  # voxel size along canonical X, Y, Z


# What nibabel raises for a file that is no readable NIfTI (corrupt header, truncated or bad gzip data, a
# voxel type numpy cannot compare, a header asking for more memory than there is).
NIFTI_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError, TypeError, MemoryError)
# A brain MRI volume is tens of MB; a header claiming more than this is corrupt (or not a scan).
MAX_VOLUME_BYTES = 4 * 2**30


def load_canonical(path: Path, ndim: int) -> CanonicalVolume:
    """Read a NIfTI whose data has ``ndim`` dimensions (3 or 4) and reorient it to canonical RAS+.

    Raises InputError naming the file when it is unreadable, truncated, not ``ndim``-D or not finite.
    """
    try:
        image = nib.load(path, mmap=False)
        shape = image.shape
        if len(shape) == 4 and ndim == 3 and shape[3] == 1:
            image = image.slicer[..., 0]
            shape = image.shape
        if len(shape) != ndim:
            raise InputError(path, f"expected a {ndim}D image, got shape {tuple(shape)}")
        dtype = image.get_data_dtype()
        if dtype.kind not in "iuf" or dtype.fields is not None:
            raise InputError(path, f"voxel type {dtype} is not a real number (complex, RGB and structured "
                                   "NIfTIs are not scans this pipeline reads)")
        n_bytes = int(np.prod(shape, dtype=np.float64)) * max(dtype.itemsize, 4)
        if n_bytes > MAX_VOLUME_BYTES:
            raise InputError(path, f"header claims shape {tuple(shape)} ({n_bytes / 2**30:.1f} GiB in memory; "
                                   f"at most {MAX_VOLUME_BYTES / 2**30:.0f} GiB): not a brain MRI volume")
        canonical = nib.as_closest_canonical(image)
        data = np.asarray(canonical.dataobj)
    except InputError:
        raise
    except NIFTI_ERRORS as e:
        raise InputError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputError(path, "contains NaN or infinite values")
    zooms = np.sqrt((canonical.affine[:3, :3] ** 2).sum(axis=0))
    return CanonicalVolume(
        path=path,
        data=data,
        affine=np.asarray(image.affine, dtype=float),
        shape=tuple(int(s) for s in shape[:3]),
        orientation=io_orientation(image.affine),
        spacing_mm=(float(zooms[0]), float(zooms[1]), float(zooms[2])),
    )


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def geometry_differences(affine: np.ndarray, reference: np.ndarray) -> list[str]:
    """How two 4x4 voxel -> world (mm) affines differ beyond the GEOMETRY_* tolerances; [] when they agree.

    Compares orientation (direction cosines: the affine's 3x3 columns over their lengths),
    spacing (the column lengths, mm) and origin (world position of voxel (0, 0, 0), mm).
    """
    spacing, ref_spacing = (np.sqrt((a[:3, :3] ** 2).sum(axis=0)) for a in (affine, reference))
    directions = [a[:3, :3] / np.where(s > 0, s, 1) for a, s in ((affine, spacing), (reference, ref_spacing))]
    found = []
    turn = float(np.abs(directions[0] - directions[1]).max())
    if turn > GEOMETRY_DIRECTION_ATOL:
        axes = ["".join(nib.aff2axcodes(a)) for a in (affine, reference)]
        found.append(f"orientation {axes[0]} vs {axes[1]}" if axes[0] != axes[1]
                     else f"direction cosines differ by {turn:.2g}")
    if not np.allclose(spacing, ref_spacing, rtol=GEOMETRY_SPACING_RTOL, atol=0):
        found.append(f"spacing {_fmt(spacing)} vs {_fmt(ref_spacing)} mm")
    if np.abs(affine[:3, 3] - reference[:3, 3]).max() > GEOMETRY_ORIGIN_ATOL_MM:
        found.append(f"origin {_fmt(affine[:3, 3])} vs {_fmt(reference[:3, 3])} mm")
    return found


def check_same_grid(volume: CanonicalVolume, reference: CanonicalVolume) -> None:
    """InputError naming both files when ``volume`` (a label map, or another image of the case) does not
    lie on ``reference``'s voxel grid: another spatial shape, or orientation, spacing or origin beyond
    the GEOMETRY_* tolerances. Nothing is resampled or reoriented to make them fit."""
    if volume.shape != reference.shape:
        raise InputError(volume.path, f"shape {volume.shape} differs from {reference.path} {reference.shape}")
    found = geometry_differences(volume.affine, reference.affine)
    if found:
        raise InputError(volume.path, f"geometry differs from {reference.path}: {'; '.join(found)} (the files of "
                                      "one case must share one voxel grid; resample one onto the other)")


def check_labels(labels: np.ndarray, allowed: Sequence[int], path: Path) -> np.ndarray:
    """Label map as uint8 (same shape); InputError naming ``path`` when a value is not in ``allowed``."""
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise InputError(path, "label map has non-integer values")
    if labels.dtype != np.uint8:
        low, high = labels.min(), labels.max()
        if low < 0 or high > 255:
            raise InputError(path, f"label values {low}..{high} outside the declared set {sorted(allowed)}")
        labels = labels.astype(np.uint8)
    declared = np.zeros(256, bool)
    declared[list(allowed)] = True
    if not declared[labels].all():
        unexpected = sorted(set(np.unique(labels).tolist()) - set(allowed))
        raise InputError(path, f"unexpected label values {unexpected} (declared: {sorted(allowed)})")
    return labels


def intensity_record(mode: str, clip_percentiles: Sequence[float]) -> dict[str, Any]:
    """How a case's uint8 intensities were made, as stored in the slice store and model sidecars."""
    return {"mode": mode, "clip_percentiles": [float(p) for p in clip_percentiles] if mode == "per_volume" else None}


def normalise_volume(vol: np.ndarray, brain: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Robust per-volume rescaling of one channel to uint8 over brain voxels.

    vol: [X, Y, Z] intensities, any real dtype (any shape works, e.g. the [Z, Y, X] transpose);
    brain: bool, same shape; percentiles: (low, high) in percent (e.g. (0.5, 99.5)) of the brain
    voxels' intensities, the clipping range.
    Returns uint8, same shape: brain voxels mapped linearly low -> 0, high -> 255 (clipped),
    background 0. A channel that is constant over the brain, or a volume without brain,
    gives all zeros (no division by zero, no NaN).
    """
    out = np.zeros(vol.shape, np.uint8)
    values = vol[brain].astype(np.float32, copy=False)
    if values.size == 0:
        return out
    low, high = np.percentile(values, list(percentiles))
    if not high > low:
        return out
    scaled = (np.clip(values, low, high) - low) * np.float32(255.0 / (high - low))
    out[brain] = np.rint(scaled).astype(np.uint8)
    return out


def _pad_or_crop(arr: np.ndarray, before: Sequence[int], after: Sequence[int]) -> np.ndarray:
    """Pad (> 0) with zeros or crop (< 0) axes 1 and 2 of [D, H, W, ...] by the given amounts."""
    h, w = arr.shape[1:3]
    cropped = arr[
        :,
        max(-before[0], 0): h - max(-after[0], 0),
        max(-before[1], 0): w - max(-after[1], 0),
    ]
    widths = [(0, 0), (max(before[0], 0), max(after[0], 0)), (max(before[1], 0), max(after[1], 0))]
    widths += [(0, 0)] * (arr.ndim - 3)
    return np.pad(cropped, widths) if any(b or a for b, a in widths) else np.ascontiguousarray(cropped)


def _resize(arr: np.ndarray, shape: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize each [H, W(, C)] slice of [D, H, W(, C)] to ``shape`` (rows, cols)."""
    out = np.empty((len(arr), *shape, *arr.shape[3:]), arr.dtype)
    for i, one in enumerate(arr):
        out[i] = cv2.resize(one, (shape[1], shape[0]), interpolation=interpolation).reshape(out.shape[1:])
    return out


def _resize_nearest(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of axes 1, 2 of [D, H, W] to ``shape``, any dtype (cv2's index rule)."""
    rows = np.minimum((np.arange(shape[0]) * (arr.shape[1] / shape[0])).astype(int), arr.shape[1] - 1)
    cols = np.minimum((np.arange(shape[1]) * (arr.shape[2] / shape[1])).astype(int), arr.shape[2] - 1)
    return arr[:, rows][:, :, cols]


def fit_plan(slice_shape: tuple[int, int], image_size: int) -> dict[str, Any]:
    """How [rows, cols] slices become image_size x image_size: the geometry keys fit, pad_before, pad_after."""
    size = (image_size, image_size)
    close = all(max(n, s) / min(n, s) <= PAD_CROP_MAX_RATIO for n, s in zip(slice_shape, size, strict=True))
    plan: dict[str, Any] = {"slice_shape": list(slice_shape), "image_size": list(size)}
    if not close:
        return {**plan, "fit": "resize"}
    before = [(s - n) // 2 for n, s in zip(slice_shape, size, strict=True)]
    after = [s - n - b for n, s, b in zip(slice_shape, size, before, strict=True)]
    return {**plan, "fit": "pad_crop", "pad_before": before, "pad_after": after}


def fit_slices(image: np.ndarray, labels: np.ndarray, plan: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Apply a ``fit_plan`` to image uint8 [D, H, W, C] and labels uint8 [D, H, W] (INTER_AREA / NEAREST)."""
    if plan["fit"] == "pad_crop":
        return (_pad_or_crop(image, plan["pad_before"], plan["pad_after"]),
                _pad_or_crop(labels, plan["pad_before"], plan["pad_after"]))
    size = tuple(plan["image_size"])
    return _resize(image, size, cv2.INTER_AREA), _resize(labels, size, cv2.INTER_NEAREST)


def volume_case(
    patient_id: str,
    source: str,
    channels: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    reference: CanonicalVolume,
    task: TaskSpec,
    min_brain_fraction: float,
    label_names: Mapping[int, str],
    meta: Mapping[str, Any],
) -> Case:
    """Build a Case from canonical volumes.

    channels: sequence name -> [X, Y, Z] canonical intensities, in the order of the Case channels.
    labels: uint8 [X, Y, Z] canonical label map, or None (no ground truth: zeros, has_labels False).
    reference: the loaded volume whose affine/orientation the geometry records.
    task: the image size and the intensity clipping (``task.clip_percentiles``); min_brain_fraction: axial
    slices with a smaller fraction of non-zero voxels are dropped.
    """
    # Work on [Z, Y, X] views: nibabel arrays are Fortran-ordered, so these are the memory order
    # (about 10x faster than [X, Y, Z] for the element-wise steps).
    volumes_zyx = [vol.T for vol in channels.values()]
    brain = np.zeros(volumes_zyx[0].shape, bool)
    for vol in volumes_zyx:
        brain |= vol != 0
    brain_fraction = brain.mean(axis=(1, 2))  # [Z]
    kept_z = np.flatnonzero(brain_fraction >= min_brain_fraction)
    if kept_z.size == 0:
        raise InputError(meta["path"], f"no axial slice has a brain fraction >= {min_brain_fraction} "
                                       f"(largest: {brain_fraction.max():.3f})")
    slice_shape = (brain.shape[2], brain.shape[1])  # (X, Y): rows, cols of a canonical slice
    image = np.empty((len(kept_z), *slice_shape, len(volumes_zyx)), np.uint8)
    for c, vol in enumerate(volumes_zyx):
        image[..., c] = normalise_volume(vol, brain, task.clip_percentiles)[kept_z].transpose(0, 2, 1)
    has_labels = labels is not None
    label_slices = (np.ascontiguousarray(labels.T[kept_z].transpose(0, 2, 1)) if has_labels
                    else np.zeros(image.shape[:3], np.uint8))
    plan = fit_plan(slice_shape, task.image_size)
    image, label_slices = fit_slices(image, label_slices, plan)
    row_mm, col_mm, slice_mm = reference.spacing_mm
    if plan["fit"] == "resize":
        row_mm *= plan["slice_shape"][0] / plan["image_size"][0]
        col_mm *= plan["slice_shape"][1] / plan["image_size"][1]
    geometry = {
        "affine": reference.affine.tolist(),
        "shape": list(reference.shape),
        "orientation": reference.orientation.astype(int).tolist(),
        "canonical_shape": list(brain.shape[::-1]),
        "kept_z": kept_z.tolist(),
        **plan,
    }
    return Case(
        patient_id=patient_id,
        image=image,
        labels=label_slices,
        source=source,
        channels=tuple(channels),
        slice_numbers=kept_z,
        spacing_mm=(row_mm, col_mm, slice_mm),
        geometry=geometry,
        meta={**meta, "has_labels": has_labels, "label_names": dict(label_names),
              "intensity": intensity_record("per_volume", task.clip_percentiles)},
    )


def to_scan_space(masks: np.ndarray, geometry: Mapping[str, Any]) -> np.ndarray:
    """Write stored-slice predictions [D, H, W] back into the scan's own voxel grid.

    masks: [D, H, W] (any dtype), one per stored slice in ``geometry["kept_z"]`` order.
    Returns an array of the original scan shape [X, Y, Z] in the original orientation (save it
    with ``geometry["affine"]``); resizing is undone nearest-neighbour, dropped slices and
    cropped-away borders are 0.
    """
    kept_z = np.asarray(geometry["kept_z"], dtype=int)
    size = tuple(geometry["image_size"])
    if masks.ndim != 3 or masks.shape[0] != len(kept_z) or masks.shape[1:] != size:
        raise ValueError(f"masks must be [{len(kept_z)}, {size[0]}, {size[1]}], got {masks.shape}")
    slice_shape = tuple(geometry["slice_shape"])
    if geometry["fit"] == "pad_crop":
        slices = _pad_or_crop(masks, [-b for b in geometry["pad_before"]], [-a for a in geometry["pad_after"]])
    else:
        slices = _resize_nearest(masks, slice_shape)
    canonical = np.zeros(geometry["canonical_shape"], masks.dtype)
    canonical[:, :, kept_z] = np.moveaxis(slices, 0, 2)
    to_original = ornt_transform(axcodes2ornt("RAS"), np.asarray(geometry["orientation"], dtype=float))
    scan = np.ascontiguousarray(apply_orientation(canonical, to_original))
    if scan.shape != tuple(geometry["shape"]):
        raise ValueError(f"geometry is inconsistent: got {scan.shape}, expected {tuple(geometry['shape'])}")
    return scan


def write_volume_labels(case: Case, labels: np.ndarray, folder: Path) -> tuple[str, np.ndarray]:
    """``<case id>_labels.nii.gz`` in ``folder``: a label map uint8 [D, S, S] at the models' resolution (values in
    the input edition's own numbering, ``pipeline.data.regions.to_dataset_labels``) in the input's voxel grid
    and header, as ``write_volume_mask`` writes a mask. Returns the file name and the array [X, Y, Z] written."""
    files = case.meta.get("files", {})
    reference = Path(files.get("image") or files[case.channels[0]])
    scan = to_scan_space(np.asarray(labels, np.uint8), case.geometry)
    image = nib.Nifti1Image(scan, np.asarray(case.geometry["affine"], dtype=float), nib.load(reference).header.copy())
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_intent("label")
    image.header["cal_min"], image.header["cal_max"] = 0, int(scan.max())
    image.header["descrip"] = f"{case.source} labels (python -m pipeline predict)".encode()[:79]
    name = f"{case.patient_id}_labels.nii.gz"
    nib.save(image, folder / name)
    return name, scan


def write_volume_mask(case: Case, mask: np.ndarray, folder: Path) -> WrittenMask:
    """``<case id>_mask.nii.gz`` in ``folder``: mask bool [D, S, S] as uint8 0/1 in the input's voxel grid,
    with the input's header (shape, affine, orientation), so it overlays the scan in any viewer. Its
    tumour voxels per axial slice, in the case's slice order, and the file's voxel size come back."""
    geometry = case.geometry
    files = case.meta.get("files", {})
    reference = Path(files.get("image") or files[case.channels[0]])
    scan = to_scan_space(mask.astype(np.uint8), geometry)  # [X, Y, Z] in the file's own orientation
    affine = np.asarray(geometry["affine"], dtype=float)
    header = nib.load(reference).header.copy()
    image = nib.Nifti1Image(scan, affine, header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_intent("none")
    image.header["cal_min"], image.header["cal_max"] = 0, 1
    image.header["descrip"] = b"tumour mask 0/1 (python -m pipeline predict)"
    name = f"{case.patient_id}_mask.nii.gz"
    nib.save(image, folder / name)

    # Tumour voxels per axial slice, in the case's slice order: the file axis that became canonical z.
    orientation = np.asarray(geometry["orientation"], dtype=int)
    z_axis = int(np.flatnonzero(orientation[:, 0] == 2)[0])
    in_plane = tuple(a for a in range(3) if a != z_axis)
    per_z = scan.sum(axis=in_plane, dtype=np.int64)
    if orientation[z_axis, 1] < 0:
        per_z = per_z[::-1]
    voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return WrittenMask(outputs={"mask": name}, tumour_px=per_z[np.asarray(case.slice_numbers, dtype=int)],
                       pixel_mm2=float(voxel_mm[in_plane[0]] * voxel_mm[in_plane[1]]), voxel_mm=voxel_mm.tolist())
