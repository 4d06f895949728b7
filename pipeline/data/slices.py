"""The slice store: one memory-mappable array pair per patient plus a manifest table.

Layout of a store folder (``data/slices``)::

    manifest.csv          a row per slice: patient_id, slice_index (row in the patient's arrays),
                          slice_number (in the original scan), has_tumour, tumour_pixels,
                          brain_pixels, source
    patients.json         per patient: source, channels, spacing_mm, geometry, meta, file stem
    skipped.csv           cases skipped with data.on_error=skip: path, reason
    arrays/<stem>.image.npy   uint8 [n, H, W, 3], channels last
    arrays/<stem>.labels.npy  uint8 [n, H, W] region map (0 = background; ``pipeline.data.regions``)

``write_store`` writes into a temporary sibling folder and renames it into place only when
every case has been written, so a failed ingest never leaves a half-written store.
``SliceStore`` opens the arrays memory-mapped: reading a batch touches only those slices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.case import Case
from pipeline.data.context import with_context
from pipeline.errors import InputError
from pipeline.writing import atomic_dir

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "patient_id", "slice_index", "slice_number", "has_tumour", "tumour_pixels", "brain_pixels", "source",
]


@dataclass(frozen=True)
class Skipped:
    """A case left out of ingest under ``data.on_error: skip``."""

    path: str
    reason: str


def file_stem(patient_id: str) -> str:
    """A file-system-safe stem for a patient id (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", patient_id)


def slice_rows(case: Case) -> pd.DataFrame:
    """Manifest rows for one case: tumour and brain pixel counts per slice."""
    tumour = case.mask.reshape(len(case.labels), -1).sum(axis=1)
    image = case.image
    nonzero = image[..., 0] > 0
    for c in range(1, image.shape[3]):  # any channel non-zero; ~10x faster than image.max(axis=3)
        nonzero |= image[..., c] > 0
    brain = nonzero.reshape(len(image), -1).sum(axis=1)
    return pd.DataFrame({
        "patient_id": case.patient_id,
        "slice_index": np.arange(len(case.image)),
        "slice_number": np.asarray(case.slice_numbers, dtype=int),
        "has_tumour": tumour > 0,
        "tumour_pixels": tumour.astype(int),
        "brain_pixels": brain.astype(int),
        "source": case.source,
    })


def image_digest(image: np.ndarray) -> str:
    """A content hash of a case's stored image (uint8 [D, H, W, C]): equal for the same scan read
    twice, under any case id or layout (~1 GB/s)."""
    digest = hashlib.blake2b(str(image.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def write_store(items: Iterable[Case | Skipped], out_dir: str | Path) -> pd.DataFrame:
    """Write cases to a new store at ``out_dir`` (replacing any old one only on success).

    items: Cases to store and Skipped records to list in skipped.csv.
    Returns the manifest. Raises InputError on duplicate patient ids or mixed slice shapes; warns
    when two case ids hold the same image (``image_digest``), one scan stored twice.
    """
    out_dir = Path(out_dir)
    rows: list[pd.DataFrame] = []
    patients: dict[str, dict[str, Any]] = {}
    skipped: list[Skipped] = []
    stems: set[str] = set()
    seen: dict[str, tuple[str, str]] = {}  # image_digest -> (case id, path) of the first case with it
    shape: tuple[int, ...] | None = None
    with atomic_dir(out_dir) as tmp:
        (tmp / "arrays").mkdir()
        for item in items:
            if isinstance(item, Skipped):
                log.warning("skipped %s: %s", item.path, item.reason)
                skipped.append(item)
                continue
            case = item
            where = case.meta.get("path", case.patient_id)
            if case.patient_id in patients:
                raise InputError(where, f"patient id {case.patient_id!r} appears twice")
            if shape is None:
                shape = case.image.shape[1:]
            elif case.image.shape[1:] != shape:
                raise InputError(where, f"slices are {case.image.shape[1:]}, the store holds {shape}")
            first = seen.setdefault(image_digest(case.image), (case.patient_id, str(where)))
            if first[0] != case.patient_id:
                log.warning("case %s (%s) has the same image as case %s (%s): one scan under two case ids "
                            "counts as two patients and can land in two splits; remove one of them",
                            case.patient_id, where, *first)
            stem = file_stem(case.patient_id)
            while stem.lower() in stems:  # case-insensitive file systems: "Ab" and "ab" would clash
                stem += "_"
            stems.add(stem.lower())
            np.save(tmp / "arrays" / f"{stem}.image.npy", case.image)
            np.save(tmp / "arrays" / f"{stem}.labels.npy", case.labels)
            rows.append(slice_rows(case))
            patients[case.patient_id] = {
                "stem": stem,
                "source": case.source,
                "channels": list(case.channels),
                "spacing_mm": list(case.spacing_mm) if case.spacing_mm else None,
                "geometry": case.geometry,
                "meta": case.meta,
            }
            log.info("stored %s: %d slices, %d with tumour", case.patient_id, len(case.image),
                     int(rows[-1].has_tumour.sum()))
        if not patients:
            raise InputError(out_dir, "no case could be read: nothing to store")
        manifest = pd.concat(rows, ignore_index=True)[MANIFEST_COLUMNS]
        manifest.to_csv(tmp / "manifest.csv", index=False)
        (tmp / "patients.json").write_text(json.dumps(patients, indent=1, default=_json_default))
        pd.DataFrame([vars(s) for s in skipped], columns=["path", "reason"]).to_csv(tmp / "skipped.csv", index=False)
    return manifest


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in patients.json")


class SliceStore:
    """Read access to a store folder; arrays are memory-mapped and opened on first use."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest_path = self.root / "manifest.csv"
        if not manifest_path.exists():
            raise InputError(self.root, "not a slice store (no manifest.csv); run `python -m pipeline ingest` first")
        self.manifest = pd.read_csv(manifest_path, dtype={"patient_id": str})
        try:
            self.patients: dict[str, dict[str, Any]] = json.loads((self.root / "patients.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise InputError(self.root / "patients.json", f"missing or unreadable ({e}); run ingest again") from None
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the open memory maps (they are reopened on first use)."""
        return {**self.__dict__, "_images": {}, "_labels": {}}

    @property
    def patient_ids(self) -> list[str]:
        return list(self.patients)

    @property
    def skipped(self) -> pd.DataFrame:
        path = self.root / "skipped.csv"
        return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["path", "reason"])

    def images(self, patient_id: str) -> np.ndarray:
        """Memory-mapped uint8 [n, H, W, 3] of one patient."""
        if patient_id not in self._images:
            stem = self.patients[patient_id]["stem"]
            self._images[patient_id] = np.load(self.root / "arrays" / f"{stem}.image.npy", mmap_mode="r")
        return self._images[patient_id]

    def labels(self, patient_id: str) -> np.ndarray:
        """Memory-mapped uint8 [n, H, W] label map of one patient."""
        if patient_id not in self._labels:
            stem = self.patients[patient_id]["stem"]
            self._labels[patient_id] = np.load(self.root / "arrays" / f"{stem}.labels.npy", mmap_mode="r")
        return self._labels[patient_id]

    @property
    def channels(self) -> list[str]:
        """The channel names shared by every patient in the store, in stored order (a mix is an error)."""
        names = {tuple(p["channels"]) for p in self.patients.values()}
        if len(names) != 1:
            raise InputError(self.root, f"patients have different channel orders: {sorted(names)}")
        return list(names.pop())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every stored slice, from the first array file's header (no patient's slices are read)."""
        if "_image_shape" not in self.__dict__:
            stem = self.patients[self.patient_ids[0]]["stem"]
            header = np.load(self.root / "arrays" / f"{stem}.image.npy", mmap_mode="r")
            self._image_shape = tuple(header.shape[1:])
        return self._image_shape  # type: ignore[return-value]

    def read(self, patient_ids: Sequence[str], slice_indices: Sequence[int], context: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
        """Gather slices: images uint8 [B, H, W, 3], labels uint8 [B, H, W], in the order given. With ``context``
        n > 0 each image also holds its n neighbours either side: [B, H, W, 3 * (2n + 1)]
        (``pipeline.data.context``); the labels are the slice's own."""
        n = len(patient_ids)
        h, w, c = self.image_shape
        images = np.empty((n, h, w, c * (2 * context + 1)), np.uint8)
        labels = np.empty((n, h, w), np.uint8)
        for i, (pid, idx) in enumerate(zip(patient_ids, slice_indices)):
            images[i] = with_context(self.images(pid), context, [idx])[0] if context else self.images(pid)[idx]
            labels[i] = self.labels(pid)[idx]
        return images, labels

    def read_rows(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Gather the slices named by manifest rows (columns patient_id, slice_index)."""
        return self.read(rows["patient_id"].tolist(), rows["slice_index"].tolist())
