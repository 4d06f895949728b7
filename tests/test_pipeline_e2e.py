"""End to end: `dvc repro` of the pipeline on a tiny demo config in a temporary copy of the repo,
then `dvc exp run -S train.lr=...` and `dvc exp show`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.evaluation.schema import HEADLINE

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["pipeline", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore"]

TINY = {
    "data": {"image_size": 64},
    "demo": {"patients": 9, "slices_per_patient": 10, "image_size": 64},
    "train": {"epochs": 2, "batch_size": 8},
    "classifier": {"weights": "none"},
    "segmenter": {"filters": [16, 32, 64, 128], "epochs_factor": 1},
    "evaluate": {"bootstrap": 20, "gradcam_per_group": 1, "ig_steps": 4},
}


def tiny_repo(tmp: Path, overrides: dict) -> Path:
    """A git+DVC repo holding a copy of the pipeline with params overridden."""
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
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], repo)
    return repo


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def test_ingest_and_split_repro(tmp_path):
    repo = tiny_repo(tmp_path, TINY)
    dvc("repro", "split", cwd=repo)
    manifest = pd.read_csv(repo / "data/slices/manifest.csv")
    split = pd.read_csv(repo / "data/split.csv")
    assert len(manifest) == 9 * 10
    assert set(split.patient_id) == set(manifest.patient_id)
    assert not split.patient_id.duplicated().any()
    # Nothing left to do for these stages; a changed split param makes only `split` stale.
    assert "up to date" in dvc("status", "split", cwd=repo).stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["split"]["seed"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc("status", "split", cwd=repo).stdout
    assert "split:" in status and "ingest:" not in status


@pytest.mark.slow
def test_full_pipeline_and_experiment(tmp_path):
    repo = tiny_repo(tmp_path, TINY)
    dvc("repro", cwd=repo)
    headline = json.loads((repo / "reports/metrics.json").read_text())
    assert list(headline) == list(HEADLINE) and len(headline) <= 10, "dvc exp show lists few, flat figures"
    metrics = json.loads((repo / "reports/eval/metrics_full.json").read_text())
    assert headline["auc"] == metrics["test"]["classifier"]["auc"]
    for key in ("auc", "sensitivity", "specificity"):
        assert key in metrics["test"]["classifier"]
    for key in ("dice_patient_mean", "dice_patient_median"):
        assert key in metrics["test"]["cascade"]
    assert "dice_slice_mean" in metrics["test"]["segmenter"]
    assert metrics["classifier"]["pretrained"] is False
    assert metrics["threshold"]["chosen_on"] == "val"
    html = (repo / "reports/index.html").read_text()
    assert 'id="classifier"' in html and 'id="gradcam"' in html
    # dvclive training curves are where dvc.yaml says
    assert (repo / "reports/train_classifier/plots/metrics/val/auc.tsv").exists()
    assert (repo / "reports/train_segmenter/plots/metrics/val/dice.tsv").exists()

    dvc("exp", "run", "-S", "train.lr=0.0005", cwd=repo)
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    text = json.dumps(shown)
    assert "0.0005" in text, "the changed param is listed"
    assert "dice_mean" in text and "auc" in text, "the new metrics are listed"
    table = dvc("exp", "show", "--csv", cwd=repo).stdout
    assert "train.lr" in table
