#!/usr/bin/env bash
# Quick start 2: install the dev, jax and export (ONNX) extras into .venv and run the linter and the test suite.
# Browser tests of the report use Debian's chromium; it is installed here when apt is at hand
# (as root), otherwise those tests skip. The PyTorch-backend tests need PyTorch's CPU build
# (torch==X+cpu); it is installed when pip can find one without downloading CUDA (a local wheel
# folder or PyTorch's CPU index in pip's configuration), otherwise those tests skip.
# Any extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser tests of the report will be skipped" >&2
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[dev,jax,export]"
python -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
  || echo "note: no CPU build of PyTorch found; the torch-backend tests will be skipped" >&2
ruff check .
python -m pytest "$@"
