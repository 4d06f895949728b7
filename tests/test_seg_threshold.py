"""evaluate.seg_threshold auto: the segmenter's pixel threshold chosen with the gate on the validation patients
(``scoring.choose_seg_threshold``), the masks redrawn from the kept levels (``scoring.at_seg_threshold``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.postprocess import PostProcessing
from pipeline.evaluation.scoring import SEG_THRESHOLD_CANDIDATES, Scored, at_seg_threshold, choose_seg_threshold
from pipeline.models.nets.segmenter import PIXEL_THRESHOLD

POST = [PostProcessing(0, False), PostProcessing(0, True)]


def scored(patients: dict[str, tuple[str, float, float]], seed: int = 0) -> Scored:
    """Scored outputs of patients {id: (split, tumour probability, background probability)}: 4 slices of 16 px, a
    tumour on slices 1-2 whose pixels the segmenter gives about the tumour probability (+-0.02), the rest about the
    background's; the gate score is 0.9 on every slice. Masks at PIXEL_THRESHOLD, levels kept for the candidates
    (as ``score_patients(..., seg_thresholds=SEG_THRESHOLD_CANDIDATES)``); the probabilities are ``.probabilities``."""
    rng = np.random.default_rng(seed)
    rows, masks, truth, probabilities = [], {}, {}, {}
    for pid, (split, tumour, background) in patients.items():
        t = np.zeros((4, 16, 16), bool)
        t[1:3, 4:10, 5:11] = True
        p = (np.where(t, tumour, background) + rng.uniform(-0.02, 0.02, t.shape)).astype(np.float32)
        truth[pid], probabilities[pid], masks[pid] = t, p, p >= PIXEL_THRESHOLD
        rows += [{"patient_id": pid, "slice_index": i, "split": split, "has_tumour": bool(t[i].any()),
                  "tumour_pixels": int(t[i].sum()), "probability": 0.9, "classifier_probability": 0.9,
                  "seg_pixels": int(masks[pid][i].sum()), "seg_overlap_pixels": int((masks[pid][i] & t[i]).sum())}
                 for i in range(4)]
    levels = {pid: np.sum([p >= t for t in SEG_THRESHOLD_CANDIDATES], axis=0, dtype=np.uint8)
              for pid, p in probabilities.items()}
    out = Scored(pd.DataFrame(rows), masks, truth, SEG_THRESHOLD_CANDIDATES, levels)
    out.probabilities = probabilities
    return out


def test_at_seg_threshold_redraws_the_masks_and_their_counts():
    before = scored({"a": ("val", 0.35, 0.1), "b": ("test", 0.7, 0.25)})
    at = at_seg_threshold(before, 0.3)
    for pid, probabilities in before.probabilities.items():
        np.testing.assert_array_equal(at.seg_masks[pid], probabilities >= 0.3)
        rows = at.slices[at.slices.patient_id == pid]
        np.testing.assert_array_equal(rows.seg_pixels, at.seg_masks[pid].sum(axis=(1, 2)))
        np.testing.assert_array_equal(rows.seg_overlap_pixels, (at.seg_masks[pid] & before.truth[pid]).sum(axis=(1, 2)))
    assert at.seg_masks["a"].sum() == before.truth["a"].sum()  # 0.33-0.37 tumour, 0.08-0.12 background
    assert not before.seg_masks["a"].any() and before.slices.seg_pixels.iloc[:4].sum() == 0  # the input is unchanged
    assert set(at_seg_threshold(before, 0.3, splits=("val",)).seg_masks) == {"a"}
    with pytest.raises(ValueError, match="not among the seg_thresholds scored"):
        at_seg_threshold(before, 0.33)
    with pytest.raises(ValueError, match="not among the seg_thresholds scored"):
        at_seg_threshold(Scored(before.slices, before.seg_masks, before.truth), 0.3)


def test_an_under_confident_segmenter_gets_a_lower_threshold_and_a_confident_one_keeps_its_own():
    # Tumour at 0.33-0.37: at the trained 0.5 nothing is segmented (Dice 0); 0.2-0.3 find it whole.
    low = choose_seg_threshold(scored({"v1": ("val", 0.35, 0.1), "v2": ("val", 0.35, 0.1)}), "patient_dice", POST,
                               PIXEL_THRESHOLD)
    assert 0.2 <= low <= 0.3
    # Tumour at 0.93-0.97, background at 0.08-0.12: every candidate scores Dice 1, the tie keeps the trained one.
    assert choose_seg_threshold(scored({"v": ("val", 0.95, 0.1)}), "patient_dice", POST,
                                PIXEL_THRESHOLD) == PIXEL_THRESHOLD
    # An over-confident one (background at 0.58-0.62) gets a higher threshold.
    assert choose_seg_threshold(scored({"v": ("val", 0.95, 0.6)}), "youden", POST, PIXEL_THRESHOLD) >= 0.65
    with pytest.raises(ValueError, match="trained pixel threshold 0.42 is not among"):
        choose_seg_threshold(scored({"v": ("val", 0.95, 0.6)}), "youden", POST, 0.42)


def test_test_patients_never_move_the_pixel_threshold():
    val = {"v1": ("val", 0.35, 0.1), "v2": ("val", 0.4, 0.05)}
    alone = choose_seg_threshold(scored(val), "patient_dice", POST, PIXEL_THRESHOLD)
    assert alone <= 0.3
    # Test patients that only a threshold above 0.6 would segment well change nothing...
    with_test = scored({**val, "t1": ("test", 0.95, 0.6), "t2": ("test", 0.9, 0.65)})
    assert choose_seg_threshold(with_test, "patient_dice", POST, PIXEL_THRESHOLD) == alone
    # ...while the same patients as validation patients do move it (the test can fail).
    as_val = scored({**val, "t1": ("val", 0.95, 0.6), "t2": ("val", 0.9, 0.65), "t3": ("val", 0.95, 0.6)})
    assert choose_seg_threshold(as_val, "patient_dice", POST, PIXEL_THRESHOLD) >= 0.65


def test_without_validation_tumour_the_trained_threshold_stays():
    free = scored({"v": ("val", 0.35, 0.1)})
    free.truth["v"][:] = False
    free.slices["has_tumour"], free.slices["tumour_pixels"], free.slices["seg_overlap_pixels"] = False, 0, 0
    assert choose_seg_threshold(free, "patient_dice", POST, PIXEL_THRESHOLD) == PIXEL_THRESHOLD
