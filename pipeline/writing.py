"""Atomic writes: write to a temporary path next to the target, rename into place on success."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

log = logging.getLogger(__name__)


def check_no_overlap(output: str | Path, inputs: Iterable[str | Path], what: str = "output folder") -> None:
    """Refuse (InputError naming ``output``) an output path that is, contains or lies inside any input.

    Paths are compared both as given and with symlinks resolved, so a link into an input folder is
    caught too. Nothing is created or changed.
    """
    for item in inputs:
        relation = overlap(output, item)
        if relation is not None:
            raise InputError(output, f"{what} {relation} {item}; writing there could replace or delete "
                                     "input files: choose a folder outside the inputs")


def overlap(output: str | Path, item: str | Path) -> str | None:
    """How ``output`` meets the input ``item`` ("is the input", "lies inside the input", "contains the
    input"), or None when writing ``output`` cannot touch it; as given and with symlinks resolved."""
    targets = {Path(os.path.abspath(output)), Path(os.path.realpath(output))}
    for source in {Path(os.path.abspath(item)), Path(os.path.realpath(item))}:
        for target in targets:
            if target == source:
                return "is the input"
            if target.is_relative_to(source):
                return "lies inside the input"
            if source.is_relative_to(target):
                return "contains the input"
    return None


def check_stage_writes_no_input(stage: str, writes: Iterable[str | Path], reads: Iterable[tuple[str | Path, str]]) -> None:
    """Before a stage writes anything: refuse (InputError naming the input) when any of its outputs
    ``writes`` is, contains or lies inside a path it reads. ``reads``: (path, where it comes from: "params
    <key>" for a path params.yaml gives, else "READS"), as ``pipeline.params.stage_reads`` resolves them."""
    writes = [Path(w) for w in writes]
    for path, origin in reads:
        for output in writes:
            relation = overlap(output, path)
            if relation is None:
                continue
            act = {"is the input": f"write {output} over it", "lies inside the input": f"write {output} inside it",
                   "contains the input": f"replace {output}, which holds it"}[relation]
            key = origin.removeprefix("params ")
            advice = (f"give {key} a path apart from {stage}'s outputs ({', '.join(map(str, writes))})"
                      if origin != key else "the stage declares an output inside its own input (a bug)")
            raise InputError(path, f"`{stage}` reads this ({origin}) and would {act}; {advice}")


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


# Temporary names: ".<stem>.tmp-<pid>-<random><suffixes>" (atomic_path), ".<name>.tmp-<pid>-<random>" and
# ".<name>.old-<pid>-<random>" (atomic_dir). A run that is killed leaves them; the writer's next run removes
# those whose process is gone (remove_stale_temporaries), never another live run's.
_TEMPORARY = re.compile(r"^\.(?P<stem>.+?)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?")


def _temp_prefix(stem: str, kind: str = "tmp") -> str:
    return f".{stem}.{kind}-{os.getpid()}-"


def _temp_stems(target: Path) -> set[str]:
    """The stems atomic_path and atomic_dir give ``target``'s temporaries."""
    return {target.stem, target.name[:64]}


def is_temporary(path: str | Path) -> bool:
    """True for a name atomic_path or atomic_dir gives a temporary (``.<stem>.tmp-…``, ``.<name>.old-…``)."""
    return _TEMPORARY.match(Path(path).name) is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # a process of another user (or a number no process has): leave it be
    return True


def remove_stale_temporaries(targets: Iterable[str | Path]) -> list[Path]:
    """Remove the temporaries that killed runs left next to each of ``targets`` (see _TEMPORARY): only
    names made for these targets, only when the process that made them is gone (names without a
    process id, from older versions, count as gone). Returns what was removed."""
    removed = []
    for target in (Path(t) for t in targets):
        if not target.parent.is_dir():
            continue
        stems = _temp_stems(target)
        try:
            for entry in target.parent.iterdir():
                match = _TEMPORARY.match(entry.name)
                if match is None or match["stem"] not in stems or (match["pid"] and _alive(int(match["pid"]))):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
        except OSError as e:  # an unreadable folder: the write that follows says what is wrong, if anything
            log.warning("could not look for temporaries next to %s (%s)", target, e.strerror or e)
    if removed:
        log.info("removed %d temporary file(s) an interrupted run left: %s", len(removed),
                 ", ".join(str(p) for p in removed))
    return removed


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
    remove_stale_temporaries([target])
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(target.stem), suffix="".join(target.suffixes), dir=target.parent)
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
    remove_stale_temporaries([target])
    stem = target.name[:64]  # temporary names stay far below the 255-byte file-name limit
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(stem), dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    old = None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(stem, "old"), dir=target.parent))
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
