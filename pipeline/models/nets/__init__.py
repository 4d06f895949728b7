"""Model builders. Importing this package registers every custom object the saved models use
(layers, losses, metrics), so ``keras.saving.load_model(path, safe_mode=True)`` works after
``import pipeline.models.nets``."""

from __future__ import annotations

import pipeline.models.losses  # noqa: F401  (registers the losses)
import pipeline.models.seg_metrics  # noqa: F401  (registers DiceAt, IoUAt)
from pipeline.models.nets.classifier import BACKBONES, build_classifier, set_trainable_stages
from pipeline.models.nets.layers import BackbonePreprocess, PerImageStandardization
from pipeline.models.nets.resunet import build_resunet
from pipeline.models.nets.segmenter import PIXEL_THRESHOLD, build_segmenter
from pipeline.models.nets.unet import build_unet

__all__ = ["BACKBONES", "PIXEL_THRESHOLD", "BackbonePreprocess", "PerImageStandardization", "build_classifier",
           "build_resunet", "build_segmenter", "build_unet", "set_trainable_stages"]
