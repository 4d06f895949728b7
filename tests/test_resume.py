"""Resumable training (pipeline/models/checkpoint.py): a training stage killed with SIGKILL after an epoch,
then rerun, resumes from its last checkpoint and ends with the uninterrupted run's weights (TensorFlow on
the CPU, deterministic ops: ``train.deterministic``, the default; and JAX on the CPU); a checkpoint made with other params is
not resumed from."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

import pipeline.models.nets  # noqa: F401  (registers the custom layers)
from pipeline.params import Params, load_params

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
STATE = Path(".checkpoints") / "reports" / "train_segmenter" / "state.json"


def _workdir(demo_store: Path, work: Path, params: Params) -> Path:
    (work / "data").mkdir(parents=True)
    for name in ("slices", "split.csv"):
        (work / "data" / name).symlink_to(demo_store / "data" / name)
    (work / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(params)))))
    return work


def _command(work: Path, backend: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    return {"args": [sys.executable, "-m", "pipeline", "train_segmenter"], "cwd": work, "env": env}


def _run(work: Path, backend: str) -> str:
    done = subprocess.run(**_command(work, backend), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def _weights(work: Path) -> list[np.ndarray]:
    return keras.saving.load_model(work / "models" / "segmenter.keras", compile=False).get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_killed_training_stage_resumes_to_the_uninterrupted_weights(backend: str, demo_store: Path,
                                                                      tmp_path: Path) -> None:
    if backend == "jax":
        pytest.importorskip("jax")
    params = load_params(ROOT / "params.yaml")
    params = replace(params, data=replace(params.data, source="lgg", root=str(demo_store / "kaggle_3m")),
                     train=replace(params.train, epochs=EPOCHS, batch_size=8, schedule="fixed", deterministic=True),
                     segmenter=replace(params.segmenter, filters=(16, 32), epochs_factor=1))
    whole = _workdir(demo_store, tmp_path / "whole", params)
    _run(whole, backend)
    assert not (whole / ".checkpoints").exists()  # a finished stage removes its checkpoint

    killed = _workdir(demo_store, tmp_path / "killed", params)
    process = subprocess.Popen(**_command(killed, backend), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if (killed / STATE).is_file() and json.loads((killed / STATE).read_text())["epoch"] >= 2:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL and not (killed / "models" / "segmenter.keras").exists()
    k = json.loads((killed / STATE).read_text())["epoch"]
    assert 2 <= k < EPOCHS

    other = shutil.copytree(killed, tmp_path / "other_params", symlinks=True)
    changed = replace(params, train=replace(params.train, lr=params.train.lr / 2, epochs=1))  # 1: a short fresh run
    (other / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(changed)))))
    log = _run(other, backend)
    assert "was made with other params or input data: starting fresh" in log and "resuming from" not in log

    log = _run(killed, backend)
    assert f"resuming from epoch {k} of {EPOCHS}" in log
    assert not (killed / ".checkpoints").exists()
    theirs, ours = _weights(whole), _weights(killed)
    assert len(theirs) == len(ours) and all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True))
    loss = "reports/train_segmenter/plots/metrics/train/loss.tsv"
    assert (killed / loss).read_text() == (whole / loss).read_text()  # one row per epoch, the same values


@pytest.mark.slow
def test_a_cross_validation_killed_in_its_second_fold_keeps_the_first(demo_store: Path, tmp_path: Path) -> None:
    """split.folds: 2. Killed after fold 0 finished, the rerun restores fold 0 (not trained again), trains
    fold 1, and ends with the uninterrupted run's two fold models (TensorFlow, deterministic ops)."""
    from pipeline.data.slices import SliceStore
    from pipeline.data.split import assign_folds, patient_table

    params = load_params(ROOT / "params.yaml")
    params = replace(params, data=replace(params.data, source="lgg", root=str(demo_store / "kaggle_3m")),
                     train=replace(params.train, epochs=2, batch_size=8),
                     segmenter=replace(params.segmenter, filters=(16, 32), epochs_factor=1))
    store = SliceStore(demo_store / "data" / "slices")
    split = assign_folds(patient_table(store.manifest, store.patients),
                         pd.read_csv(demo_store / "data" / "split.csv"), 2, params.split.seed)
    runs = {}
    for name in ("whole", "killed"):
        work = tmp_path / name
        (work / "data").mkdir(parents=True)
        (work / "data" / "slices").symlink_to(demo_store / "data" / "slices")
        split.to_csv(work / "data" / "split.csv", index=False)
        (work / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(params)))))
        runs[name] = work
    _run(runs["whole"], "tensorflow")

    killed = runs["killed"]
    kept = killed / ".checkpoints" / "finished" / "reports" / "train_segmenter" / "fold_0" / "state.json"
    process = subprocess.Popen(**_command(killed, "tensorflow"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None and not kept.is_file():
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL and kept.is_file()

    log = _run(killed, "tensorflow")
    assert "fold 0 of 2 finished before the interruption: restored" in log
    assert re.search(r"fold 1 of 2$", log, re.M) and not re.search(r"fold 0 of 2$", log, re.M)  # 1 trained, 0 not
    assert not (killed / ".checkpoints").exists()
    for fold_file in ("segmenter.keras", "folds/segmenter/fold_1.keras"):
        theirs = keras.saving.load_model(runs["whole"] / "models" / fold_file, compile=False).get_weights()
        ours = keras.saving.load_model(killed / "models" / fold_file, compile=False).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True)), fold_file
    for output in ("reports/train_segmenter/metrics.json", "reports/train_segmenter/folds/fold_1/metrics.json"):
        assert json.loads((killed / output).read_text()).keys() == json.loads(
            (runs["whole"] / output).read_text()).keys(), output
