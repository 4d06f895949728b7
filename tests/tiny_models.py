"""Tiny stand-ins for the project's models, built in seconds: one classifier factory for every test that
needs a small CNN with the real classifier's contract ([B, S, S, 3] uint8-range float32 in, [B, 1]
sigmoid "tumour_probability" out), a classifier backbone to register in place of ResNet50
(``register_tiny_backbone``), and the tiny trained model bundle the predict tests share (the session
fixture ``tiny_bundle`` in conftest.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

LAST_CONV = "last_conv"  # the name of the last convolution (the layer Grad-CAM explains)


def tiny_classifier(size: int, widths: Sequence[int] = (16, 16), *, strides: int = 1, padding: str = "same",
                    pool: bool = False, scale: float | None = 1 / 255, offset: float = 0.0,
                    preprocess: str | None = None, batchnorm: bool = False, dropout: float = 0.0,
                    name: str | None = None) -> keras.Model:
    """A CNN classifier: [B, size, size, 3] (0..255) -> [B, 1] probability.

    Input scaling: ``preprocess`` (a ``BackbonePreprocess`` mode, e.g. "caffe") or ``x * scale + offset``
    (``scale=None``: none). Then a 3x3 convolution per entry of ``widths`` (ReLU, or BatchNorm then ReLU
    with ``batchnorm``), 2x2 max pooling between them with ``pool``; the last one is named ``LAST_CONV``
    and the others ``conv<i>``. Global average pooling, ``dropout``, a float32 sigmoid unit. Layers are
    created in that order, so a seed set before the call gives the same weights every time.
    """
    image = keras.Input((size, size, 3), name="image")
    if preprocess:
        from pipeline.models.nets.layers import BackbonePreprocess

        x = BackbonePreprocess(preprocess, name="preprocess")(image)
    elif scale is not None:
        x = keras.layers.Rescaling(scale, offset)(image)
    else:
        x = image
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        x = keras.layers.Conv2D(width, 3, strides=strides, padding=padding, activation=None if batchnorm else "relu",
                                name=LAST_CONV if last else f"conv{i}")(x)
        if batchnorm:
            x = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(x))
        if pool and not last:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    probability = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="tumour_probability")(x)
    return keras.Model(image, probability, name=name)


TINY_BACKBONE = "tiny_resnet"  # the name ``register_tiny_backbone`` registers it under (classifier.backbone)


def tiny_backbone(include_top: bool = False, weights: str | None = None, input_tensor=None) -> keras.Model:
    """ResNet50 in miniature, called as keras.applications' constructors are (random init only): a strided
    3x3 stem and one residual block, each convolution followed by BatchNormalization, layers named as
    ResNet50's (the branch closes with "conv2_block1_2_bn"; the last map is "conv2_block1_out")."""
    if include_top or weights is not None:
        raise ValueError("the tiny backbone has no top and no pretrained weights")
    bn = dict(epsilon=1.001e-5)  # as keras.applications.ResNet50
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1_conv")(input_tensor)
    x = keras.layers.Activation("relu", name="conv1_relu")(keras.layers.BatchNormalization(**bn, name="conv1_bn")(x))
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv2_block1_1_conv")(x)
    y = keras.layers.BatchNormalization(**bn, name="conv2_block1_1_bn")(y)
    y = keras.layers.Activation("relu", name="conv2_block1_1_relu")(y)
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv2_block1_2_conv")(y)
    y = keras.layers.BatchNormalization(**bn, name="conv2_block1_2_bn")(y)
    x = keras.layers.Activation("relu", name="conv2_block1_out")(keras.layers.Add(name="conv2_block1_add")([x, y]))
    return keras.Model(keras.utils.get_source_inputs(input_tensor), x, name="tiny_resnet")


def register_tiny_backbone() -> None:
    """Register ``tiny_backbone`` as the classifier backbone ``TINY_BACKBONE`` (this module must be importable
    as ``tiny_models``, i.e. tests/ on sys.path)."""
    from pipeline.models import registry

    registry.register_backbone(TINY_BACKBONE, registry.Backbone(
        "tiny_models:tiny_backbone", "caffe", "conv2_block1_out", ("conv2_",), r"conv\d_block\d+_2_bn"))


BUNDLE_SIZE = 64  # px: the tiny bundle's input size


def bundle_training_slices(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Demo slices of patients the predict tests never predict on (BraTS 2021 volumes and kaggle_3m TIFFs
    written under ``root`` and read through the real readers): uint8 [N, 64, 64, 3], float32 masks
    [N, 64, 64, 1]; every tumour slice and a third of the others."""
    from pipeline.data.case import LGG_CHANNELS
    from pipeline.data.demo import write_brats2021, write_kaggle_3m
    from pipeline.data.sources import read_brats2021_case, read_lgg_case, reading_task
    from pipeline.params import DataParams

    write_brats2021(root / "brats", patients=4, slices=32, size=60, seed=11)
    write_kaggle_3m(root / "lgg", patients=4, slices_per_patient=24, image_size=BUNDLE_SIZE, seed=12)
    data = DataParams("brats2021", "", BUNDLE_SIZE, LGG_CHANNELS, (0.5, 99.5), 0.05, "fail")
    cases = [read_brats2021_case(p, reading_task(data), data.min_brain_fraction)
             for p in sorted((root / "brats").iterdir())]
    cases += [read_lgg_case(p, BUNDLE_SIZE) for p in sorted((root / "lgg").iterdir()) if p.is_dir()]
    images = np.concatenate([c.image for c in cases])
    masks = np.concatenate([c.mask for c in cases])
    positive = masks.any(axis=(1, 2))
    keep = positive | (np.cumsum(~positive) % 3 == 0)
    return images[keep], masks[keep].astype(np.float32)[..., None]


def write_tiny_bundle(root: Path) -> Path:
    """``root/models``: a model bundle at 64 px (LGG channel order), gate threshold 0: an untrained tiny
    classifier and a ResUNet (widths 16, 32) trained for 3 epochs on ``bundle_training_slices``."""
    from pipeline.data.case import LGG_CHANNELS
    from pipeline.data.task import TaskSpec
    from pipeline.evaluation.bundle import Bundle
    from pipeline.evaluation.postprocess import PostProcessing
    from pipeline.models.losses import get_loss
    from pipeline.models.nets import build_resunet
    from pipeline.models.training import save_model, set_batchnorm_momentum

    keras.utils.set_random_seed(0)
    images, masks = bundle_training_slices(root / "train")
    segmenter = build_resunet(BUNDLE_SIZE, (16, 32))
    set_batchnorm_momentum(segmenter, 0.8)  # a few dozen steps: moving statistics must catch up within them
    segmenter.compile(optimizer=keras.optimizers.Adam(3e-3), loss=get_loss("bce_dice"))
    segmenter.fit(images.astype(np.float32), masks, batch_size=16, epochs=3, verbose=0)
    sidecar = {"input_size": BUNDLE_SIZE, "channels": list(LGG_CHANNELS)}
    classifier = tiny_classifier(BUNDLE_SIZE, (16, 16), strides=2, padding="valid")
    save_model(classifier, root / "models" / "classifier.keras", {"kind": "classifier", **sidecar})
    save_model(segmenter, root / "models" / "segmenter.keras", {"kind": "segmenter", **sidecar, "threshold": 0.5})
    task = TaskSpec(BUNDLE_SIZE, LGG_CHANNELS, {"mode": "as_stored", "clip_percentiles": None})
    Bundle(task, 0.0, "youden", 0.5, PostProcessing()).write(root / "models")
    return root / "models"
