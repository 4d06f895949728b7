"""`Case`: one patient's scan as every reader produces it, whatever the on-disk layout.

Convention (shared by all readers; everything after ingest depends on it):
- ``image``: uint8 [D, H, W, C], channels last, D axial slices, channels named in ``channels``.
- ``labels``: uint8 [D, H, W] the pipeline's region map (bit i: in ``pipeline.data.regions.REGIONS[i]``; readers map
  their edition's label numbers to it), 0 = background. The whole tumour is ``pipeline.data.task.target_mask(labels)``.
- ``slice_numbers``: int [D], the slice's number in the original scan (LGG: the ``n`` of
  ``<case>_<n>.tif``; volumes: the z index in canonical orientation).
- ``geometry``: for volumes, what is needed to write a [D, H, W] prediction back in the
  scan's own voxel space (see ``pipeline.data.sources.volume.to_scan_space``); None for LGG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.data.task import target_mask
from pipeline.sequences import LGG_CHANNELS, SEQUENCES  # noqa: F401  (their home is pipeline.sequences)


@dataclass
class Case:
    patient_id: str
    image: np.ndarray  # uint8 [D, H, W, C]
    labels: np.ndarray  # uint8 [D, H, W]
    source: str  # "lgg" | "brats2021" | "brats2023" | "decathlon" (its label table: pipeline.data.regions)
    channels: tuple[str, ...]  # names of the C channels, e.g. ("t1", "flair", "t1gd")
    slice_numbers: np.ndarray  # int [D]
    spacing_mm: tuple[float, float, float] | None = None  # (row, col, slice) of stored slices
    geometry: dict[str, Any] | None = None  # volumes only: affine, shape, transforms
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. institution, clinical data

    def __post_init__(self) -> None:
        d = self.image.shape[0]
        if self.image.ndim != 4 or self.image.dtype != np.uint8:
            raise ValueError(f"{self.patient_id}: image must be uint8 [D,H,W,C], got {self.image.dtype} {self.image.shape}")
        if self.labels.shape != self.image.shape[:3] or self.labels.dtype != np.uint8:
            raise ValueError(f"{self.patient_id}: labels must be uint8 {self.image.shape[:3]}, got {self.labels.dtype} {self.labels.shape}")
        if len(self.slice_numbers) != d:
            raise ValueError(f"{self.patient_id}: {len(self.slice_numbers)} slice numbers for {d} slices")
        if len(self.channels) != self.image.shape[3]:
            raise ValueError(f"{self.patient_id}: {len(self.channels)} channel names for {self.image.shape[3]} channels")

    @property
    def mask(self) -> np.ndarray:
        """Binary target mask, bool [D, H, W] (``pipeline.data.task.target_mask``)."""
        return target_mask(self.labels)
