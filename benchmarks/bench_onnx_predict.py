"""Benchmark: seconds to predict one BraTS 2021 volume with the Keras bundle and with its ONNX export (CPU).

The setting of ``bench_predict.py`` (a synthetic 240 x 240 x 155 BraTS 2021 case, random-init ResNet50
classifier + ResUNet segmenter at --size px, gate threshold 0: every slice with brain is segmented), the
bundle exported with ``pipeline.export.export_bundle``, then ``Predictor.predict_path`` timed on the case
with each: one cold call (the first on a fresh Predictor: graph tracing for Keras, session warm-up for
ONNX Runtime), then the fastest of --repeat warm calls. Reading, post-processing and writing are the same
code both ways; only the model calls differ. Prints one JSON line:

    {"benchmark": "onnx_predict_brats_volume", "size": 256, "slices": 155, "backend": "tensorflow",
     "keras": {"seconds", "warm_seconds", "cpu_seconds", "warm_cpu_seconds", "model_seconds_warm"},
     "onnx": {...the same}, "export_seconds": ..., "mask_dice": ..., "max_probability_difference": ...}

"model_seconds_warm": classify + segment of the warm call. "cpu_seconds": process CPU time (all threads).

    python benchmarks/bench_onnx_predict.py [--size 256] [--slices 155] [--batch-size 16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_predict import StageTimer, run_once, write_models  # noqa: E402

from pipeline.data.demo import write_brats2021  # noqa: E402
from pipeline.evaluation.cascade import Cascade  # noqa: E402
from pipeline.evaluation.metrics import dice  # noqa: E402
from pipeline.export import export_bundle  # noqa: E402
from pipeline.predict import Predictor, find_inputs  # noqa: E402


def timed(models: Path, case: Path, out: Path, batch_size: int, repeat: int) -> tuple[dict[str, Any], Any]:
    """Cold and warm timings of one bundle on ``case``, and the warm call's prediction of it."""
    predictor = Predictor.from_dir(models, batch_size=batch_size)
    originals = {name: getattr(Cascade, name) for name in ("classify", "segment")}
    timer = StageTimer()
    timer.wrap(Cascade, "classify", "classify")
    timer.wrap(Cascade, "segment", "segment")
    cold, cold_cpu, _ = run_once(predictor, case, out, timer)
    warm, warm_cpu, model_seconds = float("inf"), float("inf"), 0.0
    for _ in range(repeat):
        seconds, cpu, _ = run_once(predictor, case, out, timer)
        if seconds < warm:
            warm, warm_cpu, model_seconds = seconds, cpu, sum(timer.seconds.values())
    prediction = predictor.predict_case(predictor.read(find_inputs(case)[0]))
    for name, original in originals.items():  # unwrapped before the next bundle wraps them again
        setattr(Cascade, name, original)
    return {"seconds": round(cold, 2), "warm_seconds": round(warm, 2), "cpu_seconds": round(cold_cpu, 2),
            "warm_cpu_seconds": round(warm_cpu, 2), "model_seconds_warm": round(model_seconds, 2)}, prediction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="model input size in pixels")
    parser.add_argument("--slices", type=int, default=155, help="axial slices of the synthetic 240x240 volume")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="warm runs after the cold one (fastest reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="bench_onnx_predict_") as tmp:
        root = Path(tmp)
        write_brats2021(root / "brats", patients=1, slices=args.slices, size=240, seed=0)
        case = next(p for p in (root / "brats").iterdir() if p.is_dir())
        write_models(root / "models", args.size)
        start = time.perf_counter()
        export_bundle(root / "models", root / "onnx")
        export_seconds = time.perf_counter() - start
        results, predictions = {}, {}
        for name, models in (("keras", root / "models"), ("onnx", root / "onnx")):
            results[name], predictions[name] = timed(models, case, root / f"out_{name}", args.batch_size, args.repeat)

    k, o = predictions["keras"], predictions["onnx"]
    print(json.dumps({
        "benchmark": "onnx_predict_brats_volume", "size": args.size, "slices": len(k.probabilities),
        "backend": keras.config.backend(), **results, "export_seconds": round(export_seconds, 1),
        "mask_dice": round(float(dice(k.mask, o.mask)), 5) if k.mask.any() or o.mask.any() else 1.0,
        "max_probability_difference": float(np.abs(k.probabilities - o.probabilities).max()),
        "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
