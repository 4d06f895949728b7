"""Build the self-contained HTML report (reports/index.html) from the evaluate and training outputs.

The story, one module a step:
1. ``inputs.load_inputs`` reads every file docs/outputs.md lists (only eval/metrics_full.json is required;
   anything else missing becomes a note in the report);
2. ``sections.report_context`` turns them into plain values for the template, drawing the figures
   (``figures``) and formatting every number (``formatting``);
3. ``render`` (here) fills template.html.j2 (autoescaped; CSS, JS and every image inlined);
4. ``build_report`` (here) writes the page atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from pipeline.params import Params
from pipeline.report.formatting import count, num, pct
from pipeline.report.inputs import git_revision, load_inputs
from pipeline.report.sections import report_context
from pipeline.writing import atomic_path

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


# --- render -------------------------------------------------------------------------------------------

def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=num, pct=pct, count=count)
    return env


def render(context: Mapping[str, Any]) -> str:
    """Fill the template; CSS and JS are inlined from report.css and report.js."""
    assets = {"css": Markup((HERE / "report.css").read_text(encoding="utf-8")),
              "js": Markup((HERE / "report.js").read_text(encoding="utf-8"))}
    return _environment().get_template("template.html.j2").render(**context, **assets)


# --- build --------------------------------------------------------------------------------------------

def build_report(reports_dir: str | Path, slices_dir: str | Path, split_csv: str | Path, models_dir: str | Path,
                 params: Params, out_html: str | Path, *, repo_dir: str | Path | None = None) -> Path:
    """Write the self-contained HTML report to `out_html` (atomically) and return its path.

    reports_dir: holds eval/ (metrics_full.json, tables, images) and the dvclive folders (train_classifier/,
    train_segmenter/).
    repo_dir: where to ask git for the revision (default: the current directory).
    """
    start = time.perf_counter()
    inputs = load_inputs(Path(reports_dir), Path(slices_dir), Path(split_csv), Path(models_dir))
    for path in inputs.missing:
        log.info("report: not found, shown as missing: %s", path)
    context = report_context(inputs, params, git_revision(repo_dir if repo_dir is not None else Path.cwd()))
    html = render(context)
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
        tmp.chmod(0o644)  # a page to share: readable by all, like any file the user would save
    log.info("report written to %s (%.0f KiB, %.1f s)", out_html, len(html.encode()) / 1024,
             time.perf_counter() - start)
    return out_html
