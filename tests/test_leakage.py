"""No slice of a test patient (no scan of a test person) is seen in training or in threshold selection."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_models import LAST_CONV, tiny_classifier

from pipeline.evaluation.scoring import choose_threshold


def scored_slices(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split, n_patients in (("val", 6), ("test", 6)):
        for p in range(n_patients):
            y = rng.random(20) < 0.4
            prob = np.clip(0.35 * y + rng.normal(0.35, 0.2, 20), 0, 1)
            tumour_px = np.where(y, rng.integers(20, 400, 20), 0)
            seg_px = np.where(y, tumour_px, 0) + rng.integers(0, 60, 20) * (rng.random(20) < 0.5)
            rows.append(pd.DataFrame({"patient_id": f"{split}{p}", "split": split, "slice_index": np.arange(20),
                                      "has_tumour": y, "probability": prob, "tumour_pixels": tumour_px,
                                      "seg_pixels": seg_px, "seg_overlap_pixels": (tumour_px * 0.8).astype(int)}))
    return pd.concat(rows, ignore_index=True)


def test_threshold_ignores_test_labels_and_scores():
    slices = scored_slices()
    for rule in ("youden", "f1", "sensitivity:0.9", "patient_dice"):
        before = choose_threshold(slices, rule)
        leaked = slices.copy()
        test = leaked.split == "test"
        # Make the test split pull any leaking rule elsewhere: flip its labels, shift its scores.
        leaked.loc[test, "has_tumour"] = ~leaked.loc[test, "has_tumour"]
        leaked.loc[test, "probability"] = 1 - leaked.loc[test, "probability"] ** 3
        assert choose_threshold(leaked, rule) == before, rule
        # ...while changing the validation split does move it (the test can fail).
        moved = slices.copy()
        val = moved.split == "val"
        moved.loc[val, "probability"] = moved.loc[val, "probability"] ** 3
        assert choose_threshold(moved, rule) != before, rule


def add_rescan(root: Path, case: str, date: str) -> str:
    """Copy kaggle_3m case folder ``case`` as a second scan of its patient, ``TCGA_<site>_<patient>_<date>``."""
    rescan = f"{case.rsplit('_', 1)[0]}_{date}"
    (root / rescan).mkdir()
    for path in (root / case).iterdir():
        shutil.copy(path, root / rescan / path.name.replace(case, rescan))
    return rescan


@pytest.mark.parametrize("split_from", ["random", "file"])
def test_training_stages_never_read_test_patients(tmp_path, monkeypatch, split_from):
    """Run both training stages on a tiny demo store, with patients scanned twice, and record every
    patient (the person, not only the scan folder) whose arrays are read; the split comes from the
    split stage, seeded or from a split.file."""

    from pipeline.data.demo import write_kaggle_3m
    from pipeline.data.slices import SliceStore, write_store
    from pipeline.data.sources import read_cases
    from pipeline.data.split import read_split
    from pipeline.params import load_params
    from pipeline.stages import split as split_stage
    from pipeline.stages import train_classifier, train_segmenter

    monkeypatch.chdir(tmp_path)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params = replace(params,
                     data=replace(params.data, source="lgg", root=str(tmp_path / "kaggle_3m"), image_size=32),
                     train=replace(params.train, epochs=1, batch_size=8),
                     segmenter=replace(params.segmenter, filters=(16, 32), epochs_factor=1))
    names = sorted(write_kaggle_3m(tmp_path / "kaggle_3m", patients=9, slices_per_patient=6, image_size=64, seed=3))
    rescans = [add_rescan(tmp_path / "kaggle_3m", names[k], "20200202") for k in (0, 4, 8)]
    write_store(read_cases(params.data), "data/slices")
    store = SliceStore("data/slices")
    person = {pid: store.patients[pid]["meta"]["patient"] for pid in store.patient_ids}
    assert len(person) == 12 and len(set(person.values())) == 9
    if split_from == "file":  # patients 0-1 test (0 with two scans), 2-3 val, the rest train
        split_of = {person[name]: "test" if k < 2 else "val" if k < 4 else "train" for k, name in enumerate(names)}
        cases = names + rescans
        pd.DataFrame({"patient_id": cases, "split": [split_of[person[c]] for c in cases]}).to_csv("my_split.csv",
                                                                                                   index=False)
        params = replace(params, split=replace(params.split, file="my_split.csv"))
    split_stage.run(params)
    split = read_split("data/split.csv")
    assert list(split.columns) == ["patient_id", "split"]  # split.folds 1: no fold column, as before folds existed
    assert sorted(split.patient_id) == sorted(names + rescans)  # split.csv: one row per scan (case id)
    test_patients = {person[pid] for pid in split.patient_id[split.split == "test"]}
    assert test_patients and (split_from == "random" or len(test_patients) == 2)

    read: set[str] = set()
    for method in ("images", "labels"):
        original = getattr(SliceStore, method)

        def recording(self, patient_id, _original=original):
            read.add(patient_id)
            return _original(self, patient_id)
        monkeypatch.setattr(SliceStore, method, recording)

    def tiny_backbone(size, backbone, weights, dropout, head):
        info = {"backbone": backbone, "pretrained": False, "weights_source": "none", "preprocessing": "none",
                "last_conv_layer": LAST_CONV}
        return tiny_classifier(size, (4,), padding="valid", scale=None), info
    monkeypatch.setattr(train_classifier, "build_classifier", tiny_backbone)

    train_classifier.run(params)
    train_segmenter.run(params)
    assert read, "the recorder saw the stages read slices"
    read_patients = {person[pid] for pid in read}  # the people behind the scans read
    assert read_patients.isdisjoint(test_patients), f"training read test patients {sorted(read_patients & test_patients)}"
    assert Path("models/classifier.keras").exists() and Path("models/segmenter.keras").exists()
    for folder in ("models/folds/classifier", "models/folds/segmenter", "reports/train_classifier/folds"):
        assert Path(folder).is_dir() and not any(Path(folder).iterdir())  # declared DVC outs: there, and empty
    assert json.loads(Path("models/classifier.json").read_text())["fold"] is None
