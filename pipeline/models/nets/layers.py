"""Small registered layers that put input normalisation inside the models.

Both layers take uint8-range values (0..255 as float32), channels last, and compute in float32
even under a mixed-precision policy (0..255 squared overflows float16). They are registered
under the package "pipeline", so a saved model loads with
``keras.saving.load_model(path, safe_mode=True)`` once this module is imported; no Lambda layers.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

# ImageNet statistics used by keras.applications' preprocess_input (imagenet_utils).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # 0..255 units, BGR order
_TORCH_MEAN_RGB = (0.485, 0.456, 0.406)  # 0..1 units
_TORCH_STD_RGB = (0.229, 0.224, 0.225)

PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@keras.saving.register_keras_serializable(package="pipeline")
class BackbonePreprocess(keras.layers.Layer):
    """A keras.applications backbone's ``preprocess_input`` as a layer.

    Input and output [B, H, W, 3] float32; the input holds uint8-range values in the store's
    channel order, which is taken to be the "RGB" order the backbones expect.

    Modes (as in ``keras.applications.imagenet_utils``):
      - "caffe": RGB->BGR flip, then subtract the ImageNet mean per channel (ResNet50);
      - "tf": x / 127.5 - 1, range [-1, 1] (ResNet50V2);
      - "torch": x / 255, then (x - ImageNet mean) / ImageNet std per channel (DenseNet121);
      - "none": identity (EfficientNet rescales inside its own graph).
    """

    def __init__(self, mode: str = "caffe", **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"BackbonePreprocess: mode {mode!r} is not one of {', '.join(PREPROCESSING_MODES)}")
        self.mode = mode

    def call(self, x: Any) -> Any:
        x = ops.cast(x, "float32")
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(np.array(_CAFFE_MEAN_BGR, np.float32))
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            x = x / 255.0
            mean = ops.convert_to_tensor(np.array(_TORCH_MEAN_RGB, np.float32))
            std = ops.convert_to_tensor(np.array(_TORCH_STD_RGB, np.float32))
            return (x - mean) / std
        return x

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="pipeline")
class PerImageStandardization(keras.layers.Layer):
    """Per-image, per-channel standardisation: (x - mean) / max(std, epsilon) over H, W.

    Input and output [B, H, W, C] float32. ``epsilon`` is in input units (default 1.0 = one
    uint8 grey level): a constant channel maps to zeros instead of dividing by zero, and a
    nearly constant one is not blown up to unit variance.
    """

    def __init__(self, epsilon: float = 1.0, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ValueError(f"PerImageStandardization: epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def call(self, x: Any) -> Any:
        x = ops.cast(x, "float32")
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True))
        return (x - mean) / ops.maximum(std, self.epsilon)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}
