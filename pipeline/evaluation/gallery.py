"""Pictures for the report: explanation galleries (Grad-CAM, integrated gradients) and patient views."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.data.slices import SliceStore
from pipeline.data.task import target_mask
from pipeline.evaluation import metrics as m
from pipeline.evaluation.cascade import gated_mask
from pipeline.evaluation.explain import (
    grad_cam_cells,
    integrated_gradients,
    overlay_png,
    peak_points,
    triptych_png,
    upsample_maps,
)
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.params import EvaluateParams
from pipeline.sequences import flair_channel

if TYPE_CHECKING:  # keras loads only where a model runs: predict on ONNX Runtime imports this module without it
    import keras

log = logging.getLogger(__name__)

GROUPS = {  # (has_tumour, predicted_positive)
    "TP": (True, True), "FP": (False, True), "FN": (True, False), "TN": (False, False),
}
MAX_POINTING_SLICES = 256


def picture_channel(store: SliceStore) -> int:
    """Index of the channel the pictures show: FLAIR (1 in the LGG order), else the middle one."""
    channels = next(iter(store.patients.values()))["channels"]
    flair = flair_channel(channels)
    return len(channels) // 2 if flair is None else flair


def explain_test_slices(classifier: keras.Model, layer: str, store: SliceStore, slices: pd.DataFrame,
                        params: EvaluateParams, image_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Grad-CAM + integrated-gradient overlays for a sample of TP/FP/FN/TN test slices, and the
    pointing game over (up to 256) tumour-positive test slices.

    Returns (gallery entries as in docs/outputs.md, the `explain` metrics of pipeline/evaluation/schema.py).
    """
    rng = np.random.default_rng(params.seed)
    channel = picture_channel(store)
    picked = []
    for group, (has, pred) in GROUPS.items():
        candidates = slices[(slices.has_tumour == has) & (slices.predicted_positive == pred)]
        take = min(params.gradcam_per_group, len(candidates))
        if take:
            chosen = candidates.iloc[np.sort(rng.choice(len(candidates), take, replace=False))]
            picked.append(chosen.assign(group=group))
    gallery: list[dict[str, Any]] = []
    if picked:
        sample = pd.concat(picked, ignore_index=True)
        images, labels = store.read_rows(sample)
        x = images.astype(np.float32)
        size = images.shape[1]
        cells = grad_cam_cells(classifier, x, layer)
        cams = upsample_maps(cells, size, size)
        peaks = peak_points(cells, size, size)
        igs = integrated_gradients(classifier, x, steps=params.ig_steps)
        tolerance = m.pointing_tolerance_px(size / cells.shape[1])
        for i, row in sample.iterrows():
            mask = target_mask(labels[i])
            stem = f"{row.group}_{i:02d}"
            title = f"{row.group} p={row.probability:.2f}"
            overlay_png(images[i, ..., channel], cams[i], mask, image_dir / f"gradcam_{stem}.png", title=title)
            overlay_png(images[i, ..., channel], igs[i], mask, image_dir / f"ig_{stem}.png", title=title)
            hit = bool(m.pointing_game_at(peaks[i:i + 1], mask[None], tolerance)["hits"]) if mask.any() else None
            gallery.append({
                "group": row.group, "patient_id": row.patient_id, "slice_index": int(row.slice_index),
                "probability": float(row.probability), "has_tumour": bool(row.has_tumour),
                "gradcam_png": f"eval/images/gradcam_{stem}.png", "ig_png": f"eval/images/ig_{stem}.png",
                "pointing_hit": hit,
            })

    positive = slices[slices.has_tumour]
    if len(positive) > MAX_POINTING_SLICES:
        positive = positive.iloc[np.sort(rng.choice(len(positive), MAX_POINTING_SLICES, replace=False))]
    pointing = {"pointing_game": float("nan"), "pointing_game_n": 0, "pointing_game_chance": float("nan"),
                "pointing_game_tolerance_px": float("nan"), "gradcam_grid": None}
    if len(positive):
        images, labels = store.read_rows(positive)
        size = images.shape[1]
        cells = grad_cam_cells(classifier, images.astype(np.float32), layer)
        tolerance = m.pointing_tolerance_px(size / cells.shape[1])
        game = m.pointing_game_at(peak_points(cells, size, size), target_mask(labels), tolerance, grid=cells.shape[1:])
        pointing = {"pointing_game": game["score"], "pointing_game_n": game["n"],
                    "pointing_game_chance": game["chance"], "pointing_game_tolerance_px": tolerance,
                    "gradcam_grid": list(cells.shape[1:])}
        log.info("pointing game: the Grad-CAM peak is within %.1f px of the tumour on %d of %d tumour slices "
                 "(%.2f; a random %dx%d cell: %.2f)", tolerance, game["hits"], game["n"], game["score"],
                 *cells.shape[1:], game["chance"])
    return gallery, pointing


def patient_triptychs(store: SliceStore, patients: pd.DataFrame, slices: pd.DataFrame,
                      seg_masks: dict[str, np.ndarray], image_dir: Path,
                      post: PostProcessing | None = None) -> list[dict[str, Any]]:
    """image | truth | cascade prediction for the best, median and worst test patients (by Dice),
    each shown at its slice with the most tumour; `post` as in the evaluation, so the picture
    shows the mask the Dice was computed on."""
    ranked = patients[patients.has_tumour].sort_values("dice_cascade", ascending=False, kind="stable")
    if ranked.empty:
        return []
    picks = {"best": ranked.iloc[0], "median": ranked.iloc[len(ranked) // 2], "worst": ranked.iloc[-1]}
    channel = picture_channel(store)
    cases = []
    for rank, row in picks.items():
        pid = row.patient_id
        rows = slices[slices.patient_id == pid].sort_values("slice_index")
        mask = gated_mask(seg_masks[pid], rows.predicted_positive.to_numpy(), post)
        k = int(rows.tumour_pixels.to_numpy().argmax())
        image = np.asarray(store.images(pid)[k])
        truth = target_mask(store.labels(pid)[k])
        png = image_dir / f"case_{rank}.png"
        triptych_png(image, channel, truth, mask[k], png, title=f"{rank}: Dice {row.dice_cascade:.3f}")
        cases.append({"rank": rank, "patient_id": pid, "dice": float(row.dice_cascade), "slice_index": k,
                      "png": f"eval/images/{png.name}"})
    return cases
