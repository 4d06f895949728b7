"""The models' choice lists, each written once: what params.yaml may name, and where each is built.

Pure Python (no keras, no project imports): ``pipeline.params`` validates against these tables, and every
stage imports params. The implementations read their entries from here: ``nets.classifier`` the backbones
and heads, ``losses.get_loss`` the losses, ``nets.segmenter.build_segmenter`` the segmenter architectures.
Builders are named by import path ("module:attribute", loaded on use), so listing one costs no import.

Adding a segmenter architecture is one module with a builder and one line in ``SEGMENTERS``
(``register_segmenter`` does the same at run time, for tests and plugins; ``register_backbone`` for backbones).
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple


class Backbone(NamedTuple):
    """How to build one classifier backbone and where its parts are."""

    application: str  # the keras.applications constructor, e.g. "ResNet50", or "module:function" called the same way
    preprocessing: str  # BackbonePreprocess mode matching its ImageNet weights
    last_conv_layer: str  # the last convolutional feature map, for Grad-CAM
    stage_starts: tuple[str, ...]  # layer-name prefixes opening each stage after the stem, input to output
    residual_bn: str | None = None  # regex: the BatchNormalization closing each residual branch (ResNet v1)


# classifier.backbone
BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone("ResNet50", "caffe", "conv5_block3_out",
                         ("conv2_", "conv3_", "conv4_", "conv5_"), r"conv\d_block\d+_3_bn"),
    "resnet50v2": Backbone("ResNet50V2", "tf", "post_relu", ("conv2_", "conv3_", "conv4_", "conv5_")),
    "densenet121": Backbone("DenseNet121", "torch", "relu", ("conv2_", "conv3_", "conv4_", "conv5_")),
    "efficientnetb0": Backbone("EfficientNetB0", "none", "top_activation", tuple(f"block{i}" for i in range(1, 8))),
}


def _add(table: dict[str, Any], what: str, name: str, entry: Any) -> None:
    """``table[name] = entry``; ValueError naming ``what`` when the name is taken."""
    if name in table:
        raise ValueError(f"{what} {name!r} is already registered")
    table[name] = entry


def register_backbone(name: str, backbone: Backbone) -> None:
    """Add a backbone under ``name``; ValueError when the name is taken."""
    _add(BACKBONES, "backbone", name, backbone)


def unregister_backbone(name: str) -> None:
    """Remove a backbone ``register_backbone`` added."""
    del BACKBONES[name]


# classifier.head: average (pooling + dense) | max_cell (the slice scores as its most tumorous cell);
# built in ``nets.classifier``.
HEADS = ("average", "max_cell")

# segmenter.loss -> its keras.losses.Loss class; ``losses.get_loss`` passes it the params it takes
# (alpha, beta, gamma).
LOSSES: dict[str, str] = {
    "dice": "pipeline.models.losses:SoftDiceLoss",
    "tversky": "pipeline.models.losses:TverskyLoss",
    "focal_tversky": "pipeline.models.losses:FocalTverskyLoss",
    "bce_dice": "pipeline.models.losses:BCEDiceLoss",
}


class Segmenter(NamedTuple):
    """One segmenter architecture.

    build: "module:function", ``function(image_size, filters, out_channels[, in_channels]) -> keras.Model`` taking
    [B, S, S, C] uint8 values 0..255 as float32 (standardising per image inside the model) and giving
    [B, S, S, out_channels] sigmoid probabilities, float32; description: what the sidecar records. C is 3, or with
    ``segmenter.context_slices`` n (2.5-D input, ``pipeline.data.context``) 3 x (2n + 1), passed as ``in_channels``.
    For ``segmenter.deep_supervision`` its decoder levels' layers are named "dec2_...", "dec3_..." (level l at
    1/2^(l-1) of the size; ``nets.deep_supervision``), as the built-in ones name them.
    """

    build: str
    description: str


# A pixel is tumour when the segmenter's probability is at or above it, whatever the architecture
# (``pipeline.models.nets.segmenter`` says where it goes; here so keras-free inference reads it too).
PIXEL_THRESHOLD = 0.5  # segmenter probability in [0, 1]


# segmenter.arch
SEGMENTERS: dict[str, Segmenter] = {
    "resunet": Segmenter("pipeline.models.nets.resunet:build_resunet", "ResUNet (Zhang, Liu, Wang 2018)"),
    "unet": Segmenter("pipeline.models.nets.unet:build_unet", "U-Net (Ronneberger et al. 2015; Buda et al. 2019)"),
}


def register_segmenter(name: str, segmenter: Segmenter) -> None:
    """Add an architecture under ``name``; ValueError when the name is taken."""
    _add(SEGMENTERS, "segmenter architecture", name, segmenter)


def unregister_segmenter(name: str) -> None:
    """Remove an architecture ``register_segmenter`` added."""
    del SEGMENTERS[name]


def load(path: str) -> Any:
    """The object an import path "package.module:attribute" names (imports the module)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
