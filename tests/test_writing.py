"""Atomic writes never remove what they did not create."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InputError, one_line
from pipeline.writing import atomic_dir, json_text


def test_atomic_dir_replaces_the_target_and_leaves_every_sibling(tmp_path: Path) -> None:
    target = tmp_path / "slices"
    target.mkdir()
    (target / "old.txt").write_text("old")
    user = tmp_path / ".slices.old"  # the fixed name a replaced folder used to be parked (and deleted) under
    user.mkdir()
    (user / "scan.tif").write_text("the user's data")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert (user / "scan.tif").read_text() == "the user's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".slices.old", "slices"]


def test_atomic_dir_keeps_the_target_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "kept.txt").write_text("kept")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "kept.txt").read_text() == "kept"


def test_atomic_dir_refuses_a_link_or_a_file(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    (tmp_path / "file").write_text("x")
    for name in ("link", "file"):
        with pytest.raises(InputError, match="refusing to replace it"), atomic_dir(tmp_path / name):
            pass
    assert real.is_dir() and (tmp_path / "file").read_text() == "x"


def test_atomic_dir_with_a_long_name(tmp_path: Path) -> None:
    target = tmp_path / ("x" * 240)  # the temporary sibling's name must stay under 255 bytes
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("a")
    assert (target / "a").is_file()


def test_one_line_escapes_line_breaks() -> None:
    assert one_line("a\nb\tc d") == "a\\nb\\tc d"


def test_json_text_writes_null_for_nan_and_infinity() -> None:
    import json

    import numpy as np

    text = json_text({"a": float("nan"), "b": [np.float32(np.inf), 1.5], "c": np.int64(3)})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": 3} and "NaN" not in text
