"""2.5-D input: a slice with its neighbours as extra channels (``segmenter.context_slices``).

A segmenter trained with context n takes, for each slice, the stored slices n either side of it as well:
uint8 [B, H, W, C * (2n + 1)], slice-major: the C channels of the slice n below, ..., of the slice itself,
..., of the slice n above (channel j is sequence j % C of the slice at offset j // C - n). Neighbours are the
adjacent rows of a case's array, which readers store in slice order (kaggle_3m by slice number, volumes by
z); at the first and last slice the edge slice stands in for the ones beyond it. (Ingest drops a volume's
slices with less brain than data.min_brain_fraction, where predict keeps every slice: at the outermost kept
slices training saw the edge slice repeated, predict shows the nearly empty slices beyond.) The number of neighbours is
not stored anywhere but in the model: a segmenter whose input has C * (2n + 1) channels for C-channel
slices takes context n (``context_of``), so a bundle cannot disagree with its models.
"""

from __future__ import annotations

import numpy as np


def neighbour_rows(slice_indices: np.ndarray, n_slices: int, context: int) -> np.ndarray:
    """Rows of each slice's neighbours: int [B, 2 * context + 1] for slice_indices int [B] of a case with
    ``n_slices`` slices, offsets -context..+context, clamped to 0..n_slices - 1."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.asarray(slice_indices, np.int64)[:, None] + offsets, 0, n_slices - 1)


def with_context(volume: np.ndarray, context: int, index: np.ndarray | None = None) -> np.ndarray:
    """The slices ``index`` (int [B] rows; None: every slice) of one case's volume uint8 [D, H, W, C] with their
    ``context`` neighbours either side as channels: [B, H, W, C * (2 * context + 1)] (module docstring).
    Context 0 gives the slices as they are. Reads only the rows it needs (a memory-mapped volume stays mapped)."""
    rows = np.arange(len(volume)) if index is None else np.asarray(index, np.int64)
    if context == 0:
        return volume if index is None else volume[rows]
    if rows.size == 0:
        return np.zeros((0, *volume.shape[1:3], volume.shape[3] * (2 * context + 1)), volume.dtype)
    neighbours = neighbour_rows(rows, len(volume), context)  # [B, K]
    needed, inverse = np.unique(neighbours, return_inverse=True)
    slices = np.asarray(volume[needed])[inverse.reshape(neighbours.shape)]  # [B, K, H, W, C]
    return np.ascontiguousarray(np.moveaxis(slices, 1, 3)).reshape(*slices.shape[:1], *slices.shape[2:4], -1)


def context_of(in_channels: int, image_channels: int) -> int:
    """The context n of a segmenter whose input has ``in_channels`` channels, for slices of ``image_channels``:
    in_channels = image_channels x (2n + 1). ValueError when no n fits."""
    group, rest = divmod(int(in_channels), int(image_channels))
    if rest or group % 2 == 0:
        raise ValueError(f"the segmenter takes {in_channels} channels, which is no odd number of "
                         f"{image_channels}-channel slices")
    return (group - 1) // 2
