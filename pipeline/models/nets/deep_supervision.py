"""Deep supervision (nnU-Net; Lee et al. 2015): decoder levels below the top learn the mask too, in training only.

``segmenter.deep_supervision: n`` gives the n decoder levels under the top one (dec2 .. dec{n+1}, at 1/2 .. 1/2^n
of the image size) each a head of their own while the segmenter trains:

    decoder level l output [B, S/2^(l-1), S/2^(l-1), F_l]
      -> 1x1 conv to out_channels logits -> bilinear up-sampling x2^(l-1) -> sigmoid, float32  ("deep_l")

The training model gives the main output and the heads side by side on the channel axis,
[B, S, S, out_channels x (n + 1)], main first, so it stays a one-output model: the same batches, the same
metric names (``DiceAt`` and ``IoUAt`` score as many channels as the mask has: the main output) and the same
checkpoints. ``DeepSupervisedLoss`` scores each block of channels against the one mask with the segmenter's
loss and sums them with weights halving per level, as nnU-Net's (1, 1/2, 1/4 ...), normalised to sum 1. The
saved segmenter is the plain model, without the heads: evaluate, predict and the export never see them.

A decoder level's output is found by name: the last layer of the model whose name starts "dec{l}_"
(every architecture in ``pipeline.models.registry.SEGMENTERS`` names its decoder levels so).
"""

from __future__ import annotations

from typing import Any

import keras


def level_weights(levels: int) -> list[float]:
    """The loss weights of the main output and ``levels`` heads: 1, 1/2, 1/4 ... normalised to sum 1."""
    raw = [0.5 ** i for i in range(levels + 1)]
    return [w / sum(raw) for w in raw]


def decoder_level_output(model: keras.Model, level: int) -> keras.KerasTensor:
    """The output of decoder level ``level`` (the last layer named "dec{level}_..."); ValueError when none."""
    layers = [layer for layer in model.layers if layer.name.startswith(f"dec{level}_")]
    if not layers:
        raise ValueError(f"segmenter {model.name!r} has no decoder level {level} (no layer named 'dec{level}_...')")
    return layers[-1].output


def with_deep_supervision(model: keras.Model, levels: int) -> keras.Model:
    """A training model around the segmenter ``model`` (sharing its layers) whose output is the main output and
    ``levels`` deep heads, concatenated on the channel axis: [B, S, S, C x (levels + 1)]. ``levels`` 0: ``model``."""
    if levels == 0:
        return model
    main = model.output
    size, channels = main.shape[1], main.shape[-1]
    outputs = [main]
    for level in range(2, levels + 2):
        x = decoder_level_output(model, level)
        factor = size // x.shape[1]
        x = keras.layers.Conv2D(channels, 1, dtype="float32", name=f"deep_{level}_logits")(x)  # float32, as the main head
        x = keras.layers.UpSampling2D(factor, interpolation="bilinear", dtype="float32", name=f"deep_{level}_up")(x)
        outputs.append(keras.layers.Activation("sigmoid", dtype="float32", name=f"deep_{level}")(x))
    joined = keras.layers.Concatenate(name="deep_supervision", dtype="float32")(outputs)
    return keras.Model(model.input, joined, name=f"{model.name}_deep_supervision")


@keras.saving.register_keras_serializable(package="pipeline")
class DeepSupervisedLoss(keras.losses.Loss):
    """Sum over the blocks of a deep-supervised output of ``level_weights(levels)[i] x loss(y_true, block i)``.

    y_true [B, H, W, C]; y_pred [B, H, W, C x (levels + 1)], block i = channels i*C .. (i+1)*C - 1."""

    def __init__(self, loss: keras.losses.Loss | dict[str, Any], levels: int, name: str = "deep_supervised",
                 **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.loss = keras.losses.deserialize(loss) if isinstance(loss, dict) else loss
        self.levels = int(levels)
        self.factors = level_weights(self.levels)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        channels = y_true.shape[-1]
        if y_pred.shape[-1] != channels * (self.levels + 1):
            raise ValueError(f"a {self.levels}-level deep-supervised output has {channels * (self.levels + 1)} "
                             f"channels for a {channels}-channel mask, got {y_pred.shape[-1]}")
        return sum(weight * self.loss.call(y_true, y_pred[..., i * channels:(i + 1) * channels])
                   for i, weight in enumerate(self.factors))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "loss": keras.losses.serialize(self.loss), "levels": self.levels}
