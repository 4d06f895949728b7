#!/usr/bin/env bash
# Quick start 1: install the pipeline into .venv and run it end to end on the bundled demo data.
# Ends with reports/index.html. Any extra arguments go to `dvc repro`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
dvc repro "$@"
echo "Report: $(pwd)/reports/index.html"
