"""Tiny real training runs of both stages on demo data: they learn (issues' acceptance tests).

Both run the real stage code (ResNet50 from random init, the ResUNet) on a small demo store at
64 px, and read the best validation value the stage recorded in its dvclive metrics.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.params import load_params
from pipeline.slices import SliceStore, write_store
from pipeline.sources import read_cases
from pipeline.sources.demo import write_kaggle_3m
from pipeline.split import assign_splits, patient_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
    """A working folder holding the default demo set (30 x 24 slices written at 256 px, stored at 64) and its split."""
    work = tmp_path_factory.mktemp("train")
    params = load_params(ROOT / "params.yaml")
    params = replace(params, data=replace(params.data, source="lgg", root=str(work / "kaggle_3m"), image_size=64))
    d = params.demo
    write_kaggle_3m(work / "kaggle_3m", d.patients, d.slices_per_patient, d.image_size, d.seed)
    write_store(read_cases(params.data), work / "data/slices")
    store = SliceStore(work / "data/slices")
    assign_splits(patient_table(store.manifest, store.patients), params.split).to_csv(work / "data/split.csv",
                                                                                        index=False)
    return work, params


@pytest.mark.slow
def test_tiny_classifier_run_beats_chance(demo_workdir, monkeypatch):
    """ResNet50 from random init, 5 epochs at 64 px on the default demo set (432 training slices).

    The first 5 epochs of the default run: validation AUC 0.52, 0.70, 0.67, 0.86, 0.92, identical in
    three runs (seeded, CPU). Asserted: best >= 0.75, a margin of 0.17 for other CPUs and library
    versions. From scratch the first epochs sit near chance while BatchNorm statistics settle, and
    smaller sets (130-190 slices generated at 64 px) stayed at 0.62-0.65 after 6-8 epochs, so this
    test uses the default set rather than "a couple of epochs" on a smaller one.
    """
    from pipeline.stages import train_classifier

    work, params = demo_workdir
    monkeypatch.chdir(work)
    params = replace(params, train=replace(params.train, epochs=5),
                     classifier=replace(params.classifier, weights="none", patience=8))
    train_classifier.run(params)
    metrics = json.loads(Path("reports/train_classifier/metrics.json").read_text())
    assert metrics["pretrained"] is False
    assert metrics["best_val_auc"] >= 0.75, metrics


@pytest.mark.slow
def test_tiny_segmenter_run_beats_empty_and_full_masks(demo_workdir, monkeypatch):
    """ResUNet 16-32-64-128 at 64 px, 8 epochs on the tumour slices of the training patients.

    (Measured on a smaller demo set: 0.75.)

    Baselines on the same validation slices: an empty mask scores Dice 0 on every tumour slice;
    an all-tumour mask scores 2|T| / (|T| + H*W), computed below (about 0.05). Measured best
    validation Dice 0.75; asserted >= 0.5 and at least 0.3 above the all-tumour baseline.
    """
    from pipeline.stages import train_segmenter

    work, params = demo_workdir
    monkeypatch.chdir(work)
    params = replace(params, train=replace(params.train, epochs=8, batch_size=8),
                     segmenter=replace(params.segmenter, filters=(16, 32, 64, 128), epochs_factor=1, patience=8))
    train_segmenter.run(params)
    metrics = json.loads(Path("reports/train_segmenter/metrics.json").read_text())

    store = SliceStore("data/slices")
    split = __import__("pandas").read_csv("data/split.csv")
    val = store.manifest.merge(split)
    val = val[(val.split == "val") & val.has_tumour]
    _, labels = store.read_rows(val)
    tumour = (labels > 0).reshape(len(labels), -1).sum(axis=1)
    all_tumour_dice = float(np.mean(2 * tumour / (tumour + labels[0].size)))
    assert metrics["best_val_dice"] >= 0.5, metrics
    assert metrics["best_val_dice"] >= all_tumour_dice + 0.3, (metrics, all_tumour_dice)
