"""Broken input files for the bad-input tests: compressed TIFFs cut short, and paths that are no files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import tifffile

COMPRESSIONS = {"deflate": 8, "lzw": 5, "packbits": 32773}  # TIFF compression tags
BAD_ENTRIES = {  # kind -> what the error message says
    "dangling_link": "dangling link",
    "symlink_loop": "symlink loop",
    "folder": "is a folder, not a file",
    "fifo": "FIFO",
    "empty": "empty file (0 bytes)",
}


def write_compressed_tiff(path: Path, array: np.ndarray, compression: str) -> None:
    """A TIFF of ``array`` (uint8 [H, W] or [H, W, 3]) with ``compression``, the IFD before the image data
    (as tifffile lays files out), so that cutting the file short cuts the compressed data, not the header.

    OpenCV encodes (tifffile needs imagecodecs for LZW and PackBits); tifffile writes its strips as they are.
    """
    encoded = path.with_name(path.name + ".cv2.tif")
    rgb = array.ndim == 3
    assert cv2.imwrite(str(encoded), array[..., ::-1] if rgb else array,
                       [cv2.IMWRITE_TIFF_COMPRESSION, COMPRESSIONS[compression]])
    with tifffile.TiffFile(encoded) as tif:
        page = tif.pages[0]
        strips = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            tif.filehandle.seek(offset)
            strips.append(tif.filehandle.read(count))
        rows, predictor = page.rowsperstrip, page.predictor
    encoded.unlink()
    stored = tifffile.TIFF.COMPRESSORS
    tifffile.TIFF.COMPRESSORS = _AlreadyEncoded()  # hand the strips through unchanged
    try:
        tifffile.imwrite(path, iter(strips), shape=array.shape, dtype=np.uint8, compression=COMPRESSIONS[compression],
                         photometric="rgb" if rgb else "minisblack", rowsperstrip=rows,
                         predictor=predictor if predictor != 1 else None)
    finally:
        tifffile.TIFF.COMPRESSORS = stored
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back[..., ::-1] if rgb else back, array), "the intact file must read back exactly"


class _AlreadyEncoded(dict):
    def __getitem__(self, key: object):
        return lambda data, *args, **kwargs: data


def truncate(path: Path, keep: float) -> None:
    """Cut ``path`` to the first ``keep`` fraction of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def make_bad_entry(path: Path, kind: str) -> None:
    """Replace ``path`` by one of BAD_ENTRIES: a link to nothing, two links pointing at each other, a
    folder, a FIFO or an empty file."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "dangling_link":
        path.symlink_to(path.with_name("nowhere.tif"))
    elif kind == "symlink_loop":
        other = path.with_name(path.name + ".loop")
        other.symlink_to(path.name)
        path.symlink_to(other.name)
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(kind)


def junk(folder: Path, like: str) -> None:
    """What macOS and Windows leave next to copied data: .DS_Store, a ._* AppleDouble file named like
    ``like``, and a __MACOSX/ copy of its layout (a slice TIFF and a NIfTI)."""
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / f"._{like}").write_bytes(b"\0\5\26\7")
    (folder / "__MACOSX" / like).mkdir(parents=True)
    (folder / "__MACOSX" / like / f"._{like}_1.tif").write_bytes(b"\0\5\26\7")
    (folder / "__MACOSX" / like / f"._{like}_flair.nii.gz").write_bytes(b"\0\5\26\7")


def write_brats_case(parent: Path, name: str, shape: tuple[int, int, int], margin: tuple[int, int, int],
                     tumour: tuple[slice, slice, slice]) -> Path:
    """A BraTS 2021 case folder: four int16 sequences (a box of brain ``margin`` voxels in from each edge,
    intensity 100 x sequence number) and a _seg with label 2 (edema) in ``tumour``, identity affine."""
    folder = parent / name
    folder.mkdir(parents=True)
    brain = np.zeros(shape, np.int16)
    brain[tuple(slice(m, -m) for m in margin)] = 1
    for k, sequence in enumerate(("flair", "t1", "t1ce", "t2"), start=1):
        nib.save(nib.Nifti1Image(brain * 100 * k, np.eye(4)), folder / f"{name}_{sequence}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    seg[tumour] = 2
    nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / f"{name}_seg.nii.gz")
    return folder


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root`` -> the sha256 of a file's bytes, "dir", or "link -> target" (links not
    followed): compare two to show that nothing under ``root`` changed."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"link -> {path.readlink()}"
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found
