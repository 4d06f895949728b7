"""Benchmark: seconds for ``Predictor`` to predict one whole BraTS 2021 volume end to end.

Writes a synthetic BraTS 2021 case (``demo.write_brats2021``, 240 x 240 x 155) and random-init models
at --size px (``build_classifier(size, "resnet50", "none")`` + ``build_resunet(size)``, saved with
sidecars) to a temporary folder, loads them once with ``Predictor.from_dir`` and times
``predict_path`` on the case folder: read 3 sequences + classify every slice with brain + segment
the gated slices + write the NIfTI mask, overlays and summary.

Random-init models gate an arbitrary share of the slices, so the headline runs at threshold 0
(every slice with brain segmented: the worst case). The first call on a fresh Predictor includes
graph tracing ("cold"); later calls are the steady state of a Predictor that predicts many cases.
Prints one JSON line:

    {"benchmark": "predict_brats_volume", "size": 256, "slices": 155, "seconds": ...,  # cold, threshold 0
     "warm_seconds": ..., "cpu_seconds": ..., "slices_run": ..., "slices_segmented": ...,
     "stages_cold": {"read", "classify", "segment", "write"}, ...}

"cpu_seconds" is the process's CPU time (all threads): on an otherwise idle 2-core machine the wall
time is about half of it; on a shared machine "seconds" grows with the other load, this does not.

    python benchmarks/bench_predict.py [--size 256] [--slices 155] [--batch-size 16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.case import LGG_CHANNELS  # noqa: E402
from pipeline.data.demo import write_brats2021  # noqa: E402
from pipeline.data.task import TaskSpec  # noqa: E402
from pipeline.evaluation.bundle import Bundle  # noqa: E402
from pipeline.evaluation.cascade import Cascade  # noqa: E402
from pipeline.evaluation.postprocess import PostProcessing  # noqa: E402
from pipeline.models.nets import build_classifier, build_resunet  # noqa: E402
from pipeline.models.training import save_model  # noqa: E402
from pipeline.predict import Predictor  # noqa: E402

log = logging.getLogger("bench_predict")


def write_models(models: Path, size: int) -> None:
    """Random-init ResNet50 classifier and ResUNet segmenter at ``size`` px, with sidecars."""
    classifier, info = build_classifier(size, "resnet50", "none")
    sidecar = {"input_size": size, "channels": list(LGG_CHANNELS)}
    save_model(classifier, models / "classifier.keras", {"kind": "classifier", **sidecar, **info})
    save_model(build_resunet(size), models / "segmenter.keras", {"kind": "segmenter", **sidecar, "threshold": 0.5})
    task = TaskSpec(size, LGG_CHANNELS, {"mode": "as_stored", "clip_percentiles": None})
    Bundle(task, 0.0, "every slice", 0.5, PostProcessing()).write(models)  # threshold 0: every slice segmented


class StageTimer:
    """Wrap methods (on the class: Predictor.predict_volume works on a copy of its Cascade) to add up
    their seconds per label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


def run_once(predictor: Predictor, case: Path, out: Path, timer: StageTimer) -> tuple[float, float, dict[str, Any]]:
    """(wall seconds, process CPU seconds, summary) of one ``predict_path`` call."""
    timer.seconds.clear()
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = predictor.predict_path(case, out)[0]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if summary["status"] != "ok":
        raise RuntimeError(summary["error"])
    return seconds, cpu, summary


def volume_bench_args(description: str) -> argparse.Namespace:
    """The command line of the per-volume predict benchmarks (this one and bench_onnx_predict.py); sets up
    logging."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", type=int, default=256, help="model input size in pixels")
    parser.add_argument("--slices", type=int, default=155, help="axial slices of the synthetic 240x240 volume")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="warm runs after the cold one (fastest reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args


def write_case_and_models(root: Path, args: argparse.Namespace) -> Path:
    """A synthetic BraTS 2021 case (240 x 240 x args.slices) under root/brats and a model bundle at args.size
    under root/models; returns the case folder."""
    write_brats2021(root / "brats", patients=1, slices=args.slices, size=240, seed=0)
    write_models(root / "models", args.size)
    return next(p for p in (root / "brats").iterdir() if p.is_dir())


def main() -> None:
    args = volume_bench_args(__doc__.splitlines()[0])

    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        root = Path(tmp)
        case = write_case_and_models(root, args)
        start = time.perf_counter()
        predictor = Predictor.from_dir(root / "models", batch_size=args.batch_size)
        load_seconds = time.perf_counter() - start

        timer = StageTimer()
        timer.wrap(Predictor, "read", "read")
        timer.wrap(Predictor, "write_case", "write")
        timer.wrap(Cascade, "classify", "classify")
        timer.wrap(Cascade, "segment", "segment")

        cold, cold_cpu, summary = run_once(predictor, case, root / "out", timer)
        cold_stages = dict(timer.seconds)
        warm, warm_cpu, warm_stages = float("inf"), float("inf"), {}
        for _ in range(args.repeat):
            seconds, cpu, _ = run_once(predictor, case, root / "out", timer)
            if seconds < warm:
                warm, warm_cpu, warm_stages = seconds, cpu, dict(timer.seconds)

        predictor.cascade.threshold = 0.5  # the random classifier's own gate, for scale
        gated_seconds, _, gated_summary = run_once(predictor, case, root / "out", timer)

    slices = summary["slices"]
    result = {
        "benchmark": "predict_brats_volume",
        "size": args.size,
        "slices": len(slices),
        "seconds": round(cold, 2),
        "warm_seconds": round(warm, 2),
        "cpu_seconds": round(cold_cpu, 2),  # process CPU time: a check on "seconds" when the machine is shared
        "warm_cpu_seconds": round(warm_cpu, 2),
        "threshold": 0.0,
        "slices_run": sum(not s["blank"] for s in slices),
        "slices_segmented": sum(s["segmented"] for s in slices),
        "stages_cold": {k: round(v, 2) for k, v in cold_stages.items()},
        "stages_warm": {k: round(v, 2) for k, v in warm_stages.items()},
        "model_load_seconds": round(load_seconds, 2),
        "threshold_0.5_seconds": round(gated_seconds, 2),
        "threshold_0.5_slices_segmented": sum(s["segmented"] for s in gated_summary["slices"]),
        "batch_size": args.batch_size,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
