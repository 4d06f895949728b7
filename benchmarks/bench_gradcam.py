"""Benchmark: Grad-CAM and integrated-gradient throughput of the ResNet50 classifier (random init).

One JSON line per measurement:

    {"benchmark": "gradcam", "size": 256, "slices_per_s": ..., "inference_slices_per_s": ...,
     "cpu_s_per_slice": ..., ...}
    {"benchmark": "integrated_gradients", "size": 256, "steps": 32, "slices_per_s": ..., ...}

gradcam: ``pipeline.evaluation.explain.grad_cam`` on --slices random slices in batches of --batch-size (the
gradient runs from the output back to the last conv block only; target >= 5 slices/s at 256 px on
a 2-core CPU); inference: ``predict_on_batch`` on the same batches, for scale. With --full-tape,
also the whole-graph tape variant (``mode="full"``) for comparison. integrated_gradients:
``integrated_gradients`` on --ig-slices slices at --ig-steps (default 32) steps, gradients to the input.
Every timed call follows one untimed warm-up call of the same shape (tracing / compilation).

    python benchmarks/bench_gradcam.py [--sizes 256 128] [--slices 32] [--ig-slices 2] [--full-tape]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

from pipeline.evaluation import gradients  # noqa: E402
from pipeline.evaluation.explain import grad_cam, integrated_gradients  # noqa: E402

log = logging.getLogger("bench_gradcam")


def classifier(size: int) -> tuple[keras.Model, str, str]:
    """(model, Grad-CAM layer, which builder): the project's classifier if importable, else a stand-in."""
    try:
        from pipeline.models.nets.classifier import build_classifier
    except ImportError as e:
        log.warning("pipeline.models.nets.classifier not importable (%s); using a stand-in ResNet50", e)
    else:
        model, info = build_classifier(size, backbone="resnet50", weights="none")
        return model, info["last_conv_layer"], "build_classifier"
    image = keras.Input((size, size, 3), name="image")
    x = keras.layers.Lambda(keras.applications.resnet50.preprocess_input, name="preprocess")(image)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
    x = keras.layers.Dropout(0.3, name="head_dropout")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="tumour_probability")(x)
    return keras.Model(image, out), "conv5_block3_out", "stand-in"


def timed(fn: Callable[[], Any], warmup: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for one call of ``fn`` after one call of ``warmup``.

    CPU seconds (all threads) stay meaningful when other jobs share the machine; wall seconds do not.
    """
    warmup()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--slices", type=int, default=32, help="slices timed for Grad-CAM")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ig-slices", type=int, default=2, help="slices timed for integrated gradients (0: skip)")
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--full-tape", action="store_true", help="also time the whole-graph tape Grad-CAM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    rng = np.random.default_rng(args.seed)
    for size in args.sizes:
        keras.utils.set_random_seed(args.seed)
        model, layer, built_by = classifier(size)
        x = rng.integers(0, 256, (args.slices, size, size, 3)).astype(np.float32)
        first = x[:args.batch_size]
        common = {"size": size, "backend": keras.backend.backend(), "model": built_by, "layer": layer}

        def predict_all(x=x, model=model) -> None:
            for start in range(0, len(x), args.batch_size):
                model.predict_on_batch(x[start:start + args.batch_size])

        infer_s, _ = timed(predict_all, lambda first=first, model=model: model.predict_on_batch(first))
        cam_s, cam_cpu = timed(lambda x=x, model=model, layer=layer: grad_cam(model, x, layer, batch_size=args.batch_size),
                      lambda first=first, model=model, layer=layer: grad_cam(model, first, layer))
        result = {"benchmark": "gradcam", **common, "batch_size": args.batch_size, "slices": args.slices,
                  "slices_per_s": round(args.slices / cam_s, 2),
                  "inference_slices_per_s": round(args.slices / infer_s, 2),
                  "cpu_s_per_slice": round(cam_cpu / args.slices, 3)}
        if args.full_tape:
            def full_tape(x=x, model=model, layer=layer) -> None:
                for start in range(0, len(x), args.batch_size):
                    gradients.output_and_layer_grad(model, layer, x[start:start + args.batch_size], mode="full")

            full_s, _ = timed(full_tape, lambda first=first, model=model, layer=layer:
                           gradients.output_and_layer_grad(model, layer, first, mode="full"))
            result["full_tape_slices_per_s"] = round(args.slices / full_s, 2)
        print(json.dumps(result), flush=True)

        if args.ig_slices > 0:
            ig_x = x[:args.ig_slices]
            ig_s, ig_cpu = timed(lambda ig_x=ig_x, model=model: integrated_gradients(model, ig_x, steps=args.ig_steps,
                                                                            batch_size=args.batch_size),
                         lambda ig_x=ig_x, model=model: integrated_gradients(model, ig_x[:1], steps=args.batch_size,
                                                                            batch_size=args.batch_size))
            print(json.dumps({"benchmark": "integrated_gradients", **common, "steps": args.ig_steps,
                              "batch_size": args.batch_size, "slices": args.ig_slices,
                              "slices_per_s": round(args.ig_slices / ig_s, 3),
                              "seconds_per_slice": round(ig_s / args.ig_slices, 2),
                              "cpu_s_per_slice": round(ig_cpu / args.ig_slices, 2)}), flush=True)
        gradients.clear_cache(model)
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
