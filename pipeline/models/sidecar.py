"""A model's sidecar: the JSON next to its model file (same stem) that training writes (input size,
channels, intensity scaling, role, ...). Plain JSON reading, no keras: an ONNX-only install reads it too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import InputError


def load_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The sidecar of ``model_path`` (``<stem>.json`` beside it) as a dict; InputError naming it when missing
    or unreadable."""
    path = Path(model_path).with_suffix(".json")
    try:
        sidecar = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "model sidecar JSON missing (it is written next to the .keras file by training)") from None
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable model sidecar ({type(e).__name__}: {e})") from None
    if not isinstance(sidecar, dict):
        raise InputError(path, "not a model sidecar (expected a JSON object)")
    return sidecar
