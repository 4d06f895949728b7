"""U-Net (Ronneberger et al. 2015) as Buda, Saha, Mazurowski 2019 used it on the LGG kaggle_3m data
(the brain-segmentation-pytorch model), for tumour masks.

    image [B, S, S, 3] uint8-range float32
      -> PerImageStandardization                                   ("standardize")
      -> encoder: a conv block per level, 2x2 max-pooling between levels       ("enc1".."encN")
      -> bottleneck: a conv block after the last pooling                       ("bottleneck")
      -> decoder: 2x2 stride-2 transposed conv + concatenation with the encoder
         output of the same size + conv block, back up to S                    ("decN".."dec1")
      -> 1x1 conv, sigmoid, float32                                            ("tumour_mask")
    output [B, S, S, out_channels], per-pixel probabilities

A conv block is 3x3 conv (no bias) -> BN -> ReLU, twice. Buda et al.'s widths are (32, 64, 128, 256, 512).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from pipeline.models.nets.layers import PerImageStandardization
from pipeline.models.nets.resunet import INPUT_NAME, OUTPUT_NAME, check_encoder_decoder


def conv_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """(3x3 conv -> BN -> ReLU) x 2: [B, H, W, C] -> [B, H, W, filters]."""
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(image_size: int, filters: Sequence[int] = (32, 64, 128, 256, 512), out_channels: int = 1,
               name: str = "unet", in_channels: int = 3) -> keras.Model:
    """U-Net for [B, image_size, image_size, in_channels] uint8-range float32 input
    (3 sequences; 3 x (2n + 1) with n neighbouring slices either side, ``pipeline.data.context``).

    ``filters``: widths of the encoder levels then the bottleneck (len = levels + 1, at least 2), as for
    ``build_resunet``; ``image_size`` must be divisible by 2 ** (len(filters) - 1). Returns a model whose
    output "tumour_mask" is [B, image_size, image_size, out_channels] sigmoid probabilities (float32).
    The default (32, 64, 128, 256, 512) has about 7.77M parameters.
    """
    filters = check_encoder_decoder(image_size, filters, out_channels)

    image = keras.Input((image_size, image_size, in_channels), dtype="float32", name=INPUT_NAME)
    x = PerImageStandardization(name="standardize")(image)

    skips = []
    for level, width in enumerate(filters[:-1], start=1):
        x = conv_block(x, width, name=f"enc{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = conv_block(x, filters[-1], name="bottleneck")

    for level in range(len(skips), 0, -1):
        x = keras.layers.Conv2DTranspose(filters[level - 1], 2, strides=2, name=f"dec{level}_up")(x)
        x = keras.layers.Concatenate(name=f"dec{level}_concat")([x, skips[level - 1]])
        x = conv_block(x, filters[level - 1], name=f"dec{level}")

    out = keras.layers.Conv2D(out_channels, 1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(image, out, name=name)
