"""Atomic writes: write to a temporary path next to the target, rename into place on success."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import InputError


def check_no_overlap(output: str | Path, inputs: Iterable[str | Path], what: str = "output folder") -> None:
    """Refuse (InputError naming ``output``) an output path that is, contains or lies inside any input.

    Paths are compared both as given and with symlinks resolved, so a link into an input folder is
    caught too. Nothing is created or changed.
    """
    output = Path(output)
    targets = {Path(os.path.abspath(output)), Path(os.path.realpath(output))}
    for item in inputs:
        item = Path(item)
        for source in {Path(os.path.abspath(item)), Path(os.path.realpath(item))}:
            for target in targets:
                if target == source:
                    relation = "is the input"
                elif target.is_relative_to(source):
                    relation = "lies inside the input"
                elif source.is_relative_to(target):
                    relation = "contains the input"
                else:
                    continue
                raise InputError(output, f"{what} {relation} {item}; writing there could replace or delete "
                                         "input files: choose a folder outside the inputs")


def json_text(value: Any) -> str:
    """Indented JSON in which NaN and infinities are null (DVC, browsers and strict parsers reject NaN)."""
    return json.dumps(finite(value), indent=2, allow_nan=False) + "\n"


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth of dicts and lists) replaced by None."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed to ``target``.

    The temporary name keeps the target's suffix so writers that look at it (Keras, pandas) work.
    On an exception the temporary file is removed and the target is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.tmp-", suffix="".join(target.suffixes), dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `target`; on success it replaces `target` whole.

    Only paths this call created are ever removed: the temporary folder, and the old `target` after it
    was renamed to a fresh, uniquely named sibling (never a fixed name a user's folder could have).
    """
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise InputError(target, "is a link or a file, not a folder this program wrote; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.name[:64]  # temporary names stay far below the 255-byte file-name limit
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    old = None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{stem}.old-", dir=target.parent))
            os.replace(target, old)  # rename(2) onto the fresh empty folder
        try:
            tmp.rename(target)
        except OSError:
            if old is not None:
                os.replace(old, target)  # put the old folder back rather than lose both
                old = None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
