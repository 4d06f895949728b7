"""Data-parallel training (``train.devices``, pipeline/models/devices.py) without GPUs: JAX on the CPU split
into two virtual devices (XLA_FLAGS=--xla_force_host_platform_device_count=2).

Both training stages run as `dvc repro` runs them (a fresh ``python -m pipeline train_segmenter`` /
``train_classifier``), once on one device and once on two, with the same global batch, learning rate and
seed, on a few patients of the demo set (TRAIN_PATIENTS / VAL_PATIENTS; the rest are test, never read):
Keras' DataParallel splits each batch and XLA reduces gradients and batch statistics over both halves, so
the loss curves agree up to the order of floating-point sums. The classifier's backbone is
``tiny_models.tiny_backbone`` (registered in the subprocess, ``CLI``): ResNet50 in miniature, with its
BatchNormalization and zero-initialised residual branch, trains in seconds where ResNet50 took minutes.
Measured on the 2-core CPU, largest relative difference of the per-epoch training loss over 2 epochs: the
segmenter 1e-6 or less (0 in the last run); the classifier 9e-8 (with ResNet50 it was 2.3e-3: Adam turns the
float-order noise of near-zero gradients in its zero-initialised residual branches into steps of the full
learning rate, and 50 layers carry them on; with dropout 0.3, 3.7e-2, so the test turns dropout off).
Asserted: LOSS_RTOL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_models import TINY_BACKBONE

from pipeline.errors import ParamsError
from pipeline.params import Params, load_params, params_from_dict

pytest.importorskip("jax", reason="data-parallel training runs on the JAX backend (pip install .[jax])")

ROOT = Path(__file__).resolve().parents[1]
LOSS_RTOL = 1e-4  # per-epoch training loss, 2 devices vs 1
TRAIN_PATIENTS, VAL_PATIENTS = 2, 1  # of the demo set's training / validation patients; the others become test
# `python -m pipeline ARGS` with the tiny backbone registered first (tests/ on PYTHONPATH)
CLI = ("import sys\nimport pipeline.__main__ as cli\nfrom tiny_models import register_tiny_backbone\n"
       "register_tiny_backbone()\nsys.exit(cli.main(sys.argv[1:]))\n")


def _workdir(demo_store: Path, work: Path) -> tuple[Path, Params]:
    (work / "data").mkdir(parents=True)
    (work / "data" / "slices").symlink_to(demo_store / "data" / "slices")
    split = pd.read_csv(demo_store / "data" / "split.csv")
    kept = set(split[split.split == "train"].patient_id[:TRAIN_PATIENTS]) | set(
        split[split.split == "val"].patient_id[:VAL_PATIENTS])
    split.assign(split=split.split.where(split.patient_id.isin(kept), "test")).to_csv(
        work / "data" / "split.csv", index=False)
    params = load_params(ROOT / "params.yaml")
    params = replace(params, data=replace(params.data, source="lgg", root=str(demo_store / "kaggle_3m")),
                     train=replace(params.train, epochs=2, batch_size=8),
                     segmenter=replace(params.segmenter, filters=(8, 16), epochs_factor=1, patience=8))
    return work, params


def _train(stage: str, work: Path, params: Params) -> tuple[pd.DataFrame, str]:
    """``python -m pipeline <stage>`` (``CLI``) under JAX with two virtual CPU devices: (training loss per
    epoch, the log)."""
    (work / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(params)))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "tests"))), "KERAS_BACKEND": "jax",
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", CLI, stage], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    loss = pd.read_csv(work / "reports" / stage / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")
    return loss, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train_segmenter", "train_classifier"])
def test_two_devices_train_what_one_device_trains(stage: str, demo_store: Path, tmp_path: Path) -> None:
    """The classifier: the tiny backbone from random init at 64 px (its BatchNormalization statistics are
    reduced over both devices too), `weights: none`, dropout off, 2 epochs."""
    curves = {}
    for devices in (1, 2):
        work, params = _workdir(demo_store, tmp_path / f"devices_{devices}")
        params = replace(params, train=replace(params.train, devices=devices),
                         classifier=replace(params.classifier, backbone=TINY_BACKBONE, weights="none", dropout=0.0))
        curves[devices], log = _train(stage, work, params)
        assert f"training on {devices} device{'s' if devices > 1 else ''} " in log, log[-2000:]
    one, two = curves[1]["loss"].to_numpy(), curves[2]["loss"].to_numpy()
    assert len(one) == len(two) == 2
    difference = abs(two - one) / abs(one)
    print(f"{stage}: per-epoch training loss, 1 device {one.tolist()}, 2 devices {two.tolist()}, "
          f"relative difference {difference.max():.2e}")
    assert difference.max() <= LOSS_RTOL


def test_devices_param_is_auto_or_a_positive_count() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params_from_dict(raw).train.devices == "auto"
    for bad in (0, "all", 1.5):
        raw["train"]["devices"] = bad
        with pytest.raises(ParamsError, match="train.devices"):
            params_from_dict(raw)


def test_rows_are_cut_to_what_the_devices_share_evenly() -> None:
    """Two devices: validation rows (read in order) are cut to an even count; shuffled training rows, whose
    batches are always full, are kept; without a distribution nothing changes."""
    probe = ("import pandas as pd\nfrom pipeline.models.devices import rows_for_this_process, use_devices\n"
             "rows = pd.DataFrame({'slice_index': range(5)})\n"
             "before = len(rows_for_this_process(rows, shuffled=False))\n"
             "assert use_devices('auto', 8) == 2\n"
             "print(before, len(rows_for_this_process(rows, shuffled=False)), len(rows_for_this_process(rows, True)))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["5", "4", "5"]
