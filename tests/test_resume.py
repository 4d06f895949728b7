"""Resumable training (pipeline/models/checkpoint.py): a training stage killed with SIGKILL after an epoch,
then rerun, resumes from its last checkpoint and ends with the uninterrupted run's weights (TensorFlow on
the CPU, deterministic ops: ``train.deterministic``, the default; and JAX on the CPU); a checkpoint made with other params is
not resumed from. Under TensorFlow the run is a 2-fold cross-validation killed in its second fold: the rerun
also restores the first fold's finished model instead of training it again. Under JAX the run averages its
last 3 epochs' weights (``train.average_last``): the running mean is resumed too."""

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
EPOCHS = 4
STATE = {1: Path(".checkpoints") / "reports" / "train_segmenter" / "last" / "state.json",  # by split.folds:
          2: Path(".checkpoints") / "reports" / "train_segmenter" / "folds" / "fold_1" / "last" / "state.json"}


def _workdir(demo_store: Path, work: Path, params: Params, folds: int) -> Path:
    """A stage folder over the session's demo store; its split dealt into ``folds`` folds when > 1."""
    from pipeline.data.slices import SliceStore
    from pipeline.data.split import assign_folds, patient_table

    (work / "data").mkdir(parents=True)
    (work / "data" / "slices").symlink_to(demo_store / "data" / "slices")
    split = pd.read_csv(demo_store / "data" / "split.csv")
    if folds > 1:
        store = SliceStore(demo_store / "data" / "slices")
        split = assign_folds(patient_table(store.manifest, store.patients), split, folds, params.split.seed)
    split.to_csv(work / "data" / "split.csv", index=False)
    (work / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(params)))))
    return work


def _command(work: Path, backend: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    return {"args": [sys.executable, "-m", "pipeline", "train_segmenter"], "cwd": work, "env": env}


def _run(work: Path, backend: str) -> str:
    done = subprocess.run(**_command(work, backend), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def _weights(work: Path, model: str = "segmenter.keras") -> list[np.ndarray]:
    return keras.saving.load_model(work / "models" / model, compile=False).get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("backend, folds", [("tensorflow", 2), ("jax", 1)])
def test_a_killed_training_stage_resumes_to_the_uninterrupted_weights(backend: str, folds: int, demo_store: Path,
                                                                      tmp_path: Path) -> None:
    if backend == "jax":
        pytest.importorskip("jax")
    params = load_params(ROOT / "params.yaml")
    average_last = 0.75 if backend == "jax" else 0.0  # 3 of 4 epochs: the kill (epoch 2 or 3) falls inside them
    params = replace(params, data=replace(params.data, source="lgg", root=str(demo_store / "kaggle_3m")),
                     train=replace(params.train, epochs=EPOCHS, batch_size=8, schedule="fixed", deterministic=True,
                                   average_last=average_last),
                     segmenter=replace(params.segmenter, filters=(16, 32), epochs_factor=1))
    whole = _workdir(demo_store, tmp_path / "whole", params, folds)
    _run(whole, backend)
    assert not (whole / ".checkpoints").exists()  # a finished stage removes its checkpoint

    killed = _workdir(demo_store, tmp_path / "killed", params, folds)
    state = killed / STATE[folds]
    process = subprocess.Popen(**_command(killed, backend), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if state.is_file() and json.loads(state.read_text())["epoch"] >= 2:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    last_model = killed / "models" / ("folds/segmenter/fold_1.keras" if folds > 1 else "segmenter.keras")
    assert process.returncode == -signal.SIGKILL and not last_model.exists()
    k = json.loads(state.read_text())["epoch"]
    assert 2 <= k < EPOCHS

    if backend == "tensorflow":  # the binding is backend-free: checked once
        other = shutil.copytree(killed, tmp_path / "other_params", symlinks=True)
        changed = replace(params, train=replace(params.train, lr=params.train.lr / 2, epochs=1))  # 1: a short fresh run
        (other / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(changed)))))
        log = _run(other, backend)
        assert "was made with other params or input data: starting fresh" in log and "resuming from" not in log
        assert folds == 1 or "finished fold 0 in .checkpoints/finished/reports/train_segmenter/fold_0 was trained with " \
                             "other params, code or input data" in log

    for output in ("models", "reports"):  # what `dvc repro` deletes before it reruns the stage
        shutil.rmtree(killed / output, ignore_errors=True)
    log = _run(killed, backend)
    assert f"resuming from epoch {k} of {EPOCHS}" in log
    assert not average_last or "kept the mean of the weights after the last 3 epochs (2 to 4)" in log
    if folds > 1:  # the first fold finished before the kill: restored, not trained again
        assert "fold 0 of 2 finished before the interruption: restored" in log
        assert not re.search(r"fold 0 of 2$", log, re.M) and re.search(r"fold 1 of 2$", log, re.M)
    assert not (killed / ".checkpoints").exists()
    for model in ("segmenter.keras", *(["folds/segmenter/fold_1.keras"] if folds > 1 else [])):
        theirs, ours = _weights(whole, model), _weights(killed, model)
        assert len(theirs) == len(ours) and all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True))
    for live in ("reports/train_segmenter", *(["reports/train_segmenter/folds/fold_1"] if folds > 1 else [])):
        loss = f"{live}/plots/metrics/train/loss.tsv"  # one row per epoch, the same values
        assert (killed / loss).read_text() == (whole / loss).read_text(), loss

