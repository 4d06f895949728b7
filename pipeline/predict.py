"""Prediction on new scans: the trained cascade on any input the readers understand.

``Predictor`` loads the classifier and segmenter once (``Predictor.from_dir("models")``) and runs the
same classifier-gated cascade as ``evaluate`` (``pipeline.cascade``) on as many cases as you like:

- ``predict_volume(images)``: uint8 [D, S, S, 3] slices -> probabilities, gate and mask arrays;
- ``predict_case(case)``: a ``Case`` from any reader -> ``Prediction``;
- ``predict_path(path, out_dir)``: a kaggle_3m TIFF slice or case folder, a BraTS 2021 case folder,
  a Decathlon 4D NIfTI, or a folder holding several of these (searched up to 3 levels down) -> files
  under ``out_dir/<case id>/`` and a list of per-case summaries (a case that fails is listed, the
  others still finish).

Outputs per case (``out_dir/<case id>/``, each folder written atomically):

- volumes: ``<case id>_mask.nii.gz``, uint8 0/1 in the input's own voxel grid (shape, affine and
  header copied from the input scan, so it overlays in 3D Slicer / ITK-SNAP);
- kaggle_3m TIFFs: ``<case>_<n>_mask.tif`` per slice, uint8 0/255 at the input slice's own size;
- ``overlays/slice_<n>.png``: FLAIR with the predicted outline (magenta; the reference mask in green
  when the input has one), for every slice with predicted tumour;
- ``summary.json``: see ``Predictor.write_case``.

Image size and channels come from the models' sidecar JSON; the volume readers' intensity clipping
(``data.clip_percentiles``) and the cascade's post-processing (``evaluate.min_component_px``,
``evaluate.keep_largest_component``) from params.yaml when present. Every slice of a volume is kept
(``min_brain_fraction`` 0): the mask covers the whole scan. Slices without a single non-zero pixel
(no brain) are not run through the models: probability 0, empty mask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import nibabel as nib
import numpy as np
import tifffile
from tqdm import tqdm

from pipeline.cascade import Cascade, PostProcessing, combine
from pipeline.case import LGG_CHANNELS, SEQUENCES, Case
from pipeline.errors import InputError, PipelineError
from pipeline.explain import overlay_png
from pipeline.params import DataParams, load_params
from pipeline.paths import CLASSIFIER, EVAL_DIR, MODELS_DIR, SEGMENTER
from pipeline.sources import (
    detect_layout,
    read_brats2021_case,
    read_decathlon_case,
    read_lgg_case,
    read_lgg_slice,
    to_scan_space,
)
from pipeline.sources.lgg import read_tiff, slice_files
from pipeline.sources.volume import is_nifti
from pipeline.training import load_sidecar
from pipeline.writing import atomic_dir, atomic_path

log = logging.getLogger(__name__)

THRESHOLD_JSON = EVAL_DIR / "threshold.json"
DEFAULT_CLIP_PERCENTILES = (0.5, 99.5)
CASE_LAYOUTS = ("lgg_slice", "lgg_case", "brats2021_case", "decathlon_file")
VOLUME_LAYOUTS = ("brats2021_case", "decathlon_file")


# ------------------------------------------------------------------------------------------- results


@dataclass
class Prediction:
    """The cascade's output for one case, at the models' resolution S (the case's stored slices).

    probabilities: float32 [D] tumour probability per slice (0 for blank slices);
    gated: bool [D] slices sent to the segmenter (probability >= threshold);
    mask: bool [D, S, S] predicted tumour after post-processing;
    blank: bool [D] slices without any non-zero pixel, not run through the models.
    """

    case: Case
    probabilities: np.ndarray
    gated: np.ndarray
    mask: np.ndarray
    blank: np.ndarray
    threshold: float

    @property
    def case_id(self) -> str:
        return self.case.patient_id

    @property
    def tumour_present(self) -> bool:
        """True when the cascade delineated any tumour pixel."""
        return bool(self.mask.any())

    @property
    def max_probability(self) -> float:
        return float(self.probabilities.max()) if len(self.probabilities) else 0.0

    @property
    def slices_with_tumour(self) -> list[int]:
        """Slice numbers (``case.slice_numbers``) whose predicted mask is not empty."""
        return [int(n) for n in np.asarray(self.case.slice_numbers)[self.mask.any(axis=(1, 2))]]


@dataclass(frozen=True)
class InputItem:
    """One case to predict: its path and layout (one of CASE_LAYOUTS), or why it cannot be one."""

    path: Path
    layout: str | None
    dataset_json: Path | None = None  # Decathlon: the task's dataset.json, when known
    error: InputError | None = None


# ------------------------------------------------------------------------------------------- predictor


@dataclass
class Predictor:
    """A loaded cascade plus what reading new scans for it needs (image size, channels, clipping)."""

    cascade: Cascade
    data: DataParams  # image_size and channels of the models; clip_percentiles; min_brain_fraction 0
    model_files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, models_dir: str | Path = MODELS_DIR, threshold: float | None = None,
                 threshold_json: str | Path | None = THRESHOLD_JSON, *, classifier: str | Path | None = None,
                 segmenter: str | Path | None = None, params: str | Path | None = "params.yaml",
                 batch_size: int = 16) -> Predictor:
        """Load ``<models_dir>/classifier.keras`` and ``segmenter.keras`` (or the given paths) with their
        sidecars; the threshold is ``threshold``, else the one ``evaluate`` saved in ``threshold_json``.

        ``params``: params.yaml for data.clip_percentiles and the evaluate post-processing (defaults
        when the file is absent or None). Raises InputError for missing models, sidecars or threshold,
        or models that disagree on input size or channels.
        """
        models_dir = Path(models_dir)
        classifier = Path(classifier) if classifier is not None else models_dir / CLASSIFIER.name
        segmenter = Path(segmenter) if segmenter is not None else models_dir / SEGMENTER.name
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise PipelineError(f"threshold {threshold} is outside [0, 1]")
        for path in (classifier, segmenter):
            if not path.is_file():
                raise InputError(path, "model file not found; train it with `dvc repro` or give its path")
        size, channels, intensity = _model_input(classifier, segmenter)
        clip, post = _params_for_prediction(params)
        if intensity.get("clip_percentiles"):
            clip = tuple(intensity["clip_percentiles"])  # the scaling the models were trained on
        data = DataParams(source="brats2021", root="", image_size=size, channels=channels, clip_percentiles=clip,
                          min_brain_fraction=0.0, on_error="fail", intensity=intensity.get("mode", "as_stored"))
        data.validate()
        cascade = Cascade.load(classifier, segmenter, threshold=threshold, threshold_json=threshold_json,
                               post=post, batch_size=batch_size)
        for path, model in ((classifier, cascade.classifier), (segmenter, cascade.segmenter)):
            if tuple(model.input_shape[1:4]) != (size, size, 3):
                raise InputError(path, f"model input {tuple(model.input_shape[1:])} does not match its sidecar "
                                       f"input_size {size} with 3 channels")
        log.info("loaded %s + %s: %d px, channels %s, threshold %.4f", classifier, segmenter, size,
                 ",".join(channels), cascade.threshold)
        return cls(cascade, data, {"classifier": str(classifier), "segmenter": str(segmenter)})

    @property
    def image_size(self) -> int:
        return self.data.image_size

    @property
    def channels(self) -> tuple[str, ...]:
        return self.data.channels

    @property
    def threshold(self) -> float:
        return self.cascade.threshold

    # --- arrays and cases ------------------------------------------------------------------------

    def predict_volume(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the cascade on one case's slices uint8 [D, S, S, 3] (channels in ``self.channels`` order).

        Returns probabilities float32 [D], gated bool [D], seg_probabilities float32 [D, S, S] (0 where
        not gated), mask bool [D, S, S] after post-processing, and blank bool [D] (slices with no
        non-zero pixel: not run through the models, probability 0).
        """
        images = np.asarray(images)
        size = self.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [D, {size}, {size}, 3]; got {images.dtype} {images.shape}")
        blank = ~images.reshape(len(images), -1).any(axis=1)
        # The cascade runs on the non-blank slices without post-processing; post-processing (3D) then
        # sees the whole volume, blank slices included, exactly as Cascade.predict_volume would.
        plain = dataclasses.replace(self.cascade, post=PostProcessing())
        found = plain.predict_volume(images[~blank])
        probabilities = np.zeros(len(images), np.float32)
        gated = np.zeros(len(images), bool)
        seg = np.zeros(images.shape[:3], np.float32)
        probabilities[~blank] = found["probabilities"]
        gated[~blank] = found["gated"]
        seg[~blank] = found["seg_probabilities"]
        mask = combine(seg, gated, self.cascade.seg_threshold, self.cascade.post)
        return {"probabilities": probabilities, "gated": gated, "seg_probabilities": seg, "mask": mask,
                "blank": blank}

    def predict_case(self, case: Case) -> Prediction:
        """The cascade on one Case read at the models' image size with the models' channels."""
        where = case.meta.get("path", case.patient_id)
        if tuple(case.channels) != self.channels:
            raise InputError(where, f"channels {','.join(case.channels)} do not match the models' "
                                    f"{','.join(self.channels)}")
        if case.image.shape[1:3] != (self.image_size, self.image_size):
            raise InputError(where, f"slices are {case.image.shape[1]}x{case.image.shape[2]}; the models take "
                                    f"{self.image_size}x{self.image_size} (read it with image_size={self.image_size})")
        out = self.predict_volume(case.image)
        return Prediction(case, out["probabilities"], out["gated"], out["mask"], out["blank"], self.threshold)

    # --- paths -----------------------------------------------------------------------------------

    def read(self, item: InputItem) -> Case:
        """Read one input item with the models' image size and channels; InputError naming the file."""
        if item.error is not None:
            raise item.error
        path = item.path
        if item.layout in ("lgg_slice", "lgg_case") and self.channels != LGG_CHANNELS:
            raise InputError(path, f"kaggle_3m TIFFs hold the channels {','.join(LGG_CHANNELS)} (fixed LGG order); "
                                   f"the models were trained on {','.join(self.channels)}")
        if item.layout == "lgg_slice":
            case = read_lgg_slice(path, self.image_size, intensity=self.data.intensity,
                                  clip_percentiles=self.data.clip_percentiles)
            return dataclasses.replace(case, patient_id=path.stem)  # one slice: its own output folder
        if item.layout == "lgg_case":
            return read_lgg_case(path, self.image_size, clinical={}, intensity=self.data.intensity,
                                 clip_percentiles=self.data.clip_percentiles)
        if item.layout == "brats2021_case":
            return read_brats2021_case(path, self.data)
        if item.layout == "decathlon_file":
            return read_decathlon_case(path, self.data, dataset_json=item.dataset_json)
        raise InputError(path, f"cannot predict on a {item.layout}")

    def predict_path(self, path: str | Path, out_dir: str | Path) -> list[dict[str, Any]]:
        """Predict every case in ``path`` and write each to ``out_dir/<case id>/``.

        Returns one dict per case in input order: the summary.json content ("status": "ok"), or
        {"status": "failed", "input", "error"} for a case that could not be read or predicted.
        Raises InputError only when ``path`` itself is unusable (missing, unrecognised, no cases).
        """
        items = find_inputs(Path(path))
        out_dir = Path(out_dir)
        results: list[dict[str, Any]] = []
        written: dict[str, str] = {}
        show_bar = len(items) > 1
        with _logs_above_the_bar(show_bar), ThreadPoolExecutor(1, thread_name_prefix="predict_read") as reader:
            bar = tqdm(total=len(items), desc="predict", unit="case", disable=not show_bar)
            for item, pending in zip(items, _prefetch(reader, self.read, items), strict=True):
                try:
                    case = pending.result()
                    if case.patient_id in written:
                        raise InputError(item.path, f"case id {case.patient_id} was already predicted from "
                                                    f"{written[case.patient_id]}")
                    prediction = self.predict_case(case)
                    summary = self.write_case(prediction, out_dir / case.patient_id, item)
                    written[case.patient_id] = str(item.path)
                    results.append(summary)
                except PipelineError as e:
                    log.error("failed: %s", e)
                    results.append({"status": "failed", "input": str(item.path), "error": str(e)})
                bar.update()
            bar.close()
        return results

    # --- writing ---------------------------------------------------------------------------------

    def write_case(self, p: Prediction, folder: Path, item: InputItem | None = None) -> dict[str, Any]:
        """Write one case's outputs into ``folder`` (replaced atomically) and return its summary.

        summary.json: case_id, input, layout, source, status "ok", tumour_present (any predicted tumour
        pixel), classifier_positive (max_probability >= threshold), max_probability, threshold,
        seg_threshold, postprocessing, n_slices, slices_with_tumour (slice numbers), tumour_area_unit
        ("px" of the input slices), voxel_mm (input voxel size, null for TIFFs), tumour_volume_ml (null
        without spacing), channels, image_size, model_files, outputs (file names in ``folder``), and
        slices: [{slice, probability, segmented, blank, tumour_px, tumour_mm2}] per slice.
        """
        case = p.case
        layout = item.layout if item is not None else ("lgg_case" if case.geometry is None else case.source)
        with atomic_dir(folder) as tmp:
            if case.geometry is not None:
                outputs, area_px, pixel_mm2, voxel_mm = _write_nifti(p, tmp)
            else:
                outputs, area_px = _write_tiff_masks(p, tmp)
                pixel_mm2, voxel_mm = None, None
            overlays = _write_overlays(p, tmp / "overlays")
            tumour_slices = p.slices_with_tumour
            summary = {
                "case_id": p.case_id,
                "input": str(item.path) if item is not None else case.meta.get("path"),
                "layout": layout,
                "source": case.source,
                "status": "ok",
                "tumour_present": p.tumour_present,
                "classifier_positive": bool(p.max_probability >= p.threshold),
                "max_probability": p.max_probability,
                "threshold": p.threshold,
                "seg_threshold": self.cascade.seg_threshold,
                "postprocessing": dataclasses.asdict(self.cascade.post),
                "n_slices": len(case.slice_numbers),
                "slices_with_tumour": tumour_slices,
                "tumour_area_unit": "px",
                "voxel_mm": voxel_mm,
                "tumour_volume_ml": (float(area_px.sum() * np.prod(voxel_mm) / 1000.0) if voxel_mm is not None
                                     else None),
                "channels": list(self.channels),
                "image_size": self.image_size,
                "model_files": self.model_files,
                "outputs": {**outputs, "overlays": [f"overlays/{name}" for name in overlays]},
                "slices": [
                    {"slice": int(n), "probability": float(prob), "segmented": bool(g), "blank": bool(b),
                     "tumour_px": int(px), "tumour_mm2": float(px * pixel_mm2) if pixel_mm2 is not None else None}
                    for n, prob, g, b, px in zip(case.slice_numbers, p.probabilities, p.gated, p.blank, area_px,
                                                 strict=True)
                ],
            }
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        volume = f", {summary['tumour_volume_ml']:.2f} ml" if summary["tumour_volume_ml"] is not None else ""
        log.info("%s: %s (max p %.3f, threshold %.3f), %d of %d slices with tumour%s -> %s", p.case_id,
                 "TUMOUR" if p.tumour_present else "no tumour", p.max_probability, p.threshold,
                 len(tumour_slices), len(case.slice_numbers), volume, folder)
        return summary


# ------------------------------------------------------------------------------------------- inputs


def find_inputs(path: Path) -> list[InputItem]:
    """The cases under ``path``: itself when it is one case, else what its folders hold, searched up to
    MAX_DEPTH levels down (kaggle_3m roots, BraTS 2021 roots, Decathlon task folders, folders of
    these). A file or folder that is no readable case becomes an item carrying its error, so the other
    cases still run. InputError when ``path`` is missing or holds no case at all."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    try:
        layout = detect_layout(path)
    except InputError:
        if not path.is_dir():
            raise
        layout = None
    if layout in CASE_LAYOUTS:
        return [InputItem(path, layout)]
    items = _decathlon_items(path) if layout == "decathlon_root" else _items_in(path, 1)
    if not items:
        raise InputError(path, "no cases found: expected kaggle_3m slices or case folders, BraTS 2021 case "
                               "folders or Decathlon 4D NIfTI files")
    return items


MAX_DEPTH = 3


def _items_in(folder: Path, depth: int) -> list[InputItem]:
    return [item for child in sorted(folder.iterdir()) for item in _child_items(child, depth)]


def _child_items(child: Path, depth: int) -> list[InputItem]:
    if child.name.startswith(".") or not (child.is_dir() or is_nifti(child)):
        return []  # data.csv, README files, macOS junk
    try:
        layout = detect_layout(child)
    except InputError as e:
        found = _items_in(child, depth + 1) if child.is_dir() and depth < MAX_DEPTH else []
        return found or [InputItem(child, None, error=e)]
    if layout in CASE_LAYOUTS:
        return [InputItem(child, layout)]
    if layout == "decathlon_root":
        return _decathlon_items(child)
    found = _items_in(child, depth + 1) if depth < MAX_DEPTH else []  # a folder of cases
    return found or [InputItem(child, None, error=InputError(child, f"no cases found ({layout} too deep)"))]


def _decathlon_items(root: Path) -> list[InputItem]:
    spec = root / "dataset.json"
    files = [p for sub in ("imagesTr", "imagesTs") if (root / sub).is_dir()
             for p in sorted((root / sub).iterdir()) if p.is_file() and is_nifti(p)]
    return [InputItem(p, "decathlon_file", spec if spec.is_file() else None) for p in files]


class _AboveTheBar:
    """A text stream that writes through ``tqdm.write``, so log lines do not break a progress bar."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def _logs_above_the_bar(enabled: bool) -> Iterator[None]:
    """Route the root logger's console handlers through tqdm.write while a progress bar is shown."""
    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler] if enabled else []
    streams = [h.setStream(_AboveTheBar(h.stream)) for h in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)


