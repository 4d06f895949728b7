"""Readers: one module per on-disk layout, each producing ``Case``s (see ``pipeline.data.case``).

Every layout is declared once, in its reader module, and listed in the registry
(``pipeline.data.sources.registry``): kaggle_3m TIFF folders (data.source "lgg" and "demo"), BraTS 2021
case folders ("brats2021", also 2017 and 2018), BraTS 2023 case folders ("brats2023"), Medical Segmentation
Decathlon task folders ("decathlon"); every reader maps its labels to the regions of ``pipeline.data.regions``.

``read_cases(data)`` streams the cases under ``data.root`` one at a time with the layout that
``data.source`` names, each read as ``reading_task(data)`` specifies and cut at data.min_brain_fraction
(every layout's reader takes a task spec and that cut; predict passes its bundle's spec and 0). With ``data.on_error: skip`` a case that raises InputError becomes a
``Skipped(path, reason)`` record and reading goes on.

``detect_layout(path)`` tells what a folder or file is, for commands that take any of them;
the single-case readers (``read_lgg_case``, ``read_brats2021_case``, ``read_decathlon_case``)
accept unlabelled cases for prediction (zero labels, ``meta["has_labels"] = False``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.data.case import Case
from pipeline.data.slices import Skipped  # the record write_store lists in skipped.csv
from pipeline.data.sources import registry
from pipeline.data.sources.brats import read_brats2021_case, read_decathlon_case
from pipeline.data.sources.layout import CaseReader
from pipeline.data.sources.lgg import read_lgg_case, read_lgg_slice
from pipeline.data.sources.volume import normalise_volume, to_scan_space
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError
from pipeline.params import DataParams

__all__ = [
    "Skipped", "detect_layout", "reading_task", "list_case_paths", "read_cases", "read_lgg_case", "read_lgg_slice",
    "read_brats2021_case", "read_decathlon_case", "normalise_volume", "to_scan_space",
]

log = logging.getLogger(__name__)


def read_cases(data: DataParams, root: Path | None = None) -> Iterator[Case | Skipped]:
    """Stream the cases under ``root`` (default ``data.root``).

    The next case is read in a background thread while the caller handles the current one
    (so reading overlaps storing); at most two cases are in memory, whatever their number.
    Every case is read with labels required (ingest is training data). An InputError for a case
    is raised (``data.on_error == "fail"``) or yielded as Skipped (``"skip"``); a root that holds
    no case at all always raises.
    """
    readers = _case_readers(data, Path(root if root is not None else data.root))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read_cases") as prefetch:
        pending = prefetch.submit(readers[0][1]) if readers else None
        for i, (case_path, _) in enumerate(readers):
            current = pending
            pending = prefetch.submit(readers[i + 1][1]) if i + 1 < len(readers) else None
            try:
                case = current.result()
            except InputError as e:
                if data.on_error != "skip":
                    if pending is not None:
                        pending.cancel()
                    raise
                reason = e.problem if e.path == case_path else str(e)
                log.warning("skipping %s: %s", case_path, reason)
                yield Skipped(path=str(case_path), reason=reason)
                continue
            yield case


def reading_task(data: DataParams) -> TaskSpec:
    """What ingest reads cases as: data.image_size, data.channels, data.intensity, clipping to
    data.clip_percentiles (volumes always; kaggle_3m TIFFs with intensity per_volume)."""
    return TaskSpec(data.image_size, tuple(data.channels),
                    {"mode": data.intensity, "clip_percentiles": list(data.clip_percentiles)})


def list_case_paths(data: DataParams, root: Path | None = None) -> list[Path]:
    """The case paths (folders, or files for a layout such as Decathlon) that ``read_cases`` would read."""
    return [path for path, _ in _case_readers(data, Path(root if root is not None else data.root))]


def _case_readers(data: DataParams, root: Path) -> list[tuple[Path, CaseReader]]:
    if not root.is_dir():
        raise InputError(root, "not a folder" if root.exists() else "no such folder")
    return registry.for_source(data.source).list_cases(root, reading_task(data), data.min_brain_fraction)


def detect_layout(path: Path) -> str:
    """Which kind of input a folder or file is, as its layout's ``detect`` names it ("lgg_case",
    "brats2021_root", "decathlon_file" ...); InputError naming it when no layout recognises it."""
    return registry.detect(path)[1]
