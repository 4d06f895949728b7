"""Command line: ``python -m pipeline <stage> [--params params.yaml]``.

Every DVC stage calls exactly this. A PipelineError (bad input, bad params) is printed in one
line and the exit code is 2; nothing half-written is left behind by the stages.

``python -m pipeline predict INPUT -o OUTDIR`` runs the trained cascade on new scans (see
``pipeline.predict.command`` and ``pipeline.predict``); exit code 0 when every case succeeded, 1 when some failed, 2 when all failed
or the command itself is unusable (bad arguments, missing models, unrecognised input).
``python -m pipeline export -o OUTDIR`` writes the model bundle with its models as ONNX (``pipeline.export``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import pipeline.quiet  # noqa: F401  (before any library: no start-up noise on the console)
from pipeline.errors import PipelineError, one_line

STAGES = ("demo", "ingest", "split", "train_classifier", "train_segmenter", "evaluate", "report")

log = logging.getLogger("pipeline")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "predict":
        # Imported by name, like the stages: the stages do not depend on the predict command's code.
        return importlib.import_module("pipeline.predict.command").main(argv[1:], _setup_logging)
    if argv and argv[0] == "export":
        return importlib.import_module("pipeline.export").main(argv[1:], _setup_logging)
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0],
                                     epilog="Prediction on new scans: python -m pipeline predict INPUT -o OUTDIR "
                                            "(python -m pipeline predict --help); ONNX export of the models: "
                                            "python -m pipeline export -o OUTDIR")
    parser.add_argument("stage", choices=STAGES, help="the pipeline stage to run")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from pipeline.params import load_params, stage_reads
    from pipeline.writing import check_stage_writes_no_input, remove_stale_temporaries

    try:
        params = load_params(args.params)
        stage = importlib.import_module(f"pipeline.stages.{args.stage}")
        # No stage writes what it reads (a params-given path included), checked before anything is written;
        # then what an interrupted run of this stage left behind goes (pipeline.writing).
        reads = stage_reads((*stage.READS, *getattr(stage, "READS_FROM_PARAMS", ())), params)
        check_stage_writes_no_input(args.stage, stage.WRITES, reads)
        remove_stale_temporaries(stage.WRITES)
        if args.stage.startswith("train_"):
            _bind_checkpoints(args.stage, params, [path for path, _ in reads])
        stage.run(params)
    except PipelineError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    return 0


def _bind_checkpoints(stage: str, params: object, reads: list) -> None:
    """Training stages keep a checkpoint per epoch, bound to their params and inputs, and resume from it
    (``pipeline.models.checkpoint``; the training stages import it through ``pipeline.models.training``)."""
    from pipeline.models.checkpoint import bind

    bind(stage, params, reads)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # JAX logs every accelerator platform it probes and does not find (TPU, ...) at INFO.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
