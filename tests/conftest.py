"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bad_files import tree_digest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's headless Chromium: apt-get install -y chromium


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding a slow test first, in collection order, then the others. With ``--no-loadscope-reorder``
    (pyproject.toml) pytest-xdist hands out files in this order, so the long ones start first and the short
    ones even out the workers at the end; by default it sorts files by their number of tests, which leaves the
    long files, with few tests each, for last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run headless Chromium: ``chromium(*args, timeout=60)`` returns the completed process.

    Adds the flags for a root, offline, GPU-less machine and a fresh profile per call.
    Skips the test when /usr/bin/chromium is not installed.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        profile = tmp_path_factory.mktemp("chromium-profile")
        try:
            return subprocess.run(
                [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
                capture_output=True, text=True, timeout=timeout, check=False)
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    return run


# ------------------------------------------------------------------------------------------ session fixtures
# Built once per session and shared by every module that needs them. No test may write into one: each is
# checked at the end of the session against the digest it had when built (a test that needs to change one
# copies it first, e.g. ``tiny_repo.copy_repo``).


def unchanged_after_session(root: Path, name: str) -> Iterator[Path]:
    """Yield ``root``; at the session's end, fail if any test added, removed or changed anything under it."""
    before = tree_digest(root)
    yield root
    after = tree_digest(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the session fixture {name}: {changed[:10]}"


def built_once(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, name: str,
               build: Callable[[Path], Path]) -> Path:
    """``build(folder)``'s result, built once per pytest session even under pytest-xdist: the first worker
    to ask builds it in the session's shared temp folder (under a file lock), the others wait and reuse it.
    Without xdist workers (no ``workerinput``: ``-n 0``, ``-p no:xdist``) it is built in a fresh temp folder."""
    if not hasattr(request.config, "workerinput"):
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, one per session, shared by its workers
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build on another worker left
            folder.mkdir()
            done.write_text(str(build(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A git + DVC repo of the pipeline with tiny params (``tiny_repo.TINY``) after one ``dvc repro``
    (TensorFlow): demo data, slice store, split, both models, evaluation and report. Read it, or
    ``copy_repo`` it to run DVC."""
    from tiny_repo import TINY, dvc, tiny_repo

    def build(folder: Path) -> Path:
        repo = tiny_repo(folder, TINY)
        dvc("repro", cwd=repo)
        return repo

    yield from unchanged_after_session(built_once(tmp_path_factory, request, "demo_repo", build), "demo_repo")


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder holding the default demo set (params.yaml's demo section: 30 patients x 24 slices written
    at 256 px in the kaggle_3m layout) as the stages see it: ``data/slices`` stored at params.yaml's
    ``data.image_size`` and ``data/split.csv`` from params.yaml's split section."""
    from pipeline.data.demo import write_kaggle_3m
    from pipeline.data.slices import SliceStore, write_store
    from pipeline.data.sources import read_cases
    from pipeline.data.split import assign_splits, patient_table
    from pipeline.params import load_params

    def build(work: Path) -> Path:
        params = load_params(ROOT / "params.yaml")
        params = replace(params, data=replace(params.data, source="lgg", root=str(work / "kaggle_3m")))
        d = params.demo
        write_kaggle_3m(work / "kaggle_3m", d.patients, d.slices_per_patient, d.image_size, d.seed)
        write_store(read_cases(params.data), work / "data/slices")
        store = SliceStore(work / "data/slices")
        assign_splits(patient_table(store.manifest, store.patients), params.split).to_csv(
            work / "data/split.csv", index=False)
        return work

    yield from unchanged_after_session(built_once(tmp_path_factory, request, "demo_store", build), "demo_store")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A model bundle folder (``tiny_models.write_tiny_bundle``: 64 px, LGG channels, gate threshold 0, a
    ResUNet trained for seconds). Copy it before changing anything in it."""
    from tiny_models import write_tiny_bundle

    yield from unchanged_after_session(built_once(tmp_path_factory, request, "tiny_bundle", write_tiny_bundle),
                                       "tiny_bundle")


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory):
    """A working folder with a tiny demo slice store (8 patients x 6 slices at 32 px) and its split, and the
    params that made it: (folder, Params). For training a stage on in a test."""
    from pipeline.data.demo import write_kaggle_3m
    from pipeline.data.slices import SliceStore, write_store
    from pipeline.data.sources import read_cases
    from pipeline.data.split import assign_splits, patient_table
    from pipeline.params import load_params

    work = tmp_path_factory.mktemp("segmenter")
    params = load_params(ROOT / "params.yaml")
    params = replace(params, data=replace(params.data, source="lgg", root=str(work / "kaggle_3m"), image_size=32))
    write_kaggle_3m(work / "kaggle_3m", 8, 6, 64, seed=3)
    write_store(read_cases(params.data), work / "data/slices")
    store = SliceStore(work / "data/slices")
    assign_splits(patient_table(store.manifest, store.patients), params.split).to_csv(work / "data/split.csv",
                                                                                        index=False)
    return work, params