def _prefetch(pool: ThreadPoolExecutor, read: Any, items: list[InputItem]) -> Iterator[Future]:
    """Futures of read(item) in order, the next one submitted before the current one is handed out."""
    pending = pool.submit(read, items[0]) if items else None
    for i in range(len(items)):
        current = pending
        pending = pool.submit(read, items[i + 1]) if i + 1 < len(items) else None
        yield current


# ------------------------------------------------------------------------------------------- models


def _model_input(classifier: Path, segmenter: Path) -> tuple[int, tuple[str, ...], dict[str, Any]]:
    """(input_size, channels, intensity) the two sidecars agree on; InputError naming the sidecar otherwise.
    Sidecars written before the intensity record read as {"mode": "as_stored"}."""
    found = []
    for path in (classifier, segmenter):
        sidecar = load_sidecar(path)
        where = path.with_suffix(".json")
        size, channels = sidecar.get("input_size"), sidecar.get("channels")
        if not isinstance(size, int) or not isinstance(channels, list) or len(channels) != 3 \
                or any(c not in SEQUENCES for c in channels):
            raise InputError(where, f"needs input_size (pixels) and 3 channels from {SEQUENCES}; "
                                    f"got input_size={size!r}, channels={channels!r}")
        found.append((size, tuple(channels), sidecar.get("intensity") or {"mode": "as_stored"}))
    if found[0][2] != found[1][2]:
        raise InputError(segmenter.with_suffix(".json"), f"segmenter was trained on intensities {found[1][2]} but the "
                                                         f"classifier on {found[0][2]}")
    if found[0][:2] != found[1][:2]:
        raise InputError(segmenter.with_suffix(".json"), f"segmenter takes {found[1][0]} px {','.join(found[1][1])} "
                                                         f"but the classifier {found[0][0]} px {','.join(found[0][1])}")
    return found[0]


