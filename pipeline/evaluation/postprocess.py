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
    """Per-patient mask clean-up, its steps in this order; all off by default."""

    min_component_px: int = 0  # drop 3D connected components smaller than this (pixels); 0 = off
    keep_largest_component: bool = False
    fill_holes: bool = False  # fill the holes each slice's mask encloses (2-D, per slice)

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """mask: bool [D, H, W] of one patient -> cleaned bool [D, H, W]."""
        if self.min_component_px > 0:
            mask = remove_small_components(mask, self.min_component_px)
        if self.keep_largest_component:
            mask = keep_largest_component(mask)
        if self.fill_holes:
            mask = fill_holes_per_slice(mask)
        return mask

    @property
    def enabled(self) -> bool:
        return self.min_component_px > 0 or self.keep_largest_component or self.fill_holes

    def __str__(self) -> str:
        steps = ([f"components under {self.min_component_px} px dropped"] if self.min_component_px > 0 else []) + \
            (["largest 3-D component kept"] if self.keep_largest_component else []) + \
            (["holes filled per slice"] if self.fill_holes else [])
        return ", ".join(steps) or "none"


def post_processing_options(min_component_px: int, keep_largest_component: bool | str,
                            fill_holes: bool | str) -> list[PostProcessing]:
    """The post-processings to choose among (``scoring.choose_postprocessing``, where a tie keeps the earlier): each
    step given as true or false fixed, each "auto" tried off and on; fewer steps first, and of one step each the
    largest component (the older step) before hole filling, so a tie never turns a step on."""
    def settings(value: bool | str) -> tuple[bool, ...]:
        return (False, True) if value == "auto" else (bool(value),)
    return [PostProcessing(min_component_px, keep, fill) for fill in settings(fill_holes)
            for keep in settings(keep_largest_component)]


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


def fill_holes_per_slice(mask: ArrayLike) -> np.ndarray:
    """Fill the holes of a binary mask [..., H, W] slice by slice: background pixels that the slice's mask
    encloses (not 4-connected to the slice's border) become foreground. A tumour marked as a rim around a cyst or
    a cavity becomes solid, as the kaggle_3m and BraTS whole-tumour references are drawn. Returns a new bool
    array of the same shape."""
    m = _binary(mask, "mask")
    if m.ndim < 2:
        raise ValueError(f"mask must be [..., H, W]; got shape {m.shape}")
    if not m.any():
        return m.copy()
    flat = m.reshape(-1, *m.shape[-2:])
    return np.stack([ndimage.binary_fill_holes(s) if s.any() else s for s in flat]).reshape(m.shape)
