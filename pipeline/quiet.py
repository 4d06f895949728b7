"""A quiet console for ``python -m pipeline``: our log lines and errors, no library start-up noise.

Imported by ``pipeline.__main__`` before any library, for the command line only (importing ``pipeline``
changes nothing). It

- sets ``TF_CPP_MIN_LOG_LEVEL=3`` (unless already set): no TensorFlow C++ log lines such as "failed call
  to cuInit" on a machine without a GPU, or "Memory patch applied";
- loads TensorFlow, when something imports it, with file descriptor 2 captured: the lines it prints
  before its logging is set up (oneDNN, CUDA drivers, CPU instructions) go to the debug log, anything
  else is written back to stderr unchanged;
- keeps absl's Python logger to errors, sends TensorFlow's tf.function retracing warning (k fold models
  trace k predict functions) to the debug log, and logs each distinct Python warning once, in one line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

NOISY_IMPORTS = ("tensorflow",)
# Start-up chatter of absl / TensorFlow C++ code: "I0000 00:00:... port.cc:153] ..." and its friends.
_NOISE = re.compile(r"^([IW]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::InitializeLog|"
                    r"To enable the following instructions:)")


@contextlib.contextmanager
def stderr_captured(what: str) -> Iterator[None]:
    """Run the block with file descriptor 2 (where C/C++ code writes) going to a temporary file; then log
    the start-up noise in it at debug level and write everything else back to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
    kept = []
    for line in text.splitlines(keepends=True):
        if _NOISE.match(line):
            log.debug("%s: %s", what, line.rstrip())
        elif line.strip():
            kept.append(line)
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


class _QuietLoader:
    """Wraps a module's loader so that executing the module runs under ``stderr_captured``."""

    def __init__(self, loader: Any, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with stderr_captured(f"import {self._name}"):
            self._loader.exec_module(module)

    def __getattr__(self, attr: str) -> Any:  # resource readers, get_data, is_package ...
        return getattr(self._loader, attr)


class _QuietImports:
    """A meta path finder that finds nothing itself: it hands NOISY_IMPORTS' specs out with a _QuietLoader."""

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in NOISY_IMPORTS or self._searching:
            return None
        self._searching = True  # the search below goes through sys.meta_path again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._searching = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, name)
        return spec


class _RetracingToDebug(logging.Filter):
    """TensorFlow's "N out of the last M calls to <function> triggered tf.function retracing" warning, to the
    debug log: scoring with the k fold models of a cross-validation traces one predict function per model,
    which is expected, not a problem to report."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "triggered tf.function retracing" in record.getMessage():
            log.debug("tensorflow: %s", record.getMessage())
            return False
        return True


_seen_warnings: set[tuple[type, str]] = set()


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """warnings.showwarning: each distinct warning once, as one log line."""
    key = (category, str(message))
    if key not in _seen_warnings:
        _seen_warnings.add(key)
        logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


def quiet() -> None:
    """Set all of the above up (idempotent)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImports())
    logging.getLogger("absl").setLevel(logging.ERROR)
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _RetracingToDebug) for f in tf_logger.filters):
        tf_logger.addFilter(_RetracingToDebug())
    warnings.showwarning = _log_warning


quiet()
