"""Real-data quality: run the LGG recipe (or the defaults) on a kaggle_3m root and print one JSON line.

The recipe is the set of params below (``RECIPE``); the README's "Real data" section gives the same
settings as ``dvc exp run -S ...`` flags (``--print-dvc`` prints that command line). Every stage runs
in a fresh process in a scratch copy of the pipeline, so the workspace is untouched:

    python benchmarks/quality_lgg.py --root /tmp/lgg50 --size 128            # the recipe at 128 px
    python benchmarks/quality_lgg.py --root /tmp/lgg50 --size 128 --defaults # today's defaults
    python benchmarks/quality_lgg.py --root R --set train.epochs=40 --keep /tmp/run1
    python benchmarks/quality_lgg.py --root /tmp/lgg50 --size 128 --set split.folds=5  # out-of-fold figures
    python benchmarks/quality_lgg.py --store data/slices --set split.folds=5  # an ingested store, no ingest
    python benchmarks/quality_lgg.py --store S --classifier-from /tmp/run1 --set augment.per_channel=true

``--store`` reads an already ingested slice store (its ``data.image_size`` and patients as ingested); the
store is linked read-only into the scratch copy and ``ingest`` is skipped. ``--stage-script`` runs each
stage as ``python SCRIPT STAGE`` instead of ``python -m pipeline STAGE`` (the GPU kit's ``stage.py``).
``--classifier-from RUN`` (with ``--store``) reuses a kept run's split and trained classifiers (every fold's) and
trains only the segmenter, then evaluates: a segmenter setting compared in a third of the whole run's time
(the classifier is RUN's, whatever the classifier params say; the segmenter-variant tables of docs/lgg-experiments.md).

Prints {"benchmark": "quality_lgg", "settings", "patients": {split: n}, "folds", "val_dice_patient_mean" /
"_median" / "_p5", "val_auc" (validation patients; with split.folds > 1 every non-test patient, out of fold; the AUC
of the gate's slice score, evaluate.slice_score), "val_auc_classifier_alone",
"val_dice_patient_mean_per_fold", "val_dice_patient_mean_sd", then the test split's "dice_patient_mean",
"dice_patient_median", "dice_patient_p5", "hd95_median", "auc", "auc_ci", "auc_classifier_alone", "sensitivity",
"specificity" (a slice called tumour when its final mask is not empty, as the headline's; "val_sensitivity",
"val_specificity" out of fold), "gate_sensitivity", "gate_specificity" (the gate's, at its threshold),
"segmenter_dice_slice", "pointing_game", "pointing_chance", "threshold" (the gate's), "seg_threshold" (the
segmenter's pixel threshold), "stage_seconds": {stage: s}, "total_seconds"}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "split", "train_classifier", "train_segmenter", "evaluate", "report")  # __main__.STAGES less demo

# The real-data recipe: what differs from params.yaml for kaggle_3m scans (the README's "The LGG recipe"; every run
# behind it: docs/lgg-experiments.md).
RECIPE: dict[str, Any] = {
    "data.source": "lgg",
    "data.image_size": 256,
    "evaluate.threshold": "patient_dice",
    "classifier.head": "max_cell",  # 5-fold validation AUC 0.947 against 0.889-0.925
    "segmenter.negative_fraction": 0.5,  # out-of-fold cascade AUC 0.959 against 0.944, every fold higher
    "augment.missing_sequences": 0.3,  # the FLAIR-only patients Dice 0 -> 0.51-0.85, OOF p5 >= 0.48, two seeds
    "segmenter.deep_supervision": 2,  # with 16 segmenter epochs: a choice, not a result
}


def parse_value(text: str) -> Any:
    """A -S / --set value as YAML reads it (numbers, booleans, lists), as DVC does."""
    return yaml.safe_load(text)


def apply_settings(params: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """params with dotted keys ("train.lr") set; KeyError for a key params.yaml does not have."""
    for key, value in settings.items():
        section, name = key.split(".", 1)
        if name not in params.get(section, {}):
            raise KeyError(f"{key} is not a key of params.yaml")
        params[section][name] = value
    return params


def dvc_command(settings: dict[str, Any]) -> str:
    return "dvc exp run " + " ".join(f"-S {k}={json.dumps(v) if not isinstance(v, str) else v}"
                                     for k, v in settings.items())


CLASSIFIER_OUTPUTS = ("data/split.csv", "models/classifier.keras", "models/classifier.json",
                      "models/folds/classifier", "reports/train_classifier")  # what --classifier-from copies


def reuse_classifier(run: Path, workdir: Path) -> None:
    """Copy a finished run's split and classifier outputs (``CLASSIFIER_OUTPUTS``; the fold models when there
    are any) into ``workdir``; FileNotFoundError naming what ``run`` lacks."""
    for name in CLASSIFIER_OUTPUTS:
        source, target = run / name, workdir / name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif name != "models/folds/classifier":  # a single split has no fold models
            raise FileNotFoundError(f"{source}: not found (--classifier-from needs a finished run kept with --keep)")


class StageFailed(RuntimeError):
    """A stage's process exited non-zero: its exit status and the last line it logged (a pipeline stage's one-line
    error, ``error: FILE: problem``, or a crash's last traceback line)."""

    def __init__(self, stage: str, status: int, last_line: str):
        super().__init__(f"stage {stage} failed (exit {status}): {last_line.removeprefix('error: ')}")
        self.status = status


