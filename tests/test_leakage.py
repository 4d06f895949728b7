"""No slice of a test patient is seen in training or in threshold selection."""

from __future__ import annotations

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
