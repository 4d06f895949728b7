"""Where predict writes: the output folder's safety checks, the case folders and the run index.

An output folder may not be, contain or lie inside an input; a case folder is replaced only when predict
wrote it (``OUTPUT_MARKER``), and never one a case id cannot name; the run index (``RUN_INDEX``) lists
every case of a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.data.case import Case
from pipeline.errors import InputError
from pipeline.evaluation.validation import cohort_slices, cohort_summary
from pipeline.predict.discovery import InputItem
from pipeline.writing import atomic_path, check_no_overlap, json_text

# Every case folder predict writes holds this file; predict replaces an existing case folder only
# when it finds it there (a folder predict did not write is never deleted).
OUTPUT_MARKER = ".pipeline-predict"


RUN_INDEX = "predictions.json"


def check_output_dir(out_dir: Path, inputs: list[Path]) -> None:
    """Refuse an output folder that is an existing file, a dangling link, or that is, contains or lies
    inside any input (``check_no_overlap``); then create it. InputError naming the folder."""
    if out_dir.is_symlink() and not out_dir.exists():
        raise InputError(out_dir, "the output path is a dangling link; give a folder for -o")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "the output path exists and is not a folder; give a folder for -o")
    check_no_overlap(out_dir, inputs)
    if (out_dir / RUN_INDEX).is_dir():
        raise InputError(out_dir / RUN_INDEX, "is a folder; predict writes its run index under this name")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out_dir, f"cannot create the output folder ({e.strerror or e})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(out_dir, "the output folder is not writable")


def case_folder(out_dir: Path, case_id: str, source: Path) -> Path:
    """out_dir/<case id>, or InputError naming ``source`` when the case id cannot name a folder of its own."""
    if case_id in ("", ".", "..", RUN_INDEX) or "/" in case_id or "\0" in case_id or len(case_id.encode()) > 200:
        raise InputError(source, f"case id {case_id!r} cannot name an output folder; rename the case")
    return out_dir / case_id


def files_read(case: Case, item: InputItem | None) -> list[Path]:
    """Every path the case was read from: the input item, the case's folder or file and the files it names,
    and the entries of those folders (so an input file linked into the output is caught too)."""
    paths = [Path(item.path)] if item is not None else []
    if case.meta.get("path"):
        paths.append(Path(case.meta["path"]))
    paths += [Path(f) for f in case.meta.get("files", {}).values()]
    for folder in [p for p in paths if p.is_dir()]:
        paths += list(folder.iterdir())
    return paths


def check_replaceable(folder: Path) -> None:
    """InputError unless ``folder`` is absent or a case folder predict itself wrote (OUTPUT_MARKER)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InputError(folder, "exists and is not a folder predict wrote; refusing to replace it")
    if folder.is_dir() and not (folder / OUTPUT_MARKER).is_file():
        raise InputError(folder, f"exists and was not written by predict (no {OUTPUT_MARKER} marker); refusing "
                                 "to replace it: move it away or choose another output folder")



def write_run_index(results: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """The run's index, written atomically and returned: {"n_cases", "n_failed", "cases": each case's
    summary without its per-slice list, or its failure {"status": "failed", "input", "error"},
    "validation": the cohort's scores over the labelled cases (``validation.cohort_summary``, and its slice-level
    figures under "slices", ``validation.cohort_slices``; null when no input carried ground truth)}."""
    ok = [r for r in results if r["status"] == "ok"]
    index = {
        "n_cases": len(results),
        "n_failed": len(results) - len(ok),
        "cases": [{k: v for k, v in r.items() if k not in ("slices", "outputs")} for r in results],
        "validation": cohort_summary([r.get("validation") for r in ok]),
    }
    if index["validation"] is not None:
        index["validation"]["slices"] = cohort_slices(ok)
    regions = [r["validation_regions"] for r in ok if r.get("validation_regions")]
    if regions:  # a segmenter with one output per region: the cohort per region
        index["validation_regions"] = {region: cohort_summary([scores[region] for scores in regions])
                                       for region in regions[0]}
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(index))
    return index
