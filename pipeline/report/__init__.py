"""The `report` stage's logic: a self-contained HTML report built from the evaluate and training outputs."""

from pipeline.report.build import build_report

__all__ = ["build_report"]
