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

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_predict import StageTimer, run_once, volume_bench_args, write_case_and_models  # noqa: E402

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
    args = volume_bench_args(__doc__.splitlines()[0])

    with tempfile.TemporaryDirectory(prefix="bench_onnx_predict_") as tmp:
        root = Path(tmp)
        case = write_case_and_models(root, args)
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
