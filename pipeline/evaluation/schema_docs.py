"""docs/outputs.md's metrics section, generated from pipeline/evaluation/schema.py.

``python -m pipeline.evaluation.schema_docs`` rewrites the section between its markers; tests/test_outputs_schema.py
fails when the checked-in text differs from what this module generates.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pipeline.evaluation.schema import HEADLINE, METRICS, REGION_METRICS, Group, SchemaError, describe
from pipeline.paths import METRICS_FULL_JSON, METRICS_JSON, REGION_METRICS_JSON, REPORTS_DIR

log = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "outputs.md"
BEGIN = "<!-- metrics schema: generated from pipeline/evaluation/schema.py by `python -m pipeline.evaluation.schema_docs` -->"
END = "<!-- end of metrics schema -->"


def markdown() -> str:
    """The metrics section of docs/outputs.md (paths relative to reports/), from HEADLINE and METRICS."""
    short, full = (path.relative_to(REPORTS_DIR).as_posix() for path in (METRICS_JSON, METRICS_FULL_JSON))
    lines = [f"- `{short}` — DVC metrics of `evaluate` (`dvc exp show`, `dvc metrics diff`): the headline, "
             "flat: the validation (out-of-fold) AUC and Dice, then the test patients' figures:"]
    lines += [f"  - `{key}` — {describe(path)} (`{path}` of `{full}`)" for key, path in HEADLINE.items()]
    lines.append(f"- `{full}` — {METRICS.doc}:")
    lines += _group_lines(METRICS, "", 1, {})
    lines.append(f"- `{REGION_METRICS_JSON.relative_to(REPORTS_DIR).as_posix()}` — {REGION_METRICS.doc}:")
    lines += _group_lines(REGION_METRICS, "", 1, {})
    return "\n".join(lines)


def _group_lines(group: Group, prefix: str, depth: int, seen: dict[str, dict]) -> list[str]:
    """Nested list lines; a group shown before is referred to, not repeated (also when it has fewer or more keys)."""
    lines = []
    indent = "  " * depth
    for key, spec in group.keys.items():
        path = f"{prefix}{key}"
        if not isinstance(spec, Group):
            lines.append(f"{indent}- `{key}` — {spec}")
            continue
        items = spec.keys.items()
        same = next((p for p, keys in seen.items() if keys.items() == items), None)
        fewer = next((p for p, keys in seen.items() if items < keys.items()), None)
        more = next((p for p, keys in seen.items() if keys.items() < items), None)
        if same:
            lines.append(f"{indent}- `{key}` — {spec.doc}; the keys of `{same}`")
        elif fewer:
            left_out = ", ".join(f"`{k}`" for k in seen[fewer] if k not in spec.keys)
            lines.append(f"{indent}- `{key}` — {spec.doc}; the keys of `{fewer}` but {left_out}")
        elif more:
            lines.append(f"{indent}- `{key}` — {spec.doc}; the keys of `{more}`, and:")
            extra = Group(spec.doc, {k: v for k, v in spec.keys.items() if k not in seen[more]})
            lines += _group_lines(extra, f"{path}.", depth + 1, seen)
        else:
            seen[path] = spec.keys
            lines.append(f"{indent}- `{key}` — {spec.doc}:")
            lines += _group_lines(spec, f"{path}.", depth + 1, seen)
    return lines


def docs_section(text: str) -> str:
    """The generated block of a docs text, without its markers."""
    match = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    if match is None:
        raise SchemaError(f"{DOCS} has no generated metrics section ({BEGIN} ... {END})")
    return match.group(1)


def write_docs(path: Path = DOCS) -> None:
    """Rewrite the generated metrics section of docs/outputs.md."""
    text = path.read_text(encoding="utf-8")
    old = docs_section(text)
    path.write_text(text.replace(f"{BEGIN}\n{old}\n{END}", f"{BEGIN}\n{markdown()}\n{END}"), encoding="utf-8")
    log.info("rewrote the metrics section of %s", path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_docs()
