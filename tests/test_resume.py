"""Resumable training (pipeline/models/checkpoint.py): a training stage killed with SIGKILL after an epoch,
then rerun, resumes from its last checkpoint and ends with the uninterrupted run's weights (TensorFlow on
the CPU, deterministic ops: ``train.deterministic``, the default; and JAX on the CPU); a checkpoint made with other params is
not resumed from."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
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
    changed = replace(params, train=replace(params.train, lr=params.train.lr / 2))
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
