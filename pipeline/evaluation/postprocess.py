"""Mask post-processing: connected-component clean-up of a predicted mask, and the per-patient
``PostProcessing`` settings that the cascade applies (evaluate and predict alike).

Pure NumPy/SciPy functions of their arguments, like ``pipeline.evaluation.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from pipeline.evaluation.metrics import _binary


@dataclass(frozen=True)
class PostProcessing:
    """Per-patient mask clean-up; both off by default."""

    min_component_px: int = 0  # drop 3D connected components smaller than this (pixels); 0 = off
    keep_largest_component: bool = False

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """mask: bool [D, H, W] of one patient -> cleaned bool [D, H, W]."""
        if self.min_component_px > 0:
            mask = remove_small_components(mask, self.min_component_px)
        if self.keep_largest_component:
            mask = keep_largest_component(mask)
        return mask

    @property
    def enabled(self) -> bool:
        return self.min_component_px > 0 or self.keep_largest_component

    def __str__(self) -> str:
        steps = ([f"components under {self.min_component_px} px dropped"] if self.min_component_px > 0 else []) + \
            (["largest 3-D component kept"] if self.keep_largest_component else [])
        return ", ".join(steps) or "none"


def _components(mask: np.ndarray, connectivity: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Labelled components of a binary mask and their sizes [n_labels + 1] (index 0 = background)."""
    rank = connectivity if connectivity is not None else mask.ndim
    if not 1 <= rank <= mask.ndim:
        raise ValueError(f"connectivity must be in 1..{mask.ndim}; got {connectivity}")
    labels, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, rank))
    return labels, np.bincount(labels.ravel())


def keep_largest_component(mask: ArrayLike, connectivity: int | None = None) -> np.ndarray:
    """Keep only the largest connected component of a binary mask (2D [H, W] or 3D [D, H, W]).

    connectivity: 1 = faces only, up to ndim = faces, edges and corners (default: full, 8 in 2D, 26 in 3D, as
    MONAI's KeepLargestConnectedComponent); a 3D volume is labelled in 3D. Equal sizes: the first in raster
    order wins. Returns a new bool array of the same shape; an empty mask stays empty.
    """
    m = _binary(mask, "mask")
    if not m.any():
        return np.zeros(m.shape, bool)
    labels, sizes = _components(m, connectivity)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def remove_small_components(mask: ArrayLike, min_px: int, connectivity: int | None = None) -> np.ndarray:
    """Drop connected components with fewer than `min_px` voxels from a binary mask (2D or 3D, labelled in its
    own dimensionality; connectivity as :func:`keep_largest_component`). Returns a new bool array."""
    m = _binary(mask, "mask")
    if min_px <= 1 or not m.any():
        return m.copy()
    labels, sizes = _components(m, connectivity)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]
