"""Benchmark: does one seed give the same weights when other work loads the CPU? (TensorFlow backend.)

Each run is a fresh process that sets up as a training stage does (``pipeline.models.training.setup``: seeds,
deterministic ops, the precision policy), builds ResNet50 and the ResUNet as bench_precision.py does, trains each
for --steps steps of batch 16 on fixed random data (128 px) and hashes the weights. --busy processes spin on the
cores meanwhile, so the training's threads are preempted at varying times. --memory-optimizer keeps TensorFlow's
Grappler memory optimizer on (``enable_op_determinism`` only: the behaviour before 2026-12-07), the control that
shows the check can see a difference. One JSON line:

    {"benchmark": "determinism_under_load", "busy": 2, "runs": 3, "memory_optimizer": false,
     "hashes": {"resnet50": [...], "resunet": [...]}, "identical": {"resnet50": true, "resunet": true}, "seconds": ...}

    python benchmarks/determinism_under_load.py [--runs 3] [--busy 2] [--steps 6] [--memory-optimizer]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True: pass"


def train_and_hash(steps: int, memory_optimizer: bool) -> dict[str, str]:
    """In this process: seed 0, deterministic ops, bfloat16; ``steps`` train steps of each network; weight hashes."""
    import hashlib

    import keras
    import numpy as np

    from pipeline.models.training import setup
    from pipeline.params import TrainParams

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_precision import build, random_data

    setup(TrainParams(lr=1e-3, epochs=1, batch_size=16, seed=0, mixed_precision="bfloat16",
                      deterministic=not memory_optimizer))
    if memory_optimizer:  # the deterministic kernels without the fix
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    hashes = {}
    for name in ("resnet50", "resunet"):
        keras.utils.set_random_seed(0)
        model, target = build(name, 128)
        x, y = random_data(target, 16 * steps, 128)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        hashes[name] = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()[:16]
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh training processes (default 3)")
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside them (default 2)")
    parser.add_argument("--steps", type=int, default=6, help="train steps of batch 16 per network (default 6)")
    parser.add_argument("--memory-optimizer", action="store_true",
                        help="keep Grappler's memory optimizer on (the behaviour before the fix: the control)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs < 1 or args.busy < 0 or args.steps < 1:
        parser.error("--runs and --steps must be at least 1, --busy at least 0")
    if args.worker:
        print(json.dumps(train_and_hash(args.steps, args.memory_optimizer)))
        return
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(REPO)}
    worker = [sys.executable, __file__, "--worker", "--steps", str(args.steps)] + \
        (["--memory-optimizer"] if args.memory_optimizer else [])
    start = time.perf_counter()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy)]
    try:
        runs = []
        for index in range(args.runs):
            done = subprocess.run(worker, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"run {index + 1}: the training process failed: {done.stderr.strip()[-2000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"run {index + 1} of {args.runs}: {runs[-1]}", file=sys.stderr, flush=True)
    finally:
        for process in busy:
            process.kill()
    hashes = {name: [run[name] for run in runs] for name in runs[0]}
    print(json.dumps({"benchmark": "determinism_under_load", "busy": args.busy, "runs": args.runs,
                      "steps": args.steps, "memory_optimizer": args.memory_optimizer, "hashes": hashes,
                      "identical": {name: len(set(values)) == 1 for name, values in hashes.items()},
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
