"""Fixed-shape batches for inference: every model call gets the same [batch_size, ...] shape.

NumPy only (no keras): ``pipeline.evaluation.cascade`` runs Keras models and ONNX Runtime sessions
(``pipeline.evaluation.onnx_model``) through these, and an ONNX-only install imports no deep-learning stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """x [n, ...] with zero rows appended up to [rows, ...]; x itself when n == rows (n > rows raises)."""
    if len(x) > rows:
        raise ValueError(f"{len(x)} rows do not fit in a batch of {rows}")
    if len(x) == rows:
        return x
    padded = np.zeros((rows, *x.shape[1:]), x.dtype)
    padded[:len(x)] = x
    return padded


def fixed_batches(images: np.ndarray, batch_size: int, dtype: Any = np.float32) -> Iterator[tuple[np.ndarray, int]]:
    """Consecutive batches of ``images`` [N, ...] as ``dtype`` [batch_size, ...]: yields (batch, n), rows n: zeros.

    Every batch has the same shape, the last one padded with zeros, so a compiled model step (XLA under
    JAX, or TensorFlow with jit_compile) is built once per model instead of once per distinct remainder.
    Callers keep ``batch[:n]``: in inference mode samples are independent, so padding changes nothing
    else. Batches are converted one at a time, so a memory-mapped store is never loaded whole.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=dtype)
        yield pad_rows(batch, batch_size), len(batch)
