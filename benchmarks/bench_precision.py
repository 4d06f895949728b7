"""Benchmark: training and inference throughput of the project's networks on this machine's CPU under each
Keras precision policy (float32, mixed_bfloat16, mixed_float16): what `train.mixed_precision` and a
bfloat16 policy would buy on a CPU with AVX512_BF16 / AMX, before planning a cross-validated recipe.

Each (model, policy) builds the network as the stages do, compiles it with their loss, runs one
untimed warm-up epoch, then --steps timed train steps and --steps inference batches on in-memory
uint8-range tensors (--jit true: compiled with XLA, Keras' jit_compile=True; the stages leave it at "auto",
which is no XLA on a CPU-only TensorFlow). One JSON line per (model, policy):

    {"benchmark": "precision", "model": "resnet50", "size": 128, "policy": "mixed_bfloat16", "batch": 16,
     "train_img_s": ..., "predict_img_s": ..., "cpu_s_per_train_img": ..., "load_avg_1min": [...]}

    python benchmarks/bench_precision.py [--models resnet50 resunet unet] [--size 128] [--steps 6] [--jit true]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

from pipeline.models.losses import get_loss  # noqa: E402
from pipeline.models.nets import build_classifier  # noqa: E402
from pipeline.models.nets.segmenter import build_segmenter  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
SEGMENTER_FILTERS = {"resunet": (16, 32, 64, 128, 256), "unet": (32, 64, 128, 256, 512)}


def build(name: str, size: int, jit: str | bool = "auto") -> tuple[keras.Model, str]:
    """The network ``name`` at ``size`` px compiled as its stage compiles it (``jit``: Keras' ``jit_compile``;
    "auto" is what the stages use, no XLA on a CPU-only TensorFlow); returns it and its target kind."""
    if name == "resnet50":
        model = build_classifier(size, "resnet50", weights="none")[0]
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=jit)
        return model, "label"
    model = build_segmenter(name, size, SEGMENTER_FILTERS[name])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"), jit_compile=jit)
    return model, "mask"


def random_data(target: str, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stand-in data: ``count`` uint8-range images (count, size, size, 3) and their targets, labels
    (count, 1) with 40% positive or masks (count, size, size, 1) with 10% tumour pixels, float32."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (count, size, size, 3)).astype("float32")
    y = (rng.random((count, 1)) < 0.4).astype("float32") if target == "label" else \
        (rng.random((count, size, size, 1)) < 0.1).astype("float32")
    return x, y


def measure(name: str, size: int, policy: str, batch: int, steps: int, jit: str | bool = "auto") -> dict:
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model, target = build(name, size, jit)
    x, y = random_data(target, batch * steps, size)
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # warm-up: tracing, allocations
    model.predict(x[:batch], batch_size=batch, verbose=0)
    cpu, wall = time.process_time(), time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall = time.perf_counter()
    model.predict(x, batch_size=batch, verbose=0)
    predict_wall = time.perf_counter() - wall
    n = batch * steps
    return {"benchmark": "precision", "model": name, "size": size, "policy": policy, "batch": batch,
            "parameters": model.count_params(), "train_img_s": round(n / train_wall, 2),
            "predict_img_s": round(n / predict_wall, 2), "cpu_s_per_train_img": round(train_cpu / n, 3),
            "jit_compile": bool(model.jit_compile), "backend": keras.backend.backend()}  # what Keras resolved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "resunet", "unet"])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--jit", choices=("auto", "true", "false"), default="auto",
                        help="Keras jit_compile (XLA); auto: what the stages use")
    args = parser.parse_args()
    jit = {"auto": "auto", "true": True, "false": False}[args.jit]
    for name in args.models:
        for policy in args.policies:
            before = os.getloadavg()[0]
            result = measure(name, args.size, policy, args.batch, args.steps, jit)
            result["load_avg_1min"] = [round(before, 2), round(os.getloadavg()[0], 2)]
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
