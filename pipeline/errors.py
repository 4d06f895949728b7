"""The project's exceptions: every error a user can cause names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base class for errors the CLI reports in one line and exits non-zero on."""


class InputError(PipelineError):
    """Bad input data: names the offending file (or folder) and what is wrong with it."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ParamsError(PipelineError):
    """A missing, unknown or invalid key in params.yaml."""


def one_line(text: str) -> str:
    """``text`` on one line for the console: line breaks and other control characters escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
