"""The task the models solve, written once: which regions they find, and what input the models take
(image size, channels, intensity scaling).

``target_mask(labels)`` is the one place a label map becomes the whole-tumour target (every non-zero
label: LGG FLAIR abnormality; BraTS whole tumour): the slice store's ``has_tumour``, the classifier's
labels, the gate, evaluation, the gallery, ``Case.mask`` and prediction all call it. The regions and
every dataset's label numbers live in ``pipeline.data.regions``; data.target "regions" has the segmenter
output one channel per region there (whole tumour first), "whole_tumour" only the first.

``TaskSpec`` is the input half, saved in the model bundle (``models/cascade.json``) so prediction
needs nothing but that folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data.regions import TARGETS, WHOLE_TUMOUR, region_mask, target_regions
from pipeline.params import MAX_IMAGE_SIZE
from pipeline.sequences import INTENSITIES, SEQUENCES

TARGET = "whole_tumour"  # data.target's default: the region the classifier detects and the segmenter delineates
# Volumes' intensity clipping for models whose bundle records none (trained on as-stored kaggle_3m TIFFs).
DEFAULT_CLIP_PERCENTILES = (0.5, 99.5)
# What bundles written before the regions (issue 24) record: one region "tumour" = every non-zero label.
_OLD_REGIONS = {"tumour": None}


def target_mask(labels: np.ndarray, region: str = WHOLE_TUMOUR) -> np.ndarray:
    """uint8 pipeline label map [...] -> bool [...]: the pixels of ``region`` (whole tumour: every non-zero label)."""
    labels = np.asarray(labels)
    return labels > 0 if region == WHOLE_TUMOUR else region_mask(labels, region)


@dataclass(frozen=True)
class TaskSpec:
    """What the models take and find.

    image_size: S, slices are uint8 [S, S, 3]; channels: the sequences in the 3 input channels;
    intensity: {"mode": "as_stored" | "per_volume", "clip_percentiles": [low, high] or None}, how
    the readers scale intensities to uint8; target: what the segmenter finds (data.target: "whole_tumour"
    or "regions"; ``regions`` are its output channels).
    """

    image_size: int
    channels: tuple[str, ...]
    intensity: dict[str, Any]
    target: str = TARGET

    @property
    def regions(self) -> tuple[str, ...]:
        """The segmenter's output channels, in order (``pipeline.data.regions.target_regions``)."""
        return target_regions(self.target)

    @property
    def intensity_mode(self) -> str:
        """How readers scale kaggle_3m TIFFs: "as_stored" or "per_volume" (one of INTENSITIES)."""
        return self.intensity.get("mode", "as_stored")

    @property
    def clip_percentiles(self) -> tuple[float, float]:
        """(low, high) percentiles the readers clip intensities to when they rescale (volumes always, TIFFs
        per_volume): the spec's, or DEFAULT_CLIP_PERCENTILES for a spec that records none (as_stored models)."""
        low, high = self.intensity.get("clip_percentiles") or DEFAULT_CLIP_PERCENTILES
        return float(low), float(high)

    def to_json(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": list(self.channels), "intensity": self.intensity,
                "target": self.target, "regions": list(self.regions)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TaskSpec:
        """The spec saved by ``to_json``; ValueError when it does not fit this code (channels, target, regions).
        A bundle from before the regions (target "tumour", regions {"tumour": null}) reads as "whole_tumour"."""
        channels = tuple(raw["channels"])
        if len(channels) != 3 or any(c not in SEQUENCES for c in channels):
            raise ValueError(f"needs 3 channels from {SEQUENCES}; got {list(channels)}")
        target = raw.get("target", TARGET)
        old = raw.get("regions", _OLD_REGIONS) == _OLD_REGIONS
        if target == "tumour" and old:
            target = TARGET
        if target not in TARGETS:
            raise ValueError(f"target {target!r} is not one of {', '.join(TARGETS)}")
        regions = raw.get("regions", list(target_regions(target)))
        if not (old and target == TARGET) and regions != list(target_regions(target)):
            raise ValueError(f"target regions {regions} differ from this code's {list(target_regions(target))}")
        given = raw["intensity"] or {}
        intensity = {"mode": given.get("mode", "as_stored"), "clip_percentiles": given.get("clip_percentiles")}
        if intensity["mode"] not in INTENSITIES:
            raise ValueError(f"intensity mode {intensity['mode']!r} is not one of {', '.join(INTENSITIES)}")
        clip = intensity["clip_percentiles"]
        if clip is not None and not (isinstance(clip, list) and len(clip) == 2 and 0 <= clip[0] < clip[1] <= 100):
            raise ValueError(f"clip_percentiles {clip!r} is not [low, high] with 0 <= low < high <= 100")
        size = raw["image_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32 or size > MAX_IMAGE_SIZE:
            raise ValueError(f"image_size {size!r} is not a multiple of 32 pixels up to {MAX_IMAGE_SIZE}")
        return cls(size, channels, intensity, target)
