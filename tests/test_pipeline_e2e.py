"""End to end: `dvc repro` of the pipeline on a tiny demo config in a git + DVC repo (the session fixture
``demo_repo``), then an experiment on an evaluate parameter (`dvc exp run -S`, `dvc exp show`) in a
copy of it: DVC reruns exactly the stages that read the changed parameter."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from tiny_repo import TINY, copy_repo, dvc, tiny_repo

from pipeline.evaluation.schema import HEADLINE


def test_ingest_and_split_repro(tmp_path):
    repo = tiny_repo(tmp_path, TINY)
    dvc("repro", "split", cwd=repo)
    manifest = pd.read_csv(repo / "data/slices/manifest.csv")
    split = pd.read_csv(repo / "data/split.csv")
    assert len(manifest) == TINY["demo"]["patients"] * TINY["demo"]["slices_per_patient"]
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
def test_full_pipeline_and_experiment(demo_repo, tmp_path):
    headline = json.loads((demo_repo / "reports/metrics.json").read_text())
    assert list(headline) == list(HEADLINE) and len(headline) <= 10, "dvc exp show lists few, flat figures"
    metrics = json.loads((demo_repo / "reports/eval/metrics_full.json").read_text())
    assert headline["auc"] == metrics["test"]["classifier"]["auc"]
    for key in ("auc", "sensitivity", "specificity"):
        assert key in metrics["test"]["classifier"]
    calls = metrics["test"]["cascade_slices"]  # the headline's sensitivity: slices with a non-empty final mask
    assert headline["sensitivity"] == calls["sensitivity"] and calls["n"] == metrics["test"]["classifier"]["n"]
    for key in ("dice_patient_mean", "dice_patient_median"):
        assert key in metrics["test"]["cascade"]
    assert "dice_slice_mean" in metrics["test"]["segmenter"]
    assert metrics["classifier"]["pretrained"] is False
    assert metrics["threshold"]["chosen_on"] == "val"
    html = (demo_repo / "reports/index.html").read_text()
    assert 'id="classifier"' in html and 'id="gradcam"' in html
    # dvclive training curves are where dvc.yaml says
    assert (demo_repo / "reports/train_classifier/plots/metrics/val/auc.tsv").exists()
    assert (demo_repo / "reports/train_segmenter/plots/metrics/val/dice.tsv").exists()

    repo = copy_repo(demo_repo, tmp_path)
    ran = dvc("exp", "run", "-S", "evaluate.threshold=f1", cwd=repo).stdout
    for stage in ("demo", "ingest", "split", "train_classifier", "train_segmenter"):  # only evaluate reads it
        assert f"'{stage}' didn't change, skipping" in ran, ran[-3000:]
    assert "Running stage 'evaluate'" in ran and "Running stage 'report'" in ran, ran[-3000:]
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    text = json.dumps(shown)
    assert '"f1"' in text, "the changed param is listed"
    assert "dice_mean" in text and "auc" in text, "the new metrics are listed"
    table = dvc("exp", "show", "--csv", cwd=repo).stdout
    assert "evaluate.threshold" in table and "train.lr" in table
    evaluated = json.loads((repo / "reports/eval/metrics_full.json").read_text())
    assert evaluated["threshold"]["rule"] == "f1"
