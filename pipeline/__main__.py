"""Command line: ``python -m pipeline <stage> [--params params.yaml]``.

Every DVC stage calls exactly this. A PipelineError (bad input, bad params) is printed in one
line and the exit code is 2; nothing half-written is left behind by the stages.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.errors import PipelineError

STAGES = ("demo", "ingest", "split", "train_classifier", "train_segmenter", "evaluate", "report")

log = logging.getLogger("pipeline")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES, help="the pipeline stage to run")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from pipeline.params import load_params

    try:
        params = load_params(args.params)
        stage = importlib.import_module(f"pipeline.stages.{args.stage}")
        stage.run(params)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
