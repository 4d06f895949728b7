"""Model builders. Importing this package registers every custom object the saved models use
(layers, losses, metrics), so ``keras.saving.load_model(path, safe_mode=True)`` works after
``import pipeline.nets``."""

from __future__ import annotations

import pipeline.losses  # noqa: F401  (registers the losses)
import pipeline.seg_metrics  # noqa: F401  (registers DiceAt, IoUAt)
from pipeline.nets.classifier import BACKBONES, build_classifier, set_trainable_stages
from pipeline.nets.layers import BackbonePreprocess, PerImageStandardization
from pipeline.nets.resunet import build_resunet

__all__ = ["BACKBONES", "BackbonePreprocess", "PerImageStandardization", "build_classifier", "build_resunet",
           "set_trainable_stages"]
