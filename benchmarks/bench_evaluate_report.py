"""Time the `evaluate` and `report` stages on the current pipeline outputs (run `dvc repro` first).

Prints one JSON line: {"benchmark": "evaluate_report", "evaluate_s", "report_s", "total_s", ...}.
Each stage runs in a fresh process, as `dvc repro` runs it (interpreter and TensorFlow start included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def timed(stage: str, params: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", stage, "--params", params], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    if not Path("models/classifier.keras").exists():
        sys.exit("no trained models: run `dvc repro` first")
    evaluate_s = timed("evaluate", args.params)
    report_s = timed("report", args.params)
    metrics = json.loads(Path("reports/eval/metrics_full.json").read_text())
    print(json.dumps({
        "benchmark": "evaluate_report", "evaluate_s": round(evaluate_s, 1), "report_s": round(report_s, 1),
        "total_s": round(evaluate_s + report_s, 1),
        "test_slices": metrics["test"]["classifier"]["n"] + metrics["val"]["classifier"]["n"],
    }))


if __name__ == "__main__":
    main()
