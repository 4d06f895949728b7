"""The segmenter: built by architecture name, and the pixel threshold every architecture shares.

``build_segmenter(arch, ...)`` builds the architecture ``segmenter.arch`` names, from the registry
(``pipeline.models.registry.SEGMENTERS``: "resunet" ``nets.resunet``, "unet" ``nets.unet``). Every one takes
[B, S, S, 3] uint8 values 0..255 as float32 (standardised per image inside the model) and gives
[B, S, S, out_channels] sigmoid probabilities, float32, as layer "tumour_mask".

``PIXEL_THRESHOLD``: a pixel is tumour when the segmenter's probability is at or above it. Written once
(in ``pipeline.models.registry``, keras-free): training scores with it (``DiceAt``, ``IoUAt``) and records it in the segmenter's sidecar
(``models/segmenter.json`` "threshold"); evaluate writes it, or with ``evaluate.seg_threshold`` the threshold
given or chosen on validation, into the model bundle (``models/cascade.json`` "seg_threshold"), which prediction
reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from pipeline.models.registry import PIXEL_THRESHOLD, SEGMENTERS, load

__all__ = ["PIXEL_THRESHOLD", "build_segmenter"]


def build_segmenter(arch: str, image_size: int, filters: Sequence[int], out_channels: int = 1,
                    in_channels: int = 3) -> keras.Model:
    """The registered architecture ``arch`` for [B, image_size, image_size, in_channels] input; ``filters``: the
    widths of its levels, shallow to deep. ValueError for an unknown ``arch``. ``in_channels`` other than 3 (2.5-D
    input, ``pipeline.data.context``) is passed on only then, so an architecture built for 3 channels still works."""
    if arch not in SEGMENTERS:
        raise ValueError(f"segmenter architecture {arch!r} is not one of {', '.join(SEGMENTERS)}")
    extra = {} if in_channels == 3 else {"in_channels": in_channels}
    return load(SEGMENTERS[arch].build)(image_size, tuple(filters), out_channels=out_channels, **extra)
