"""What every reader checks about the files and folders it walks: what to ignore, and why a path that
should be a readable file is not one (named in the InputError instead of a decoder's message)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pipeline.errors import InputError

# Copies and unzips leave these next to the data: macOS (.DS_Store, ._* AppleDouble, __MACOSX/), Windows.
IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


def is_ignored(path: Path) -> bool:
    """A hidden file or folder (``.*``, which covers ``.DS_Store`` and ``._*``) or OS junk (``__MACOSX``)."""
    name = Path(path).name
    return name.startswith(".") or name in IGNORED_NAMES


def file_problem(path: Path, kind: str = "file") -> str | None:
    """Why ``path`` is not what a reader needs, or None when it is: with kind "file" a regular, non-empty
    file; with kind "folder" a folder. Names dangling links, symlink loops, FIFOs and the like."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"dangling link (points to {os.readlink(path)}, which does not exist)"
        return f"no such {kind}"
    except PermissionError:
        return "permission denied"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself)"
        return f"cannot be read ({e.strerror or e})"
    if kind == "folder":
        return None if stat.S_ISDIR(info.st_mode) else "is a file, not a folder"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        what = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else (
            "a socket" if stat.S_ISSOCK(info.st_mode) else "a device")
        return f"is {what}, not a regular file"
    if info.st_size == 0:
        return "empty file (0 bytes)"
    return None


def check_file(path: Path, kind: str = "file") -> None:
    """InputError naming ``path`` and its ``file_problem`` when it is not a readable ``kind``."""
    problem = file_problem(path, kind)
    if problem is not None:
        raise InputError(path, problem)


def list_folder(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; InputError naming it when it cannot be listed."""
    check_file(folder, "folder")
    try:
        return sorted(Path(folder).iterdir())
    except OSError as e:
        raise InputError(folder, f"cannot list the folder ({e.strerror or e})") from None
