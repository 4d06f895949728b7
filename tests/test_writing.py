"""Atomic writes never remove what they did not create."""

from __future__ import annotations

import os
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


# --- issue 22: no stage writes what it reads; what a killed run leaves is cleaned by the next run

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    """The id of a process that has ended (what a killed run's temporary names carry)."""
    import subprocess

    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


@pytest.mark.parametrize("stage", ["demo", "ingest", "split", "train_classifier", "train_segmenter", "evaluate",
                                   "report"])
def test_the_default_params_keep_every_stage_off_its_inputs(stage: str) -> None:
    import importlib

    from pipeline.params import load_params, stage_reads
    from pipeline.writing import check_stage_writes_no_input

    module = importlib.import_module(f"pipeline.stages.{stage}")
    params = load_params(ROOT / "params.yaml")
    reads = stage_reads((*module.READS, *getattr(module, "READS_FROM_PARAMS", ())), params)
    check_stage_writes_no_input(stage, module.WRITES, reads)  # raises when an output meets an input


@pytest.mark.parametrize("stage", ["demo", "ingest", "split", "train_classifier", "train_segmenter", "evaluate",
                                   "report"])
def test_every_stage_refuses_to_write_a_file_it_reads_before_it_runs(
        stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The one shared check in `python -m pipeline <stage>`: an input that is (or holds, or lies in) one of
    the stage's outputs is refused in one line naming it, exit 2, before the stage runs or anything is written."""
    import importlib

    from pipeline.__main__ import main

    module = importlib.import_module(f"pipeline.stages.{stage}")
    output = Path(module.WRITES[0])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    output.parent.mkdir(parents=True, exist_ok=True)
    (output.parent / f".{output.stem}.tmp-{_dead_pid()}-x").write_text("left by a killed run")
    monkeypatch.setattr(module, "READS", (*module.READS, output.parent), raising=True)

    def must_not_run(params: object) -> None:
        raise AssertionError(f"{stage} ran")

    monkeypatch.setattr(module, "run", must_not_run)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main([stage]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {output.parent}: `{stage}` reads this (READS) and would write {output} inside "
                           "it"), line
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # not even the leftovers were touched


def test_split_refuses_split_file_pointing_at_its_own_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """split.file: data/split.csv (the stage's output, edited by hand): refused before reading the store."""
    from pipeline.__main__ import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace(
        "  file: null", "  file: data/split.csv", 1))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "split.csv").write_text("patient_id,split,note\nB,test,mine\nA,train,mine\n")
    assert main(["split"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == ("error: data/split.csv: `split` reads this (params split.file) and would write data/split.csv "
                    "over it; give split.file a path apart from split's outputs (data/split.csv)"), line
    assert (tmp_path / "data" / "split.csv").read_text() == "patient_id,split,note\nB,test,mine\nA,train,mine\n"


def test_atomic_writes_remove_what_a_killed_run_left_and_nothing_else(tmp_path: Path) -> None:
    """Temporaries of this target whose process is gone go; a live run's, other targets' and users' files stay."""
    from pipeline.writing import atomic_path, is_temporary

    dead = _dead_pid()
    stale_file = tmp_path / f".split.tmp-{dead}-a1b2.csv"
    stale_dir = tmp_path / f".slices.tmp-{dead}-zz"
    parked = tmp_path / f".slices.old-{dead}-yy"
    for folder in (stale_dir, parked):
        (folder / "arrays").mkdir(parents=True)
        (folder / "arrays" / "x.npy").write_text("half written")
    live = tmp_path / f".split.tmp-{os.getpid()}-live.csv"
    other = tmp_path / f".report.tmp-{dead}-c3.csv"
    user = tmp_path / "split.tmp-notes.csv"
    for path in (stale_file, live, other, user):
        path.write_text("x")
    with atomic_path(tmp_path / "split.csv") as tmp:
        assert is_temporary(tmp) and str(os.getpid()) in tmp.name  # the next run can tell a live run's apart
        tmp.write_text("patient_id,split\n")
    assert not stale_file.exists() and live.exists() and other.exists() and user.exists()
    with atomic_dir(tmp_path / "slices") as tmp:
        (tmp / "manifest.csv").write_text("patient_id\n")
    assert not stale_dir.exists() and not parked.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, user.name, "split.csv", "slices"])
