"""No slice of a test patient is seen in training or in threshold selection."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.evaluation import choose_threshold


def scored_slices(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split, n_patients in (("val", 6), ("test", 6)):
        for p in range(n_patients):
            y = rng.random(20) < 0.4
            prob = np.clip(0.35 * y + rng.normal(0.35, 0.2, 20), 0, 1)
            rows.append(pd.DataFrame({"patient_id": f"{split}{p}", "split": split, "slice_index": np.arange(20),
                                      "has_tumour": y, "probability": prob}))
    return pd.concat(rows, ignore_index=True)


def test_threshold_ignores_test_labels_and_scores():
    slices = scored_slices()
    for rule in ("youden", "f1", "sensitivity:0.9"):
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


def test_training_stages_never_read_test_patients(tmp_path, monkeypatch):
    """Run both training stages on a tiny demo store and record every patient whose arrays are read."""
    import keras

    from pipeline.params import load_params
    from pipeline.slices import SliceStore, write_store
    from pipeline.sources import read_cases
    from pipeline.sources.demo import write_kaggle_3m
    from pipeline.split import assign_splits, patient_table
    from pipeline.stages import train_classifier, train_segmenter

    monkeypatch.chdir(tmp_path)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params = replace(params,
                     data=replace(params.data, source="lgg", root=str(tmp_path / "kaggle_3m"), image_size=32),
                     train=replace(params.train, epochs=1, batch_size=8),
                     segmenter=replace(params.segmenter, filters=(16, 32), epochs_factor=1))
    write_kaggle_3m(tmp_path / "kaggle_3m", patients=9, slices_per_patient=6, image_size=64, seed=3)
    write_store(read_cases(params.data), "data/slices")
    store = SliceStore("data/slices")
    split = assign_splits(patient_table(store.manifest, store.patients), params.split)
    split.to_csv("data/split.csv", index=False)
    test_patients = set(split.patient_id[split.split == "test"])
    assert test_patients

    read: set[str] = set()
    for method in ("images", "labels"):
        original = getattr(SliceStore, method)

        def recording(self, patient_id, _original=original):
            read.add(patient_id)
            return _original(self, patient_id)
        monkeypatch.setattr(SliceStore, method, recording)

    def tiny_classifier(size, backbone, weights, dropout):
        inputs = keras.Input((size, size, 3), name="image")
        x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(1, activation="sigmoid", name="tumour_probability")(x)
        info = {"backbone": backbone, "pretrained": False, "weights_source": "none", "preprocessing": "none",
                "last_conv_layer": "conv"}
        return keras.Model(inputs, outputs), info
    monkeypatch.setattr(train_classifier, "build_classifier", tiny_classifier)

    train_classifier.run(params)
    train_segmenter.run(params)
    assert read, "the recorder saw the stages read slices"
    assert read.isdisjoint(test_patients), f"training read test patients {sorted(read & test_patients)}"
    assert Path("models/classifier.keras").exists() and Path("models/segmenter.keras").exists()
