"""The reader registry: every on-disk layout the pipeline reads and writes, listed once.

Ingest (``pipeline.data.sources.read_cases``), ``detect_layout`` and predict (finding, reading and writing
cases) ask these functions and never name a layout. Adding a layout is a module that declares a
``Layout`` (``pipeline.data.sources.layout``) and its line in ``_LAYOUTS``; ingest reads it once its
data.source name is also one of ``pipeline.params.SOURCES`` (a test keeps the two in step).

Detection asks the layouts in ``_LAYOUTS`` order and the first that recognises a path wins; the
messages that list what would have been recognised list them in that order too.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.sources.brats import BRATS2021, BRATS2023, DECATHLON
from pipeline.data.sources.files import file_problem
from pipeline.data.sources.layout import Layout
from pipeline.data.sources.lgg import KAGGLE_3M
from pipeline.errors import InputError

_LAYOUTS: list[Layout] = [KAGGLE_3M, BRATS2023, BRATS2021, DECATHLON]  # 2023 first: 2021 reads its folders too


def layouts() -> tuple[Layout, ...]:
    """The registered layouts, in detection order."""
    return tuple(_LAYOUTS)


def register(layout: Layout) -> None:
    """Add ``layout`` after the others; ValueError when one of its names, sources or kinds is taken."""
    for other in _LAYOUTS:
        taken = ({other.name} & {layout.name}) | (set(other.sources) & set(layout.sources)) | (
            set(other.kinds) & set(layout.kinds))
        if taken:
            raise ValueError(f"layout {layout.name}: {sorted(taken)} already belong to layout {other.name}")
    _LAYOUTS.append(layout)


def unregister(layout: Layout) -> None:
    """Remove a layout ``register`` added."""
    _LAYOUTS.remove(layout)


def for_source(source: str) -> Layout:
    """The layout that ingest reads for data.source ``source``; ValueError when none serves it."""
    for layout in _LAYOUTS:
        if source in layout.sources:
            return layout
    raise ValueError(f"unknown data.source {source!r}")


def for_kind(kind: str | None) -> Layout | None:
    """The layout whose ``detect`` gives ``kind`` ("lgg_case", "decathlon_root" ...), or None."""
    return next((layout for layout in _LAYOUTS if kind in layout.kinds), None)


def recognise(path: Path) -> tuple[Layout, str] | None:
    """(layout, kind) of the first layout that recognises ``path``, or None when none does.
    InputError when the layout that recognises it finds it unusable (a mask given for its image ...)."""
    for layout in _LAYOUTS:
        kind = layout.detect(Path(path))
        if kind is not None:
            return layout, kind
    return None


def detect(path: Path) -> tuple[Layout, str]:
    """(layout, kind) of a file or folder; InputError naming it when it is missing, no regular file or
    folder, or no layout recognises it (the message says what each layout looks for)."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise InputError(path, (file_problem(path) or "not a file or folder") if path.is_symlink() or path.exists()
                         else "no such file or folder")
    found = recognise(path)
    if found is not None:
        return found
    if path.is_dir():
        raise InputError(path, "unrecognised folder: " + ", ".join(f"no {layout.folder_hint}" for layout in _LAYOUTS))
    files = [layout.file_hint for layout in _LAYOUTS if layout.file_hint is not None]
    raise InputError(path, f"unrecognised file: expected {' or '.join(files)}")


def cases_hint() -> str:
    """What a case of any layout is, in words: "A, B or C"."""
    hints = [layout.cases_hint for layout in _LAYOUTS]
    return hints[0] if len(hints) == 1 else f"{', '.join(hints[:-1])} or {hints[-1]}"
