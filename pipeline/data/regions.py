"""Tumour regions and every dataset's label numbers, written once: the pipeline's one label convention.

``REGIONS`` lists the regions the pipeline knows, a line each; ``LABEL_TABLES`` says, per dataset edition
(a Case's ``source``), which regions each of its label values belongs to. Nothing else names a region or
a dataset label number: readers call ``to_region_labels`` at ingest, predict ``to_dataset_labels`` to
write a label map back in the input edition's own numbers, and everything in between asks
``region_mask`` / ``region_masks``.

The pipeline's label map (``Case.labels``, the slice store's ``labels.npy``) is uint8 [...] with bit i set
where the voxel lies in ``REGIONS[i]`` (at most 8 regions): BraTS 2021 label 4 (enhancing) is in whole
tumour, tumour core and enhancing tumour, 0b111 = 7; label 2 (oedema) only in whole tumour, 0b001 = 1.
Every tumour label is in whole tumour (the first region), so the whole tumour is ``labels > 0``.

Nesting (enhancing inside core inside whole) is not written down: ``parent(region)`` derives it from the
tables (the smallest other region that every label holding ``region`` also holds).

Adding a region, say "surrounding oedema" (BraTS label 2): one line in ``REGIONS`` and its name in the
table rows of the labels it covers; readers, training, evaluation and predict follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.sequences import TARGETS  # data.target's values (their home: what params.yaml may name)

WHOLE_TUMOUR = "whole_tumour"
REGIONS: tuple[str, ...] = (
    WHOLE_TUMOUR,  # every tumour label (LGG: its mask)
    "tumour_core",  # necrotic / non-enhancing core + enhancing tumour
    "enhancing_tumour",  # enhancing tumour
)
_WT, _TC, _ET = REGIONS[:3]


# Case.source -> dataset label value -> the regions that label belongs to (0, background, belongs to none).
LABEL_TABLES: dict[str, dict[int, tuple[str, ...]]] = {
    "lgg": {1: (_WT,)},  # kaggle_3m masks (0/255, read as 0/1): whole tumour only
    "brats2021": {1: (_WT, _TC), 2: (_WT,), 4: (_WT, _TC, _ET)},  # BraTS 2017-2021: 1 NCR/NET, 2 ED, 4 ET
    "brats2023": {1: (_WT, _TC), 2: (_WT,), 3: (_WT, _TC, _ET)},  # BraTS 2023: 1 NCR, 2 ED, 3 ET
    "decathlon": {1: (_WT,), 2: (_WT, _TC), 3: (_WT, _TC, _ET)},  # Task01: 1 oedema, 2 non-enhancing, 3 enhancing
}


def target_regions(target: str) -> tuple[str, ...]:
    """The regions the segmenter outputs for data.target ``target``, in output channel order."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    return REGIONS if target == "regions" else (WHOLE_TUMOUR,)


def bit(region: str) -> int:
    """The bit of ``region`` in a pipeline label map (1 << its index in REGIONS)."""
    return 1 << REGIONS.index(region)


def label_table(source: str) -> dict[int, tuple[str, ...]]:
    """LABEL_TABLES[source]; ValueError naming the known editions for another source."""
    if source not in LABEL_TABLES:
        raise ValueError(f"no label table for {source!r} (known: {', '.join(LABEL_TABLES)})")
    return LABEL_TABLES[source]


def _codes(table: Mapping[int, Sequence[str]]) -> dict[int, int]:
    """Dataset label -> its pipeline code (the bits of its regions)."""
    return {label: sum(bit(r) for r in regions) for label, regions in table.items()}


def to_region_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """Dataset label map (any integer array whose values are 0 or in the edition's table) -> the pipeline's
    uint8 region-bit map, same shape. Values outside the table are a ValueError (readers check first)."""
    lut = np.zeros(256, np.uint8)
    for label, code in _codes(label_table(source)).items():
        lut[label] = code
    labels = np.asarray(labels)
    unknown = set(np.unique(labels).tolist()) - set(label_table(source)) - {0}
    if unknown:
        raise ValueError(f"label values {sorted(unknown)} are not in the {source} label table")
    return lut[labels.astype(np.uint8, copy=False)]


def to_dataset_labels(region_labels: np.ndarray, source: str) -> np.ndarray:
    """The pipeline's region-bit map -> the edition's own label numbers, uint8, same shape.

    Each voxel gets the label whose regions match its bits best (fewest regions differing; ties: the
    label with more regions); no bit set is background 0. Nested predictions match a label exactly.
    """
    codes = _codes(label_table(source))
    lut = np.zeros(256, np.uint8)
    for value in range(1, 256):
        lut[value] = min(codes, key=lambda label: (bin(codes[label] ^ value).count("1"), -bin(codes[label]).count("1")))
    return lut[np.asarray(region_labels, dtype=np.uint8)]


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """bool [...]: the voxels of ``region`` in a pipeline label map."""
    return (np.asarray(labels) & bit(region)) != 0


def region_masks(labels: np.ndarray, regions: Sequence[str]) -> np.ndarray:
    """bool [..., R]: one channel per region of ``regions`` (in that order) from a pipeline label map."""
    labels = np.asarray(labels)
    return np.stack([region_mask(labels, r) for r in regions], axis=-1)


def from_region_masks(masks: np.ndarray, regions: Sequence[str]) -> np.ndarray:
    """bool [..., R] masks of ``regions`` -> the pipeline's uint8 label map [...]."""
    out = np.zeros(masks.shape[:-1], np.uint8)
    for i, region in enumerate(regions):
        out[np.asarray(masks[..., i], bool)] |= bit(region)
    return out


def parent(region: str) -> str | None:
    """The smallest other region that holds ``region`` wherever a label table has it (tumour core for
    enhancing tumour, whole tumour for tumour core), or None (whole tumour)."""
    holders: set[str] | None = None
    for table in LABEL_TABLES.values():
        for regions in table.values():
            if region in regions:
                holders = set(regions) if holders is None else holders & set(regions)
    candidates = [r for r in (holders or set()) if r != region]
    if not candidates:
        return None

    def size(r: str) -> int:  # how many labels of all tables a region covers: the smallest holder is the parent
        return sum(r in regions for table in LABEL_TABLES.values() for regions in table.values())

    return min(candidates, key=lambda r: (size(r), -REGIONS.index(r)))


def nest(masks: np.ndarray, regions: Sequence[str]) -> np.ndarray:
    """bool [..., R] -> the same with each region cut to its parent's mask (enhancing inside core inside
    whole), parents first; a region whose parent is not among ``regions`` is left as it is."""
    out = np.array(masks, bool, copy=True)
    index = {r: i for i, r in enumerate(regions)}
    for i, region in sorted(enumerate(regions), key=lambda item: _depth(item[1])):
        up = parent(region)
        if up in index:
            out[..., i] &= out[..., index[up]]
    return out


def _depth(region: str) -> int:
    depth, up = 0, parent(region)
    while up is not None:
        depth, up = depth + 1, parent(up)
    return depth
