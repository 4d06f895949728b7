"""ResUNet (Zhang, Liu, Wang 2018, "Road Extraction by Deep Residual U-Net") for tumour masks.

    image [B, S, S, 3] uint8-range float32
      -> PerImageStandardization                                   ("standardize")
      -> encoder: one residual unit per level; level 1 at S (starts with a plain conv, as in the
         paper), each further level halves H, W with a stride-2 first conv     ("enc1".."encN")
      -> bridge: a residual unit with a stride-2 first conv                    ("bridge")
      -> decoder: UpSampling2D(2) + concatenation with the encoder output of the same size
         + residual unit, back up to S                                         ("decN".."dec1")
      -> 1x1 conv, sigmoid, float32                                            ("tumour_mask")
    output [B, S, S, out_channels], per-pixel probabilities

A residual unit is pre-activation: BN -> ReLU -> 3x3 conv, twice, added to an identity
shortcut, or to 1x1 conv + BN where the width or the stride changes. No pooling layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from pipeline.models.nets.layers import PerImageStandardization

INPUT_NAME = "image"
OUTPUT_NAME = "tumour_mask"


def check_encoder_decoder(image_size: int, filters: Sequence[int], out_channels: int) -> list[int]:
    """The widths of an encoder-decoder's levels as ints; ValueError unless there are at least two positive
    ones, ``image_size`` survives the len(filters) - 1 halvings, and ``out_channels`` >= 1."""
    filters = [int(f) for f in filters]
    if len(filters) < 2 or any(f < 1 for f in filters):
        raise ValueError(f"filters: need at least two positive widths, got {filters}")
    factor = 2 ** (len(filters) - 1)
    if image_size < factor or image_size % factor:
        raise ValueError(f"image_size {image_size} must be a multiple of {factor} for {len(filters)} levels")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    return filters


def residual_unit(x: keras.KerasTensor, filters: int, strides: int, name: str, first: bool = False) -> keras.KerasTensor:
    """Pre-activation residual unit: [B, H, W, C] -> [B, H/strides, W/strides, filters].

    ``first`` drops the leading BN -> ReLU (the paper's first encoder unit starts with a conv).
    """
    h = x
    if not first:
        h = keras.layers.BatchNormalization(name=f"{name}_bn1")(h)
        h = keras.layers.Activation("relu", name=f"{name}_relu1")(h)
    h = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", name=f"{name}_conv1")(h)
    h = keras.layers.BatchNormalization(name=f"{name}_bn2")(h)
    h = keras.layers.Activation("relu", name=f"{name}_relu2")(h)
    h = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(h)

    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=strides, name=f"{name}_shortcut_conv")(x)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([h, shortcut])


def build_resunet(image_size: int, filters: Sequence[int] = (16, 32, 64, 128, 256), out_channels: int = 1,
                  name: str = "resunet", in_channels: int = 3) -> keras.Model:
    """ResUNet for [B, image_size, image_size, in_channels] uint8-range float32 input
    (3 sequences; 3 x (2n + 1) with n neighbouring slices either side, ``pipeline.data.context``).

    ``filters``: widths of the encoder levels then the bridge (len = levels + 1, at least 2);
    ``image_size`` must be divisible by 2 ** (len(filters) - 1). Returns a model whose output
    "tumour_mask" is [B, image_size, image_size, out_channels] sigmoid probabilities (float32).
    The default (16, 32, 64, 128, 256) has about 2.08M parameters.
    """
    filters = check_encoder_decoder(image_size, filters, out_channels)

    image = keras.Input((image_size, image_size, in_channels), dtype="float32", name=INPUT_NAME)
    x = PerImageStandardization(name="standardize")(image)

    skips = []
    for level, width in enumerate(filters[:-1], start=1):
        x = residual_unit(x, width, strides=1 if level == 1 else 2, name=f"enc{level}", first=level == 1)
        skips.append(x)
    x = residual_unit(x, filters[-1], strides=2, name="bridge")

    for level in range(len(skips), 0, -1):
        x = keras.layers.UpSampling2D(2, name=f"dec{level}_up")(x)
        x = keras.layers.Concatenate(name=f"dec{level}_concat")([x, skips[level - 1]])
        x = residual_unit(x, filters[level - 1], strides=1, name=f"dec{level}")

    out = keras.layers.Conv2D(out_channels, 1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(image, out, name=name)
