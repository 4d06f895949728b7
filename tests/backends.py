"""The installed Keras backends, for tests that run something under each (in subprocesses)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

BACKENDS = ("tensorflow", "jax", "torch")
INSTALLED = tuple(b for b in BACKENDS if importlib.util.find_spec(b) is not None)


def on(backend: str) -> Any:
    """``backend`` as a test parameter that skips when its package is not installed."""
    return pytest.param(backend, marks=pytest.mark.skipif(backend not in INSTALLED, reason=f"{backend} is not installed"))
