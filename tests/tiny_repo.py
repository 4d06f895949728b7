"""A git + DVC repository holding a copy of the pipeline with tiny params: what the end-to-end tests
run `dvc repro` and `dvc exp run` in (the session fixture ``demo_repo`` in conftest.py builds one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["pipeline", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore"]

# The demo pipeline at 32 px on 9 patients x 10 slices, 2 epochs each: every stage in seconds. Under JAX most
# of a stage's time goes to compiling each model (ResNet50 alone: train, test, predict, Grad-CAM and
# integrated-gradient functions), which grows with the image size, not to running it.
TINY = {
    "data": {"image_size": 32},
    "demo": {"patients": 9, "slices_per_patient": 10, "image_size": 32},
    "train": {"epochs": 2, "batch_size": 10},
    "classifier": {"weights": "none"},
    "segmenter": {"filters": [16, 32, 64], "epochs_factor": 1},
    "evaluate": {"bootstrap": 20, "gradcam_per_group": 1, "ig_steps": 2},
}


def tiny_repo(tmp: Path, overrides: dict) -> Path:
    """``tmp/repo``: a git+DVC repo holding a copy of the pipeline with params overridden."""
    repo = tmp / "repo"
    repo.mkdir()
    for name in COPIED:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    commit(repo, "tiny")
    return repo


def copy_repo(repo: Path, tmp: Path) -> Path:
    """A copy of ``repo`` (work tree, git history, DVC cache and lock) at ``tmp/repo``, to run DVC in
    without touching the original."""
    copy = tmp / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    return copy


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], repo)


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd)
