"""The report's inputs: every file docs/outputs.md lists, read into ``ReportInputs``.

Only eval/metrics_full.json is required; anything else missing or unreadable is listed in
``ReportInputs.missing`` and becomes a note in the report. ``git_revision`` reads the revision shown
in the page's header.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import paths
from pipeline.errors import InputError
from pipeline.report.formatting import get

log = logging.getLogger(__name__)


@dataclass
class TrainingLog:
    """One model's dvclive output: metric -> split -> table (step, metric), learning rate, summary."""

    curves: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    learning_rate: pd.DataFrame | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.curves


@dataclass
class ReportInputs:
    """Everything the report reads; optional pieces are None or empty when their file is missing."""

    reports_dir: Path
    metrics: dict[str, Any]
    threshold: dict[str, Any]
    slices: pd.DataFrame | None
    patients: pd.DataFrame | None
    plots: dict[str, pd.DataFrame]
    gallery: list[dict[str, Any]]
    cases: list[dict[str, Any]]
    training: dict[str, TrainingLog]
    manifest: pd.DataFrame | None
    split: pd.DataFrame | None
    skipped: pd.DataFrame | None
    sidecars: dict[str, dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    # data.target "regions" only (absent otherwise, and not missed): eval/regions.json and eval/region_cases.json
    region_metrics: dict[str, Any] = field(default_factory=dict)
    region_cases: list[dict[str, Any]] = field(default_factory=list)


def reported_splits(m: Mapping[str, Any]) -> tuple[str, ...]:
    """The splits the report shows, the headline's first: ("test", "val"), or ("val",) (out of fold) when the run
    has no test split (split.test 0 with folds: evaluate writes the test metrics as nulls)."""
    no_test = get(m, "test") is not None and get(m, "test", "cascade", "n_patients") is None
    return ("val",) if no_test else ("test", "val")


def headline_split(m: Mapping[str, Any]) -> str:
    """The split the headline cards, the Dice figure and the pictures are of: "test", or "val" without a test split."""
    return reported_splits(m)[0]


def _under(reports_dir: Path, path: Path) -> Path:
    """`path` (written relative to the repository root in paths.py) relative to `reports_dir`."""
    return Path(reports_dir) / path.relative_to(paths.REPORTS_DIR)


def load_inputs(reports_dir: Path, slices_dir: Path, split_csv: Path, models_dir: Path) -> ReportInputs:
    """Read the evaluate/training outputs; raises InputError only when metrics_full.json is missing or bad."""
    reports_dir = Path(reports_dir)
    eval_dir = _under(reports_dir, paths.EVAL_DIR)
    metrics_path = _under(reports_dir, paths.METRICS_FULL_JSON)
    if not metrics_path.exists():
        raise InputError(metrics_path, "missing: run the evaluate stage before the report")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(metrics_path, f"not readable as JSON ({e})") from None
    if not isinstance(metrics, dict):
        raise InputError(metrics_path, "not a JSON object of metrics")
    missing: list[str] = []
    plots = {}
    for kind in ("roc", "pr", "calibration", "confusion"):
        for split in reported_splits(metrics):  # no test split: no test plots
            table = _read_csv(eval_dir / "plots" / f"{kind}_{split}.csv", missing)
            if table is not None:
                plots[f"{kind}_{split}"] = table
    gallery = _read_json(eval_dir / "gallery.json", [], missing)
    cases = _read_json(eval_dir / "cases.json", [], missing)
    return ReportInputs(
        reports_dir=reports_dir,
        metrics=metrics,
        threshold=_read_json(eval_dir / "threshold.json", {}, missing) or {},
        slices=_read_csv(eval_dir / "slices.csv", missing),
        patients=_read_csv(eval_dir / "patients.csv", missing),
        plots=plots,
        gallery=[g for g in gallery if isinstance(g, dict)] if isinstance(gallery, list) else [],
        cases=[c for c in cases if isinstance(c, dict)] if isinstance(cases, list) else [],
        training={name: read_training_log(_under(reports_dir, d), missing)
                  for name, d in (("classifier", paths.TRAIN_CLASSIFIER_DIR), ("segmenter", paths.TRAIN_SEGMENTER_DIR))},
        manifest=_read_csv(Path(slices_dir) / "manifest.csv", missing),
        split=_read_csv(Path(split_csv), missing),
        skipped=_read_csv(Path(slices_dir) / "skipped.csv", missing),
        sidecars={name: _read_json(Path(models_dir) / f"{name}.json", {}, missing) or {}
                  for name in ("classifier", "segmenter")},
        missing=missing,
        region_metrics=_read_json(_under(reports_dir, paths.REGION_METRICS_JSON), {}, None) or {},
        region_cases=_read_json(eval_dir / "region_cases.json", [], None) or [],
    )


def read_training_log(live_dir: Path, missing: list[str] | None = None) -> TrainingLog:
    """Read a dvclive folder: plots/metrics/{train,val}/<metric>.tsv, learning_rate.tsv, metrics.json."""
    plots = Path(live_dir) / "plots" / "metrics"
    out = TrainingLog()
    for split in ("train", "val"):
        for tsv in sorted((plots / split).glob("*.tsv")):
            table = _read_csv(tsv, missing, sep="\t")
            if table is not None and {"step", tsv.stem} <= set(table.columns) and len(table):
                out.curves.setdefault(tsv.stem, {})[split] = table
    priority = ["loss", "auc", "dice", "accuracy", "iou"]

    def rank(name: str) -> tuple[int, str]:
        return (priority.index(name) if name in priority else len(priority), name)

    out.curves = {name: out.curves[name] for name in sorted(out.curves, key=rank)}
    if (plots / "learning_rate.tsv").exists():
        out.learning_rate = _read_csv(plots / "learning_rate.tsv", missing, sep="\t")
    out.summary = _read_json(Path(live_dir) / "metrics.json", {}, missing if out.curves else None) or {}
    if not out.curves and missing is not None:
        missing.append(f"{live_dir} (training curves)")
    return out


def _read_json(path: Path, default: Any, missing: list[str] | None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing is not None:
            missing.append(str(path))
        return default
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("could not read %s: %s", path, e)
        if missing is not None:
            missing.append(f"{path} (unreadable)")
        return default


def _read_csv(path: Path, missing: list[str] | None, sep: str = ",") -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, sep=sep, dtype={"patient_id": str, "path": str, "reason": str})
    except FileNotFoundError:
        if missing is not None:
            missing.append(str(path))
    except (OSError, ValueError, pd.errors.ParserError) as e:
        log.warning("could not read %s: %s", path, e)
        if missing is not None:
            missing.append(f"{path} (unreadable)")
    return None


def git_revision(repo_dir: str | Path) -> str:
    """`git rev-parse --short HEAD` plus "-dirty" when tracked files changed; "unknown" outside git.

    Read-only: GIT_OPTIONAL_LOCKS=0 keeps `git status` from refreshing the index.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True,
                                  timeout=20, env=env, check=False)
        except (OSError, subprocess.SubprocessError):
            return None

    rev = git("rev-parse", "--short", "HEAD")
    if rev is None or rev.returncode != 0 or not rev.stdout.strip():
        return "unknown"
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = status is None or status.returncode != 0 or bool(status.stdout.strip())
    return rev.stdout.strip() + ("-dirty" if dirty else "")
