"""Overlays of every region: one colour per region (``REGION_BGR``), truth and prediction side by side, with a legend.

``region_overlay_png`` draws one slice; ``region_cases`` the best, median and worst test patients by their
whole-tumour Dice (``reports/eval/region_cases.json`` + ``eval/images/regions_<rank>.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pipeline.data.regions import REGIONS, region_masks
from pipeline.data.slices import SliceStore
from pipeline.evaluation.explain import _label, _panel, _with_title, _write_png
from pipeline.evaluation.gallery import picture_channel

# BGR outline colours, by the region's place in pipeline.data.regions.REGIONS: yellow, red, cyan, then more.
_PALETTE = ((0, 220, 255), (60, 60, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (255, 128, 0))
REGION_BGR = {region: _PALETTE[i % len(_PALETTE)] for i, region in enumerate(REGIONS)}
LEGEND_ROW_PX = 16


def region_name(region: str) -> str:
    """"tumour_core" -> "tumour core"."""
    return region.replace("_", " ")


def region_overlay_png(image: np.ndarray, flair: int, truth: np.ndarray, pred: np.ndarray, regions: tuple[str, ...],
                       path: str | Path, title: str | None = None) -> Path:
    """FLAIR with the reference regions outlined | FLAIR with the predicted regions outlined, a colour per region
    (``REGION_BGR``) and a legend strip below. image uint8 [H, W, C]; truth, pred bool [H, W, R] in ``regions``
    order. Written atomically; returns the path."""
    picture = np.asarray(image)[..., flair]
    panels = [_label(_panel(picture, outlines=[(masks[..., i], REGION_BGR[r]) for i, r in enumerate(regions)]), text)
              for masks, text in ((truth, "reference"), (pred, "prediction"))]
    gap = np.full((panels[0].shape[0], 2, 3), 255, np.uint8)
    row = np.concatenate([panels[0], gap, panels[1]], axis=1)
    legend = np.zeros((LEGEND_ROW_PX * len(regions) + 4, row.shape[1], 3), np.uint8)
    for i, region in enumerate(regions):
        y = LEGEND_ROW_PX * (i + 1)
        cv2.rectangle(legend, (4, y - 10), (16, y - 2), REGION_BGR[region], thickness=-1)
        cv2.putText(legend, region_name(region), (22, y - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return _write_png(_with_title(np.concatenate([row, legend], axis=0), title), path)


def region_cases(store: SliceStore, patients: pd.DataFrame, masks: dict[str, np.ndarray], regions: tuple[str, ...],
                 image_dir: Path) -> list[dict[str, Any]]:
    """The best, median and worst test patients (without a test split, split.test 0: out-of-fold patients) by
    whole-tumour Dice, each at its slice with the most whole tumour: [{rank, patient_id, dice {region: Dice},
    slice_index, png}]. patients: ``region_patient_rows``."""
    shown = "test" if (patients.split == "test").any() else "val"
    test = patients[(patients.split == shown) & patients.has_region]
    whole = test[test.region == regions[0]].sort_values("dice", ascending=False, kind="stable")
    if whole.empty:
        return []
    picks = {"best": whole.iloc[0], "median": whole.iloc[len(whole) // 2], "worst": whole.iloc[-1]}
    flair = picture_channel(store)
    cases = []
    for rank, row in picks.items():
        pid = row.patient_id
        truth = region_masks(np.asarray(store.labels(pid)), regions)
        k = int(truth[..., 0].reshape(len(truth), -1).sum(1).argmax())
        dice = {r: float(d) for r, d in test[test.patient_id == pid].set_index("region").dice.items()}
        png = image_dir / f"regions_{rank}.png"
        region_overlay_png(np.asarray(store.images(pid)[k]), flair, truth[k], masks[pid][k], regions, png,
                           title=f"{rank}: " + ", ".join(f"{region_name(r)} {dice.get(r, float('nan')):.2f}"
                                                        for r in regions))
        cases.append({"rank": rank, "patient_id": pid, "dice": dice, "slice_index": k, "png": f"eval/images/{png.name}"})
    return cases