def _params_for_prediction(path: str | Path | None) -> tuple[tuple[float, float], PostProcessing]:
    """data.clip_percentiles and the evaluate post-processing from params.yaml; defaults without it."""
    if path is None or not Path(path).is_file():
        return DEFAULT_CLIP_PERCENTILES, PostProcessing()
    params = load_params(path)
    post = PostProcessing(params.evaluate.min_component_px, params.evaluate.keep_largest_component)
    return params.data.clip_percentiles, post


# ------------------------------------------------------------------------------------------- writers


def _write_nifti(p: Prediction, folder: Path) -> tuple[dict[str, str], np.ndarray, float, list[float]]:
    """The mask in the input's voxel grid with the input's header: (outputs, tumour px per slice [D],
    mm² per pixel of an axial slice, voxel size [3] mm along the file's axes)."""
    case, geometry = p.case, p.case.geometry
    files = case.meta.get("files", {})
    reference = Path(files.get("image") or files[case.channels[0]])
    scan = to_scan_space(p.mask.astype(np.uint8), geometry)  # [X, Y, Z] in the file's own orientation
    affine = np.asarray(geometry["affine"], dtype=float)
    header = nib.load(reference).header.copy()
    image = nib.Nifti1Image(scan, affine, header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_intent("none")
    image.header["cal_min"], image.header["cal_max"] = 0, 1
    image.header["descrip"] = b"tumour mask 0/1 (python -m pipeline predict)"
    name = f"{p.case_id}_mask.nii.gz"
    nib.save(image, folder / name)

    # Tumour voxels per axial slice, in the case's slice order: the file axis that became canonical z.
    orientation = np.asarray(geometry["orientation"], dtype=int)
    z_axis = int(np.flatnonzero(orientation[:, 0] == 2)[0])
    in_plane = tuple(a for a in range(3) if a != z_axis)
    per_z = scan.sum(axis=in_plane, dtype=np.int64)
    if orientation[z_axis, 1] < 0:
        per_z = per_z[::-1]
    voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    pixel_mm2 = float(voxel_mm[in_plane[0]] * voxel_mm[in_plane[1]])
    return {"mask": name}, per_z[np.asarray(case.slice_numbers, dtype=int)], pixel_mm2, voxel_mm.tolist()


def _write_tiff_masks(p: Prediction, folder: Path) -> tuple[dict[str, Any], np.ndarray]:
    """kaggle_3m masks ``<case>_<n>_mask.tif`` (uint8 0/255) at each input slice's own size (nearest
    neighbour from the models' size): (outputs, tumour px per slice [D])."""
    source = Path(p.case.meta["path"])
    if source.is_file():
        paths = {int(p.case.slice_numbers[0]): source}
    else:
        numbers, images, _ = slice_files(source)
        paths = dict(zip(numbers, images, strict=True))
    names, area = [], np.zeros(len(p.mask), np.int64)
    for k, n in enumerate(p.case.slice_numbers):
        image_path = paths[int(n)]
        height, width = _tiff_shape(image_path)
        mask = p.mask[k].astype(np.uint8) * np.uint8(255)
        if mask.shape != (height, width):
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        area[k] = np.count_nonzero(mask)
        name = f"{image_path.stem}_mask{image_path.suffix}"
        tifffile.imwrite(folder / name, mask, photometric="minisblack", metadata=None)
        names.append(name)
    return {"masks": names}, area


def _tiff_shape(path: Path) -> tuple[int, int]:
    """(rows, cols) of a TIFF's first image, from its header when tifffile can parse it."""
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
    except (ValueError, OSError, IndexError, KeyError):
        shape = read_tiff(path).shape  # OpenCV could read it (the reader did); so can this
    return int(shape[0]), int(shape[1])


def _write_overlays(p: Prediction, folder: Path) -> list[str]:
    """FLAIR + predicted outline (and the reference mask when the input has one) per slice with tumour."""
    channels = list(p.case.channels)
    flair = channels.index("flair") if "flair" in channels else len(channels) // 2
    truth = p.case.mask if p.case.meta.get("has_labels") else None
    names = []
    for k in np.flatnonzero(p.mask.any(axis=(1, 2))):
        n = int(p.case.slice_numbers[k])
        name = f"slice_{n:03d}.png"
        title = f"slice {n}  p={p.probabilities[k]:.2f}"
        overlay_png(p.case.image[k, ..., flair], None, truth[k] if truth is not None else None, folder / name,
                    title=title, pred_mask=p.mask[k])
        names.append(name)
    return names


def write_run_index(results: list[dict[str, Any]], path: Path) -> None:
    """One JSON list for a whole run, atomically: each case's summary without its per-slice list,
    or its failure {"status": "failed", "input", "error"}."""
    index = [{k: v for k, v in r.items() if k not in ("slices", "outputs")} for r in results]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=2))


__all__ = ["CASE_LAYOUTS", "InputItem", "Prediction", "Predictor", "find_inputs", "write_run_index"]
