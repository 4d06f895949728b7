"""The fold ensemble against each of its members, on the test patients of a cross-validated run.

Out-of-fold figures are those of single fold models; the bundle that ``predict`` and the test split use is
their ensemble (the mean of the folds' probabilities). This measures what the ensemble adds, on patients
that none of the folds trained on:

    python benchmarks/quality_lgg.py --root /tmp/lgg50 --size 128 --set split.folds=5 ... --keep /tmp/run
    python benchmarks/ensemble_members.py /tmp/run      # or a workspace after `dvc repro` with folds

The run needs split.folds > 1 and test patients (split.test > 0). Every model scores the test patients at
the bundle's operating point (``models/cascade.json``: the gate, pixel threshold and post-processing chosen
out of fold), the ensemble first, then each fold's classifier + segmenter alone. Prints JSON:
{"benchmark": "ensemble_members", "run", "patients" (test patients with tumour), "models": {name: {"dice_mean",
"dice_median", "dice_p5", "auc" (the slice AUC of the gate's score, evaluate.slice_score)}}, "paired": {fold name:
the ensemble's mean per-patient Dice minus the fold model's, "ci95": patient bootstrap}, "paired_members_mean": the
same against the members' mean per patient, "dice_per_patient": {patient id: {model name: Dice}}, for pairing
with other runs on the same patients}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline.quiet  # noqa: E402,F401  (no library noise on the console)
from pipeline.data.slices import SliceStore  # noqa: E402
from pipeline.data.split import fold_count, read_split  # noqa: E402
from pipeline.errors import InputError, PipelineError, one_line  # noqa: E402
from pipeline.evaluation.bundle import CASCADE_FILE, read_bundle  # noqa: E402
from pipeline.evaluation.cascade import members  # noqa: E402
from pipeline.evaluation.paired import paired_difference  # noqa: E402
from pipeline.evaluation.scoring import check_models_never_saw, evaluate_split, score_patients  # noqa: E402
from pipeline.paths import MODELS_DIR, SLICES_DIR, SPLIT_CSV  # noqa: E402
from pipeline.predict.predictor import Predictor  # noqa: E402

log = logging.getLogger("ensemble_members")


def summary(dice: pd.Series, auc: float) -> dict[str, float]:
    return {"dice_mean": float(dice.mean()), "dice_median": float(dice.median()),
            "dice_p5": float(dice.quantile(0.05)), "auc": float(auc)}


def score_models(run: Path) -> tuple[dict[str, pd.Series], dict[str, float]]:
    """Per-patient cascade Dice of the test patients with tumour (index: patient id) and the slice AUC of the gate's
    score (the bundle's slice_score, as evaluate reports it), for the ensemble ("ensemble") and each fold's models
    alone ("fold_0", ...), at the bundle's operating point. InputError naming the file for a run without folds or
    test patients with tumour, a bundle of another fold count, or models trained on a patient they would score."""
    split = read_split(str(run / SPLIT_CSV))  # train (in folds) and test: only the test patients are scored
    test, folds = split.patient_id[split.split == "test"], fold_count(split)
    if folds < 2 or test.empty:
        raise InputError(run / SPLIT_CSV, "needs folds (split.folds > 1) and test patients (split.test > 0)")
    models = run / MODELS_DIR
    bundle, store = read_bundle(models), SliceStore(run / SLICES_DIR)
    if len(bundle.classifiers) != folds:
        raise InputError(models / CASCADE_FILE, f"lists {len(bundle.classifiers)} fold models of each kind, "
                                                f"{run / SPLIT_CSV} has {folds} folds: re-run evaluate")
    check_models_never_saw(split, [(models / c, models / s)
                                   for c, s in zip(bundle.classifiers, bundle.segmenters, strict=True)])
    if not any(store.labels(p).any() for p in test):
        raise InputError(run / SPLIT_CSV, "no test patient has tumour: no Dice to compare")
    ensemble = Predictor.from_dir(models).cascade  # the bundle as predict loads it: gate, pixel threshold, post
    cascades = {"ensemble": ensemble} | {
        f"fold_{f}": replace(ensemble, classifier=c, segmenter=s)
        for f, (c, s) in enumerate(zip(members(ensemble.classifier), members(ensemble.segmenter), strict=True))}
    dice, auc = {}, {}
    for name, cascade in cascades.items():
        metrics, _, patients = evaluate_split(score_patients(store, split, cascade), store, "test", bundle.threshold,
                                              bundle.post, n_bootstrap=2, seed=0)  # its AUC interval is not used
        dice[name] = patients[patients.has_tumour].set_index("patient_id").dice_cascade
        auc[name] = metrics["classifier"]["auc"]
        log.info("%s: Dice mean %.3f, AUC %.3f", name, dice[name].mean(), auc[name])
    return dice, auc


def report(run: Path, dice: dict[str, pd.Series], auc: dict[str, float]) -> dict:
    """The printed JSON (the module docstring) from score_models' per-patient Dice and slice AUCs."""
    folds = [name for name in dice if name != "ensemble"]
    members_mean = pd.concat([dice[f] for f in folds], axis=1).mean(axis=1)
    return {
        "benchmark": "ensemble_members", "run": str(run), "patients": len(dice["ensemble"]),
        "models": {name: summary(dice[name], auc[name]) for name in dice},
        "paired": {f: paired_difference(dice["ensemble"], dice[f]) for f in folds},
        "paired_members_mean": paired_difference(dice["ensemble"], members_mean),
        "dice_per_patient": pd.DataFrame(dice).to_dict(orient="index"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a workspace or a run kept by quality_lgg.py --keep")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    run = args.run.resolve()
    if not run.is_dir():
        log.error("%s: not a folder (a workspace or a run kept by quality_lgg.py --keep)", one_line(str(run)))
        sys.exit(2)
    try:
        dice, auc = score_models(run)
    except PipelineError as e:  # one line naming the file, exit 2, as the pipeline's commands
        log.error("%s", one_line(str(e)))
        sys.exit(2)
    print(json.dumps(report(run, dice, auc)))


if __name__ == "__main__":
    main()
