"""Number and text formatting for the report: every value shown goes through these, so a missing
or non-finite value always reads "—"."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

MISSING = "—"


def as_float(value: Any) -> float | None:
    """A finite float, or None for None, NaN, inf, booleans and non-numbers."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def num(value: Any, digits: int = 3) -> str:
    """A number with `digits` decimals, or "—"."""
    x = as_float(value)
    if x is None:
        return MISSING
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage ("87.5%"), or "—"."""
    x = as_float(value)
    return MISSING if x is None else f"{100 * x:.{digits}f}%"


def count(value: Any) -> str:
    """A whole number with thousands separators, or "—"."""
    x = as_float(value)
    return MISSING if x is None else f"{int(round(x)):,}"


def ci(low: Any, high: Any, digits: int = 3) -> str:
    """"[low, high]" or "" when either end is missing."""
    lo, hi = as_float(low), as_float(high)
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and hi is not None else ""


def get(d: Any, *keys: str, default: Any = None) -> Any:
    """Nested lookup that tolerates missing keys and non-dicts."""
    for key in keys:
        if not isinstance(d, Mapping) or key not in d:
            return default
        d = d[key]
    return d


def truthy(value: Any) -> bool:
    """Booleans as pandas or JSON may hand them over (True, "True", "true", 1)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    x = as_float(value)
    return bool(x) if x is not None else False


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"
