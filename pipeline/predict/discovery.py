"""What to predict on: ``find_inputs(path)`` lists the cases under a file or folder as ``InputItem``s,
asking the layout registry (``pipeline.data.sources.registry``) what each file or folder is.

A single case, the root of any registered layout, or a folder holding these (searched up to
``MAX_DEPTH`` levels down); a file or folder that is no readable case becomes an item carrying its
error, so the other cases still run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.data.sources import registry
from pipeline.data.sources.files import file_problem, is_ignored, list_folder
from pipeline.data.sources.layout import Layout
from pipeline.errors import InputError


@dataclass(frozen=True)
class InputItem:
    """One case to predict: its path and layout (the case kind its layout's ``detect`` gave, e.g.
    "lgg_case"), or why it cannot be one."""

    path: Path
    layout: str | None
    error: InputError | None = None


def find_inputs(path: Path) -> list[InputItem]:
    """The cases under ``path``: itself when it is one case, else what its folders hold, searched up to
    MAX_DEPTH levels down (roots of any registered layout, folders of these). A file or folder that is
    no readable case becomes an item carrying its error, so the other cases still run. InputError when
    ``path`` is missing or holds no case at all."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, file_problem(path) if path.is_symlink() else "no such file or folder")
    try:
        layout, kind = registry.detect(path)
    except InputError:
        if not path.is_dir():
            raise
        layout, kind = None, None
    if layout is not None and kind in layout.case_kinds:
        return [InputItem(path, kind)]
    items = _root_items(layout, path) if layout is not None and layout.root_cases else _items_in(path, 1)
    if not items:
        raise InputError(path, f"no cases found: expected {registry.cases_hint()}")
    return items


MAX_DEPTH = 3


def _items_in(folder: Path, depth: int) -> list[InputItem]:
    try:
        children = list_folder(folder)
    except InputError as e:  # a folder that cannot be listed is one failed item, not the end of the run
        return [InputItem(folder, None, error=e)]
    return [item for child in children for item in _child_items(child, depth)]


def _child_items(child: Path, depth: int) -> list[InputItem]:
    if is_ignored(child):
        return []  # hidden files and folders, .DS_Store, ._* AppleDouble files, __MACOSX
    if child.is_symlink() and not child.exists():  # a link to a case that is not there: say so
        return [InputItem(child, None, error=InputError(child, file_problem(child) or "broken link"))]
    if not child.is_dir():
        try:
            found = registry.recognise(child)
        except InputError as e:  # named like a case of some layout, but unusable
            return [InputItem(child, None, error=e)]
        return [InputItem(child, found[1])] if found is not None and found[1] in found[0].case_kinds else []
    try:
        layout, kind = registry.detect(child)
    except InputError as e:
        found = _items_in(child, depth + 1) if depth < MAX_DEPTH else []
        return found or [InputItem(child, None, error=e)]
    if kind in layout.case_kinds:
        return [InputItem(child, kind)]
    if layout.root_cases:
        return _root_items(layout, child)
    found = _items_in(child, depth + 1) if depth < MAX_DEPTH else []  # a folder of cases
    return found or [InputItem(child, None, error=InputError(child, f"no cases found ({kind} too deep)"))]


def _root_items(layout: Layout, root: Path) -> list[InputItem]:
    """The cases of a root whose layout lists them itself (``Layout.root_cases``)."""
    return [InputItem(case, kind) for case, kind in layout.root_cases(root)]


__all__ = ["MAX_DEPTH", "InputItem", "find_inputs"]
