"""Prediction on new scans: the trained cascade on any input the readers understand.

``Predictor`` loads the classifier and segmenter once (``Predictor.from_dir("models")``) and runs the
same classifier-gated cascade as ``evaluate`` (``pipeline.evaluation.cascade``) on as many cases as you like:

- ``predict_volume(images)``: uint8 [D, S, S, 3] slices -> probabilities, gate and mask arrays;
- ``predict_case(case)``: a ``Case`` from any reader -> ``Prediction``;
- ``predict_path(path, out_dir)``: a kaggle_3m TIFF slice or case folder, a BraTS case folder (2017-2021 or 2023),
  a Decathlon 4D NIfTI, or a folder holding several of these (searched up to 3 levels down) -> files
  under ``out_dir/<case id>/`` and a list of per-case summaries (a case that fails is listed, the
  others still finish).

Outputs per case (``out_dir/<case id>/``, each folder written atomically):

- volumes: ``<case id>_mask.nii.gz``, uint8 0/1 in the input's own voxel grid (shape, affine and
  header copied from the input scan, so it overlays in 3D Slicer / ITK-SNAP);
- kaggle_3m TIFFs: ``<case>_<n>_mask.tif`` per slice, uint8 0/255 at the input slice's own size;
- ``overlays/slice_<n>.png``: FLAIR with the predicted outline (magenta; the reference mask in green
  when the input has one), for every slice with predicted tumour; with one output per region, reference |
  prediction with a colour per region and a legend (``pipeline.evaluation.region_overlays``);
- a segmenter with one output per region (data.target "regions"), volumes: ``<case id>_labels.nii.gz``,
  the nested regions as a label map in the input's voxel grid and its edition's own label numbers
  (``write_regions``);
- ``summary.json``: see ``Predictor.write_case``; with ground truth in the input, its scores
  (``pipeline.evaluation.validation``), per region too;
- ``.pipeline-predict``: the marker that lets a later run replace this folder (no other folder is
  ever replaced, and no output folder may be, contain or lie inside an input).

Everything the cascade needs comes from the model bundle (``pipeline.evaluation.bundle``: image size, channels,
intensity scaling, gate threshold, post-processing), never from params.yaml. Every slice of a volume is kept
(``min_brain_fraction`` 0): the mask covers the whole scan. Slices without a single non-zero pixel
(no brain) are not run through the models: probability 0, empty mask.

Beside it: ``outputs`` (the output folder's safety checks and the run index), ``progress`` (the bar over
the cases, and reading the next case while one is predicted), ``discovery`` (what an input path holds).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.data.case import Case
from pipeline.data.regions import LABEL_TABLES, from_region_masks, region_mask, region_masks, to_dataset_labels
from pipeline.data.sources import registry
from pipeline.data.sources.volume import to_scan_space, write_volume_labels
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError, PipelineError, one_line
from pipeline.evaluation.bundle import read_bundle
from pipeline.evaluation.cascade import Cascade, combine, combine_regions, members
from pipeline.evaluation.explain import overlay_png
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.evaluation.region_overlays import region_overlay_png
from pipeline.evaluation.validation import score_case, score_regions
from pipeline.paths import MODELS_DIR
from pipeline.predict.discovery import InputItem, find_inputs
from pipeline.predict.outputs import (
    OUTPUT_MARKER,
    case_folder,
    check_output_dir,
    check_replaceable,
    files_read,
)
from pipeline.predict.progress import logs_above_the_bar, prefetch
from pipeline.writing import atomic_dir, check_no_overlap, json_text

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- results


@dataclass
class Prediction:
    """The cascade's output for one case, at the models' resolution S (the case's stored slices).

    probabilities: float32 [D] the gate's slice score per slice (the bundle's slice_score; 0 for blank slices);
    gated: bool [D] slices that pass the gate (probability >= threshold), the only ones with mask pixels;
    mask: bool [D, S, S] predicted tumour after post-processing;
    blank: bool [D] slices without any non-zero pixel, not run through the models;
    region_masks: bool [D, S, S, R] nested masks of ``regions`` (a segmenter with one output per region), else None.
    """

    case: Case
    probabilities: np.ndarray
    gated: np.ndarray
    mask: np.ndarray
    blank: np.ndarray
    threshold: float
    region_masks: np.ndarray | None = None
    regions: tuple[str, ...] = ()

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
    def called(self) -> np.ndarray:
        """bool [D]: the slices whose predicted mask is not empty (called tumour)."""
        return self.mask.any(axis=(1, 2))

    @property
    def slices_with_tumour(self) -> list[int]:
        """Slice numbers (``case.slice_numbers``) whose predicted mask is not empty."""
        return [int(n) for n in np.asarray(self.case.slice_numbers)[self.called]]


# ------------------------------------------------------------------------------------------- predictor


@dataclass
class Predictor:
    """A loaded cascade plus what reading new scans for it needs (image size, channels, intensity scaling)."""

    cascade: Cascade
    task: TaskSpec  # what the models take: the readers read every slice of a scan (min_brain_fraction 0) with it
    model_files: dict[str, str | list[str]] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, models_dir: str | Path = MODELS_DIR, threshold: float | None = None, *,
                 batch_size: int = 16) -> Predictor:
        """Load a model bundle (``pipeline.evaluation.bundle``): both models, the task spec, the gate threshold and
        post-processing, all from ``models_dir`` and nothing else. ``threshold`` overrides the bundle's
        gate. InputError naming the file for a missing or inconsistent bundle."""
        models_dir = Path(models_dir)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise PipelineError(f"threshold {threshold} is outside [0, 1]")
        bundle = read_bundle(models_dir)
        task = bundle.task
        # The model files cascade.json lists (several of a kind: cross-validation folds, their probabilities averaged).
        classifiers = [models_dir / name for name in bundle.classifiers]
        segmenters = [models_dir / name for name in bundle.segmenters]
        cascade = Cascade.load(classifiers, segmenters, threshold=bundle.threshold if threshold is None else threshold,
                               seg_threshold=bundle.seg_threshold, post=bundle.post, batch_size=batch_size,
                               slice_score=bundle.slice_score)
        size = task.image_size
        # A segmenter may take neighbouring slices as channels (2.5-D: 3 x (2n + 1); Cascade.load checked the count)
        seg_channels = members(cascade.segmenter)[0].input_shape[-1]
        loaded = [*((path, model, 3) for path, model in zip(classifiers, members(cascade.classifier))),
                  *((path, model, seg_channels) for path, model in zip(segmenters, members(cascade.segmenter)))]
        for path, model, channels in loaded:
            if tuple(model.input_shape[1:4]) != (size, size, channels):
                raise InputError(path, f"model input {tuple(model.input_shape[1:])} does not match its bundle's "
                                       f"image size {size} with {channels} channels")
        log.info("loaded %s (%s): %d px, channels %s, %s intensities, threshold %.4f on the %s score%s", models_dir,
                 bundle.format, size, ",".join(task.channels), task.intensity_mode, cascade.threshold, bundle.slice_score,
                 f", an ensemble of {len(classifiers)} fold models" if len(classifiers) > 1 else "")
        files = {kind: str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
                 for kind, paths in (("classifier", classifiers), ("segmenter", segmenters))}
        return cls(cascade, task, files)

    @property
    def image_size(self) -> int:
        return self.task.image_size

    @property
    def channels(self) -> tuple[str, ...]:
        return self.task.channels

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
        # The cascade scores the non-blank slices without post-processing (a 2.5-D segmenter's neighbours are
        # drawn from the whole volume, as in evaluate); post-processing (3D) then sees the whole volume, blank
        # slices included, exactly as Cascade.predict_volume would.
        plain = dataclasses.replace(self.cascade, post=PostProcessing())
        regions = self.task.regions
        several = len(regions) > 1  # one output per region: nested masks of every region (combine_regions)
        scored = np.flatnonzero(~blank)
        found = plain.predict_regions(images, regions, scored) if several else plain.predict_volume(images, scored)
        probabilities = np.zeros(len(images), np.float32)
        gated = np.zeros(len(images), bool)
        seg = np.zeros(images.shape[:3] + ((len(regions),) if several else ()), np.float32)
        probabilities[~blank] = found["probabilities"]
        gated[~blank] = found["gated"]
        seg[~blank] = found["seg_probabilities"]
        if several:
            region_masks = combine_regions(seg, gated, self.cascade.seg_threshold, regions, self.cascade.post)
            return {"probabilities": probabilities, "gated": gated, "seg_probabilities": seg,
                    "mask": region_masks[..., 0], "region_masks": region_masks, "blank": blank}
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
        if len(case.image) == 1 and self.cascade.segmenter.input_shape[-1] != case.image.shape[-1]:
            log.warning("%s: a single slice, but the segmenter takes its neighbours as well (2.5-D input): it sees "
                        "this slice in their place", where)
        out = self.predict_volume(case.image)
        return Prediction(case, out["probabilities"], out["gated"], out["mask"], out["blank"], self.threshold,
                          out.get("region_masks"), self.task.regions if "region_masks" in out else ())

    # --- paths -----------------------------------------------------------------------------------

    def read(self, item: InputItem) -> Case:
        """Read one input item with the models' image size and channels; InputError naming the file.

        Prediction needs no ground truth: a missing mask or segmentation is no error, and an unusable one
        (unreadable, wrong shape, unknown values) is logged as a warning and the case read unlabelled.
        """
        if item.error is not None:
            raise item.error
        layout = registry.for_kind(item.layout)
        if layout is None or item.layout not in layout.case_kinds:
            raise InputError(item.path, f"cannot predict on a {item.layout}")
        return layout.read(item.path, self.task, min_brain_fraction=0.0, labels="optional")

    def predict_path(self, path: str | Path, out_dir: str | Path) -> list[dict[str, Any]]:
        """Predict every case in ``path`` and write each to ``out_dir/<case id>/``.

        Returns one dict per case in input order: the summary.json content ("status": "ok"), or
        {"status": "failed", "input", "error"} for a case that could not be read or predicted.
        Raises InputError only when ``path`` itself is unusable (missing, unrecognised, no cases).
        """
        path = Path(os.path.abspath(path))  # "." and ".." name their folder, so case ids are folder names
        items = find_inputs(path)
        out_dir = Path(out_dir)
        check_output_dir(out_dir, [path, *(item.path for item in items)])
        results: list[dict[str, Any]] = []
        written: dict[str, str] = {}
        show_bar = len(items) > 1
        with logs_above_the_bar(show_bar), ThreadPoolExecutor(1, thread_name_prefix="predict_read") as reader:
            bar = tqdm(total=len(items), desc="predict", unit="case", disable=not show_bar)
            for item, pending in zip(items, prefetch(reader, self.read, items), strict=True):
                try:
                    case = pending.result()
                    key = case.patient_id.casefold()  # one folder on a case-insensitive file system
                    if key in written:
                        raise InputError(item.path, f"case id {case.patient_id} was already predicted from "
                                                    f"{written[key]}")
                    folder = case_folder(out_dir, case.patient_id, item.path)
                    prediction = self.predict_case(case)
                    summary = self.write_case(prediction, folder, item)
                    written[key] = str(item.path)
                    results.append(summary)
                except (PipelineError, OSError) as e:
                    error = str(e) if isinstance(e, PipelineError) else f"{e.filename or out_dir}: cannot write ({e.strerror or e})"
                    log.error("failed: %s", one_line(error))
                    results.append({"status": "failed", "input": str(item.path), "error": one_line(error)})
                bar.update()
            bar.close()
        return results

    # --- writing ---------------------------------------------------------------------------------

    def write_case(self, p: Prediction, folder: Path, item: InputItem | None = None) -> dict[str, Any]:
        """Write one case's outputs into ``folder`` (replaced atomically) and return its summary. The mask
        goes out in the input's own format, by its layout (``item``'s, else the one serving ``case.source``).

        summary.json: case_id, input, layout (the input's kind), source, status "ok", tumour_present (any
        predicted tumour pixel), classifier_positive (max_probability >= threshold), max_probability, threshold,
        slice_score (what the gate and each slice's probability are), seg_threshold, postprocessing, n_slices, slices_with_tumour (slice numbers), tumour_area_unit
        ("px" of the input slices), voxel_mm (input voxel size, null for TIFFs), tumour_volume_ml (null
        without spacing), channels, image_size, model_files, outputs (file names in ``folder``), and
        slices: [{slice, probability, segmented, blank, tumour (the predicted mask at the models' resolution is not
        empty), tumour_px, tumour_mm2, reference_tumour (the ground truth has tumour; null without labels)}] per
        slice. A segmenter with one
        output per region adds region_volumes_ml {region: ml} and validation_regions {region: scores} (null
        without labels), and outputs "labels" (the label map, ``write_regions``).
        """
        case = p.case
        layout = (registry.for_kind(item.layout) if item is not None else None) or registry.for_source(case.source)
        kind = item.layout if item is not None else layout.case_kinds[0]
        check_no_overlap(folder, files_read(case, item), "case output folder")
        check_replaceable(folder)
        with atomic_dir(folder) as tmp:
            (tmp / OUTPUT_MARKER).write_text(json.dumps({"written_by": "python -m pipeline predict"}) + "\n")
            written = layout.write_prediction(case, p.mask, tmp)  # the mask in the input's own format
            area_px, pixel_mm2, voxel_mm = written.tumour_px, written.pixel_mm2, written.voxel_mm
            overlays = _write_overlays(p, tmp / "overlays")
            regions = write_regions(p, tmp) if p.region_masks is not None else {}
            tumour_slices = p.slices_with_tumour
            reference = case.mask.any(axis=(1, 2)) if case.meta.get("has_labels") else [None] * len(p.called)
            summary = {
                "case_id": p.case_id,
                "input": str(item.path) if item is not None else case.meta.get("path"),
                "layout": kind,
                "source": case.source,
                "status": "ok",
                "tumour_present": p.tumour_present,
                "classifier_positive": bool(p.max_probability >= p.threshold),
                "max_probability": p.max_probability,
                "threshold": p.threshold,
                "slice_score": self.cascade.slice_score,
                "seg_threshold": self.cascade.seg_threshold,
                "postprocessing": dataclasses.asdict(self.cascade.post),
                "n_slices": len(case.slice_numbers),
                "slices_with_tumour": tumour_slices,
                "tumour_area_unit": "px",
                "voxel_mm": voxel_mm,
                "tumour_volume_ml": (float(area_px.sum() * np.prod(voxel_mm) / 1000.0) if voxel_mm is not None
                                     else None),
                "validation": score_case(case, p.mask),
                **({"region_volumes_ml": regions["volumes_ml"],
                    "validation_regions": score_regions(case, p.region_masks, p.regions)} if regions else {}),
                "channels": list(self.channels),
                "image_size": self.image_size,
                "model_files": self.model_files,
                "outputs": {**written.outputs, **({"labels": regions["labels"]} if regions.get("labels") else {}),
                            "overlays": [f"overlays/{name}" for name in overlays]},
                "slices": [
                    {"slice": int(n), "probability": float(prob), "segmented": bool(g), "blank": bool(b),
                     "tumour": bool(c), "tumour_px": int(px),
                     "tumour_mm2": float(px * pixel_mm2) if pixel_mm2 is not None else None,
                     "reference_tumour": None if r is None else bool(r)}
                    for n, prob, g, b, c, px, r in zip(case.slice_numbers, p.probabilities, p.gated, p.blank,
                                                       p.called, area_px, reference, strict=True)
                ],
            }
            (tmp / "summary.json").write_text(json_text(summary))
        volume = f", {summary['tumour_volume_ml']:.2f} ml" if summary["tumour_volume_ml"] is not None else ""
        log.info("%s: %s (max p %.3f, threshold %.3f), %d of %d slices with tumour%s -> %s", p.case_id,
                 "TUMOUR" if p.tumour_present else "no tumour", p.max_probability, p.threshold,
                 len(tumour_slices), len(case.slice_numbers), volume, folder)
        return summary


# ------------------------------------------------------------------------------------------- regions


def write_regions(p: Prediction, folder: Path) -> dict[str, Any]:
    """A segmenter with one output per region: for a volume, ``<case id>_labels.nii.gz``, the nested region masks
    as a label map in the input's voxel grid and its edition's own label numbers (BraTS 2021 0/1/2/4, BraTS 2023
    0/1/2/3, Decathlon 0/1/2/3: ``pipeline.data.regions.to_dataset_labels``), and each region's volume in ml
    counted in that grid. Returns {"labels": file name or None, "volumes_ml": {region: ml or None}}; kaggle_3m
    TIFF slices (no voxel size, a mask format only) get no label map and null volumes."""
    codes = from_region_masks(p.region_masks, p.regions)  # the pipeline's region map [D, S, S]
    if p.case.geometry is None or p.case.source not in LABEL_TABLES:
        return {"labels": None, "volumes_ml": dict.fromkeys(p.regions)}
    name, _ = write_volume_labels(p.case, to_dataset_labels(codes, p.case.source), folder)
    scan = to_scan_space(codes, p.case.geometry)  # the same voxels as the file, in the pipeline's region bits
    affine = np.asarray(p.case.geometry["affine"], dtype=float)
    voxel_ml = float(np.prod(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))) / 1000.0
    return {"labels": name, "volumes_ml": {r: float(region_mask(scan, r).sum()) * voxel_ml for r in p.regions}}


# ------------------------------------------------------------------------------------------- overlays


def _write_overlays(p: Prediction, folder: Path) -> list[str]:
    """FLAIR + predicted outline (and the reference mask when the input has one) per slice with tumour."""
    channels = list(p.case.channels)
    flair = channels.index("flair") if "flair" in channels else len(channels) // 2
    truth = p.case.mask if p.case.meta.get("has_labels") else None
    if p.region_masks is not None:  # a colour per region, reference (empty without labels) | prediction, a legend
        truth = region_masks(p.case.labels, p.regions) if truth is not None else np.zeros_like(p.region_masks)
    names = []
    for k in np.flatnonzero(p.mask.any(axis=(1, 2))):
        n = int(p.case.slice_numbers[k])
        name = f"slice_{n:03d}.png"
        title = f"slice {n}  p={p.probabilities[k]:.2f}"
        if p.region_masks is not None:
            region_overlay_png(p.case.image[k], flair, truth[k], p.region_masks[k], p.regions, folder / name, title)
        else:
            overlay_png(p.case.image[k, ..., flair], None, truth[k] if truth is not None else None, folder / name,
                        title=title, pred_mask=p.mask[k])
        names.append(name)
    return names


__all__ = ["Prediction", "Predictor"]
