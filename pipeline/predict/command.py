"""``python -m pipeline predict INPUT -o OUTDIR``: the command line of ``pipeline.predict``.

Exit code 0 when every case succeeded, 1 when some failed, 2 when all failed or the command itself is
unusable (bad arguments, missing or inconsistent model bundle, unrecognised input, an output folder
that overlaps the input). Errors are one line each on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError, one_line
from pipeline.evaluation.validation import describe_cohort
from pipeline.paths import MODELS_DIR
from pipeline.predict.outputs import RUN_INDEX, write_run_index
from pipeline.predict.predictor import Predictor

log = logging.getLogger("pipeline")


def main(argv: list[str], setup_logging: Callable[[bool], None]) -> int:
    """``python -m pipeline predict``: 0 all cases done, 1 some failed, 2 all failed or unusable command."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline predict",
        description="Run the trained classifier-gated segmenter on new scans: a kaggle_3m TIFF slice or case "
                    "folder, a BraTS case folder (2017-2021 or 2023 names), a Decathlon 4D NIfTI, or a folder holding "
                    "several.",
        epilog="Writes OUTDIR/<case id>/ (mask NIfTI in the input's space, or kaggle_3m mask TIFFs; overlay "
               "PNGs; summary.json) and OUTDIR/predictions.json listing every case (without per-slice detail) and "
               "every failure.")
    parser.add_argument("input", type=Path, help="file or folder to predict on")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (created if needed)")
    parser.add_argument("--models", type=Path, default=MODELS_DIR,
                        help="model bundle folder: classifier.keras, segmenter.keras and cascade.json, which "
                             "`dvc repro` writes (default: models), or the ONNX bundle `python -m pipeline export` "
                             "writes (run on ONNX Runtime)")
    parser.add_argument("--threshold", type=_probability,
                        help="gate in [0, 1] on the bundle's slice score (cascade.json gate.score: the classifier's "
                             "probability, or that times the segmenter's highest pixel probability); default: the "
                             "one `evaluate` chose, in MODELS/cascade.json")
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="slices per model call (default: 16)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    try:
        predictor = Predictor.from_dir(args.models, threshold=args.threshold, batch_size=args.batch_size)
        results = predictor.predict_path(args.input, args.output)
    except PipelineError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    try:
        index = write_run_index(results, args.output / RUN_INDEX)
    except OSError as e:
        print(f"error: {one_line(f'{args.output / RUN_INDEX}: cannot write the run index ({e.strerror or e})')}",
              file=sys.stderr)
        return 2
    if index["validation"] is not None:
        log.info("external validation: %s", describe_cohort(index["validation"]))
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        log.error("%d of %d cases failed:", len(failed), len(results))
        for r in failed:
            print(f"error: {r['error']}", file=sys.stderr)
        return 2 if len(failed) == len(results) else 1
    log.info("%d case(s) predicted -> %s", len(results), args.output)
    return 0


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value
