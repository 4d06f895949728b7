"""The installed Keras backends, for tests that run something under each (in subprocesses)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

BACKENDS = ("tensorflow", "jax", "torch")
INSTALLED = tuple(b for b in BACKENDS if importlib.util.find_spec(b) is not None)


def on(backend: str) -> Any:
    """``backend`` as a test parameter that skips when its package is not installed."""
    return pytest.param(backend, marks=pytest.mark.skipif(backend not in INSTALLED, reason=f"{backend} is not installed"))


def thread_env(backend: str) -> dict[str, str]:
    """Environment variables for a subprocess on ``backend``: under pytest-xdist (one worker per core) PyTorch
    gets one OpenMP thread, unless OMP_NUM_THREADS is set. Its default, a thread per core, spins on the core
    the other worker is using: tests/test_explain.py under PyTorch beside one busy process took 27-30 s so,
    15-16 s with one thread (15-18 s either way on an idle machine)."""
    if backend == "torch" and "PYTEST_XDIST_WORKER" in os.environ and "OMP_NUM_THREADS" not in os.environ:
        return {"OMP_NUM_THREADS": "1"}
    return {}
