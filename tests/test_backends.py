"""The pipeline on the JAX and PyTorch backends (CPU): the tiny end-to-end `dvc repro` under
KERAS_BACKEND=jax and =torch, and the explanation tests under each. (Models moving between backends and
mixed precision: tests/test_backend_models.py.)

Keras fixes its backend when it is imported, so every run on a chosen backend is a subprocess with
KERAS_BACKEND in its environment; this file passes under any backend. A backend's tests skip when
its package is not installed (``pip install -e ".[jax]"``; PyTorch: see the README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from backends import on, thread_env
from tiny_repo import copy_repo, dvc

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", [on("jax"), on("torch")])
def test_dvc_repro_under_another_backend(backend, demo_repo, tmp_path, monkeypatch):
    """The tiny pipeline of the session's ``demo_repo`` (made under TensorFlow), with the segmenter
    retrained, then evaluated and reported, on the JAX or PyTorch backend: the training stage's code, the
    TensorFlow-trained classifier loaded and explained (Grad-CAM, integrated gradients) under this backend,
    and the DVC plumbing passing the backend on. The data stages are backend-free and not rerun."""
    repo = copy_repo(demo_repo, tmp_path)
    for name, value in {"KERAS_BACKEND": backend, **thread_env(backend)}.items():
        monkeypatch.setenv(name, value)  # dvc passes the environment on to every stage
    dvc("repro", "--force", "--single-item", "train_segmenter", cwd=repo)
    ran = dvc("repro", cwd=repo).stdout
    assert "Running stage 'evaluate'" in ran and "Running stage 'report'" in ran, ran[-3000:]
    assert "Running stage 'train_classifier'" not in ran, ran[-3000:]
    metrics = json.loads((repo / "reports/eval/metrics_full.json").read_text())
    assert "auc" in metrics["test"]["classifier"] and "dice_patient_mean" in metrics["test"]["cascade"]
    assert metrics["test"]["explain"]["pointing_game_n"] >= 0
    html = (repo / "reports/index.html").read_text()
    assert 'id="classifier"' in html and 'id="gradcam"' in html
    for model in ("classifier", "segmenter"):
        assert (repo / f"models/{model}.keras").exists()
    trained = json.loads((repo / "reports/train_segmenter/metrics.json").read_text())
    assert trained["epochs_trained"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", [on("jax"), on("torch")])
def test_explanations_under_another_backend(backend):
    """tests/test_explain.py (Grad-CAM, integrated gradients, the gradients against closed forms and a finite
    difference) passes on the JAX or PyTorch backend: each backend's gradient code is checked, not only run."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", **thread_env(backend)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/test_explain.py"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout, result.stdout[-2000:]
