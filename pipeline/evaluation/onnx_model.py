"""A model exported to ONNX (``python -m pipeline export``), run by ONNX Runtime on the CPU.

``OnnxModel`` offers the part of a ``keras.Model`` the cascade uses (``predict_on_batch``, ``input_shape``,
``output_shape``), so ``pipeline.evaluation.cascade`` gates, segments and post-processes with one code path
whichever runs the models. Imports onnxruntime and NumPy only: no TensorFlow, no keras.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.errors import InputError

ONNX_SUFFIX = ".onnx"


class OnnxModel:
    """An ONNX Runtime CPU session of a one-input, one-output model.

    input_shape / output_shape: tuples with None for dynamic axes (the batch), as Keras gives them,
    e.g. (None, S, S, 3) -> (None, 1) for the classifier.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime

        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no optimiser chatter on the console
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(os.fspath(self.path), options, providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{len(inputs)} inputs and {len(outputs)} outputs; a bundle model has one of each")
        self.input_name = inputs[0].name
        self.input_shape = _shape(inputs[0].shape)
        self.output_shape = _shape(outputs[0].shape)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        """float32 [B, ...input] -> float32 [B, ...output]."""
        return self.session.run(None, {self.input_name: np.asarray(batch, np.float32)})[0]


def _shape(dims: list) -> tuple:
    """ONNX dims (ints, symbolic names, None) as a Keras-style shape: None for anything not a number."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in dims)


def load_onnx_model(path: str | Path) -> OnnxModel:
    """An ``OnnxModel`` of ``path``; InputError naming the file when it is missing or no readable ONNX model,
    or when onnxruntime is not installed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model file not found; `python -m pipeline export -o DIR` writes an ONNX bundle")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise InputError(path, "an ONNX model, but onnxruntime is not installed (pip install onnxruntime)") from None
    try:
        return OnnxModel(path)
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
        raise InputError(path, f"not a readable ONNX model ({type(e).__name__}: {e})") from None