def run_stages(workdir: Path, log_path: Path, stages: tuple[str, ...] = STAGES,
               runner: tuple[str, ...] = ("-m", "pipeline")) -> dict[str, float]:
    """Run ``stages`` in order, each in a fresh ``python RUNNER STAGE`` process, its output to ``log_path``;
    seconds per stage. StageFailed for the first that fails (the later ones do not run)."""
    seconds = {}
    log_path.write_text("")  # each stage appends, so a failure's last line can be read back
    for stage in stages:
        start = time.perf_counter()
        with log_path.open("a") as log:
            status = subprocess.run([sys.executable, *runner, stage], cwd=workdir,
                                    stdout=log, stderr=subprocess.STDOUT).returncode
        if status:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            raise StageFailed(stage, status, lines[-1] if lines else "(nothing logged)")
        seconds[stage] = round(time.perf_counter() - start, 1)
    return seconds


def headline(workdir: Path) -> dict[str, Any]:
    """The test split's figures from evaluate's full metrics."""
    full = json.loads((workdir / "reports" / "eval" / "metrics_full.json").read_text())
    test = full["test"]
    clf, cascade, explain = test["classifier"], test["cascade"], test.get("explain", {})
    split = pd.read_csv(workdir / "data" / "split.csv")
    val, folds = full["val"]["cascade"], full["cross_validation"]
    return {
        "patients": {name: int(n) for name, n in split.split.value_counts().sort_index().items()},
        "folds": folds["folds"],
        # validation patients (split.folds > 1: every non-test patient, out of fold), and the spread over folds
        "val_dice_patient_mean": val["dice_patient_mean"], "val_dice_patient_median": val["dice_patient_median"],
        "val_dice_patient_p5": val["dice_patient_p5"], "val_auc": full["val"]["classifier"]["auc"],
        "val_auc_classifier_alone": full["val"]["classifier"]["auc_classifier_alone"],
        "val_dice_patient_mean_per_fold": folds["dice_patient_mean_per_fold"],
        "val_dice_patient_mean_sd": folds["dice_patient_mean_sd"],
        "dice_patient_mean": cascade["dice_patient_mean"], "dice_patient_median": cascade["dice_patient_median"],
        "dice_patient_p5": cascade["dice_patient_p5"], "hd95_median": cascade["hd95_median"],
        "auc": clf["auc"], "auc_ci": [clf["auc_ci_low"], clf["auc_ci_high"]],
        "auc_classifier_alone": clf["auc_classifier_alone"],
        "sensitivity": test["cascade_slices"]["sensitivity"], "specificity": test["cascade_slices"]["specificity"],
        "val_sensitivity": full["val"]["cascade_slices"]["sensitivity"],
        "val_specificity": full["val"]["cascade_slices"]["specificity"],
        "gate_sensitivity": clf["sensitivity"], "gate_specificity": clf["specificity"],
        "segmenter_dice_slice": test["segmenter"]["dice_slice_mean"],
        "pointing_game": explain.get("pointing_game"), "pointing_chance": explain.get("pointing_game_chance"),
        "threshold": full["threshold"]["value"], "seg_threshold": full["postprocessing"].get("seg_threshold"),
        "keep_largest_component": full["postprocessing"]["keep_largest_component"],
        "fill_holes": full["postprocessing"].get("fill_holes", False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="kaggle_3m root (folder of TCGA_* case folders)")
    parser.add_argument("--store", type=Path, help="an ingested slice store (data/slices) to use instead of --root")
    parser.add_argument("--stage-script", type=Path, help="run stages as `python SCRIPT STAGE` (default -m pipeline)")
    parser.add_argument("--size", type=int, default=None,
                        help="image size in px (default: the recipe's 256; with --defaults, params.yaml's)")
    parser.add_argument("--defaults", action="store_true", help="params.yaml's defaults instead of the recipe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra params, as -S")
    parser.add_argument("--keep", type=Path, help="run in this folder, new or empty, and keep it (default: a deleted "
                                                  "temp folder)")
    parser.add_argument("--print-dvc", action="store_true", help="print the recipe as a dvc exp run command")
    parser.add_argument("--classifier-from", type=Path, metavar="RUN",
                        help="a run kept with --keep: reuse its split and classifiers, train only the segmenter "
                             "(needs --store)")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists() and (not args.keep.is_dir() or any(args.keep.iterdir())):
        parser.error(f"--keep {args.keep}: exists and is not an empty folder; give a new one (a run's outputs would "
                     "mix with what is there)")

    settings = {"data.source": "lgg"} if args.defaults else dict(RECIPE)
    if args.size is not None:
        settings["data.image_size"] = args.size
    settings.update({k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)})
    if args.print_dvc:
        print(dvc_command({**settings, "data.root": str(args.root or "/path/to/kaggle_3m")}))
        return
    if args.store is not None:
        if not (args.store / "manifest.csv").is_file():
            parser.error(f"--store {args.store}: no manifest.csv (not an ingested slice store)")
        patients = json.loads((args.store / "patients.json").read_text())
        stored_size = int(np.load(next((args.store / "arrays").glob("*.image.npy")), mmap_mode="r").shape[1])
        if args.size not in (None, stored_size):
            parser.error(f"--store {args.store} holds {stored_size} px slices, not {args.size}")
        settings["data.image_size"] = stored_size
        settings["data.root"] = str(Path(next(iter(patients.values()))["meta"]["path"]).parent)
    elif args.root is None or not args.root.is_dir():
        parser.error("--root must be a kaggle_3m folder (or give --store)")
    else:
        settings["data.root"] = str(args.root.resolve())
    stages = STAGES[1:] if args.store is not None else STAGES
    if args.classifier_from is not None:
        if args.store is None:
            parser.error("--classifier-from needs --store (the store the run was trained on)")
        stages = ("train_segmenter", "evaluate", "report")
    runner = (str(args.stage_script.resolve()),) if args.stage_script else ("-m", "pipeline")

    with tempfile.TemporaryDirectory(prefix="quality_lgg_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(REPO / "pipeline", workdir / "pipeline", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        params = apply_settings(yaml.safe_load((REPO / "params.yaml").read_text()), settings)
        (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if args.store is not None:
            (workdir / "data").mkdir(exist_ok=True)
            (workdir / "data" / "slices").symlink_to(args.store.resolve(), target_is_directory=True)
        if args.classifier_from is not None:
            reuse_classifier(args.classifier_from, workdir)
        start = time.perf_counter()
        try:
            seconds = run_stages(workdir, workdir / "stages.log", stages, runner)
        except StageFailed as e:  # one line, not a traceback; the stage's whole log stays with --keep
            print(f"error: {e}" + (f" (log: {workdir / 'stages.log'})" if args.keep else ""), file=sys.stderr)
            raise SystemExit(e.status) from None
        result = {"benchmark": "quality_lgg", "settings": settings, **headline(workdir), "stage_seconds": seconds,
                  "total_seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
