"""`Layout`: one on-disk data layout, as its reader module declares it for the registry.

A layout says what it recognises (``detect``), which cases ingest reads from one of its roots
(``list_cases``), how one case is read (``read``) and how a predicted mask is written back in the
layout's own format (``write_prediction``). Ingest, ``detect_layout`` and predict only ever ask the
registry (``pipeline.data.sources.registry``) for a layout, never name one.

Kinds are the names ``detect`` gives what it recognises: a case (``case_kinds``: "lgg_case", a
Decathlon "decathlon_file" ...) or a folder of cases (``root_kinds``: "lgg_root" ...). Predict's
summaries record the kind of each input as its "layout".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.data.case import Case
from pipeline.data.task import TaskSpec

CaseReader = Callable[[], Case]  # one case of a root, read when called (ingest reads ahead in a thread)
LABELS = ("required", "optional")  # Layout.read: ingest needs ground truth, prediction does not


class ReadCase(Protocol):
    def __call__(self, path: Path, task: TaskSpec, *, min_brain_fraction: float, labels: str) -> Case:
        """One case (a path ``detect`` calls a case kind) -> Case at task.image_size with task.channels, its
        intensities scaled as task.intensity says; volumes keep the axial slices whose brain fraction is at
        least ``min_brain_fraction`` (ingest: data.min_brain_fraction; predict: 0, every slice).

        labels "required": a missing or unusable label file is an InputError naming it; "optional":
        a missing one reads the case unlabelled (meta["has_labels"] False), an unusable one too, with a
        warning naming it.
        """


@dataclass(frozen=True)
class WrittenMask:
    """What ``Layout.write_prediction`` wrote into a case's output folder.

    outputs: file names relative to the folder ({"mask": name} or {"masks": [names]});
    tumour_px: int64 [D] predicted tumour pixels per slice at the input's own resolution, in the
    case's slice order; pixel_mm2 and voxel_mm (3 sizes along the file's axes): None without a voxel size.
    """

    outputs: dict[str, Any]
    tumour_px: np.ndarray
    pixel_mm2: float | None = None
    voxel_mm: list[float] | None = None


@dataclass(frozen=True)
class Layout:
    """One on-disk layout: how to recognise, list, read and write it.

    name: what it is called ("kaggle_3m"); sources: the data.source values ingest reads with it;
    detect(path): the kind of ``path`` (one of case_kinds or root_kinds) or None when not this layout,
    deciding by name before opening anything; InputError when it is this layout's but unusable;
    list_cases(root, task, min_brain_fraction): [(case path, CaseReader)] that ingest reads, labels
    required, each read as ``read`` reads; InputError for a root without cases; read: ``ReadCase``; write_prediction(case, mask bool [D, S, S], folder):
    the mask in the input's own format -> ``WrittenMask``; root_cases(root): [(case path, kind)] of
    one of its roots for predict, when searching the root's folders would not find them (None: search).
    folder_hint, file_hint, cases_hint: what it looks for in a folder, the single file it takes (None:
    none) and its cases, in words, for the messages that list every layout.
    """

    name: str
    sources: tuple[str, ...]
    case_kinds: tuple[str, ...]
    root_kinds: tuple[str, ...]
    detect: Callable[[Path], str | None]
    list_cases: Callable[[Path, TaskSpec, float], list[tuple[Path, CaseReader]]]
    read: ReadCase
    write_prediction: Callable[[Case, np.ndarray, Path], WrittenMask]
    folder_hint: str
    cases_hint: str
    file_hint: str | None = None
    root_cases: Callable[[Path], list[tuple[Path, str]]] | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.case_kinds + self.root_kinds


def check_labels_mode(labels: str) -> None:
    """ValueError unless ``labels`` is one of LABELS (a programming error, not the data's)."""
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
