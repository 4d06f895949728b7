"""Paired comparison of two model sets scored on the same patients: the yardstick of the recipe's choices.

A setting is judged against the one it would replace patient by patient, not by the difference of two means: the
mean per-patient difference with a patient-bootstrap 95% interval, the median difference, and how many patients
move by more than a margin up and down, with the two-sided sign test's p. The README's "How the recipe was chosen"
and docs/lgg-experiments.md give their figures this way; ``benchmarks/compare_runs.py`` computes them from two
runs' ``eval/patients.csv``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

N_BOOTSTRAP = 10_000
MOVE_MARGIN = 0.005  # a patient "moves" when its Dice changes by more than this


def paired_difference(a: pd.Series, b: pd.Series, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Mean of a - b over the patients both have (index: patient id; NaN on either side drops the patient), with a
    patient-bootstrap 95% interval: {"mean", "ci95": [low, high], "n"}. ValueError when no patient is in both."""
    d = (a - b).dropna().to_numpy(float)
    if not len(d):
        raise ValueError("no patient has a value in both series")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n_bootstrap, len(d)))].mean(axis=1)
    return {"mean": float(d.mean()), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "n": len(d)}


def sign_test_p(up: int, down: int) -> float:
    """Two-sided exact sign test (SciPy's binomial test at 1/2): the probability, under a fair coin, of a split of
    up + down at least as uneven as this one (1.0 when nothing moved)."""
    return float(binomtest(min(up, down), up + down, 0.5).pvalue) if up + down else 1.0


def paired_comparison(new: pd.Series, base: pd.Series, margin: float = MOVE_MARGIN,
                      n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """``new`` against ``base``, per-patient values (index: patient id) on the patients both have:
    ``paired_difference``'s {"mean", "ci95", "n"} plus "median" (of the differences), "up" / "down" (patients whose
    value rises / falls by more than ``margin``) and "sign_test_p" (``sign_test_p(up, down)``)."""
    d = (new - base).dropna()
    result = paired_difference(new, base, n_bootstrap, seed)
    up, down = int((d > margin).sum()), int((d < -margin).sum())
    return result | {"median": float(d.median()), "up": up, "down": down, "sign_test_p": sign_test_p(up, down)}
