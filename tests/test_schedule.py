"""The training schedule (train.schedule) and determinism (train.deterministic), on tiny models in seconds.

- fixed: exactly the planned epochs, the learning rate follows nnU-Net's poly decay over all phases, the
  validation metric never stops training nor picks the weights (the last ones are kept, or with
  train.average_last the mean of the last epochs' weights);
- early_stop: today's behaviour (stops after `patience` epochs without improvement, restores the best);
- two runs with one seed give bit-identical weights (fresh processes, TensorFlow backend on the CPU; float32
  and bfloat16 layers), a second seed different ones;
- deterministic ops leave no arrival-order sum in a training graph (Grappler's memory optimizer off).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.models.training import TrainingRun, poly_lr, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def tiny_model() -> keras.Model:
    """Conv -> BatchNorm -> Dropout -> pooled sigmoid: every random piece a real net has, 8x8 inputs."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def tiny_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("float32")
    return x, y


def compile_at(model: keras.Model, lr: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])


def test_poly_lr_is_nnunet_poly_decay():
    assert poly_lr(1e-3, 0, 10) == pytest.approx(1e-3)
    assert poly_lr(1e-3, 5, 10) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert poly_lr(1e-3, 9, 10) == pytest.approx(1e-3 * 0.1 ** 0.9)
    assert poly_lr(1e-3, 10, 10) == 0.0


def test_fixed_schedule_follows_poly_decay_over_phases_and_keeps_last_weights(tmp_path):
    """Two phases as the classifier trains (warm-up at lr, then a recompile at lr / 10): the rate of every
    epoch is the phase's base x (1 - epoch / 5)^0.9, all 5 epochs run although the validation AUC of
    random labels does not improve, and finish() leaves the last epoch's weights in place."""
    seed_everything(0)
    model = tiny_model()
    x, y = tiny_data()
    _, y_random = tiny_data(1)  # validation labels unrelated to the inputs: val AUC wanders
    run = TrainingRun.start(tmp_path / "live", "val_auc", patience=1, images_per_epoch=len(x), schedule="fixed",
                            epochs=5)
    compile_at(model, 1e-2)
    run.fit(model, x, (x, y_random[::-1]), 2, y=y, batch_size=8)
    compile_at(model, 1e-3)
    run.fit(model, x, (x, y_random[::-1]), 3, y=y, batch_size=8)
    last = [w.copy() for w in model.get_weights()]
    summary = run.finish({})

    expected = [poly_lr(1e-2, 0, 5), poly_lr(1e-2, 1, 5), poly_lr(1e-3, 2, 5), poly_lr(1e-3, 3, 5),
                poly_lr(1e-3, 4, 5)]
    np.testing.assert_allclose(run.history["learning_rate"], expected, rtol=1e-6)
    assert run.epochs_done == 5 and summary["epochs_trained"] == 5 and summary["epochs_planned"] == 5
    assert summary["schedule"] == "fixed" and summary["kept"] == "last"
    assert summary["last_val_auc"] == pytest.approx(run.history["val_auc"][-1])
    for kept, want in zip(model.get_weights(), last, strict=True):
        np.testing.assert_array_equal(kept, want)
    logged = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert logged["learning_rate"] == pytest.approx(expected[-1], rel=1e-6)


def test_average_last_keeps_the_mean_of_the_last_epochs_weights(tmp_path):
    """average_last 0.5 of 4 epochs: finish() leaves the mean of the weights after epochs 3 and 4 (BatchNorm
    statistics included), not the last ones; the summary says so."""
    seed_everything(0)
    model = tiny_model()
    x, y = tiny_data()
    run = TrainingRun.start(tmp_path / "live", "val_auc", patience=1, images_per_epoch=len(x), schedule="fixed",
                            epochs=4, average_last=0.5)
    compile_at(model, 1e-2)
    after = []
    for _ in range(4):  # one epoch a phase: the weights after each
        run.fit(model, x, (x, y), 1, y=y, batch_size=8)
        after.append([w.copy() for w in model.get_weights()])
    summary = run.finish({})

    assert summary["kept"] == "average" and summary["averaged_epochs"] == 2
    for kept, third, fourth in zip(model.get_weights(), after[2], after[3], strict=True):
        np.testing.assert_allclose(kept, (third.astype(np.float64) + fourth) / 2, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(k, f) for k, f in zip(model.get_weights(), after[3], strict=True))


def test_average_last_needs_the_fixed_schedule(tmp_path):
    from pipeline.errors import ParamsError
    from pipeline.params import TrainParams

    with pytest.raises(ValueError, match="only the fixed schedule"):
        TrainingRun.start(tmp_path / "live", "val_auc", 2, 32, schedule="early_stop", epochs=4, average_last=0.5)
    for schedule, fraction, message in (("early_stop", 0.25, "averages the fixed schedule"),
                                        ("fixed", 1.0, r"in \[0, 1\)"), ("fixed", True, r"in \[0, 1\)")):
        with pytest.raises(ParamsError, match=message):
            TrainParams(lr=1e-3, epochs=4, batch_size=8, seed=0, mixed_precision=False, schedule=schedule,
                        average_last=fraction).validate()


def _train_averaged(live: Path, phases: tuple[int, ...]) -> tuple[keras.Model, TrainingRun]:
    """The tiny model over two phases of 2 epochs (the convolution frozen in the second, as the classifier's
    fine-tuning changes what trains), the last 2 of 4 epochs averaged; only the first `phases` epochs run,
    finish() not called (a stage killed after its last checkpoint)."""
    seed_everything(0)
    model = tiny_model()
    x, y = tiny_data()
    run = TrainingRun.start(live, "val_auc", 1, len(x), "fixed", 4, average_last=0.5)
    for phase, epochs in enumerate(phases):
        model.layers[1].trainable = phase == 0
        compile_at(model, 1e-2 if phase == 0 else 5e-3)
        run.fit(model, x, (x, y), epochs, y=y, batch_size=8)
    return model, run


@pytest.mark.parametrize("killed_after", [(2, 1), (2, 2)], ids=["inside the mean", "after the last epoch"])
def test_a_rerun_resumes_the_mean_of_the_last_epochs(tmp_path, monkeypatch, killed_after):
    """A run killed inside the averaged epochs, or after its last epoch's checkpoint but before finish(), rerun
    from a fresh model: it ends with the uninterrupted run's averaged weights."""
    from pipeline.models import checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(checkpoint._binding, "digest", "test")  # as a stage's bind() does
    whole, run = _train_averaged(Path("whole"), (2, 2))
    run.finish({})
    _, killed = _train_averaged(Path("killed"), killed_after)
    assert (checkpoint.folder_for("killed") / "average.npz").is_file() and killed.average.count == sum(killed_after) - 2

    resumed, run = _train_averaged(Path("killed"), (2, 2))
    summary = run.finish({})
    assert summary["kept"] == "average" and summary["averaged_epochs"] == 2
    for ours, theirs in zip(resumed.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_early_stop_schedule_stops_and_restores_the_best(tmp_path):
    """The early_stop schedule as before: it stops `patience` epochs after the best and restores it."""
    seed_everything(0)
    model = tiny_model()
    x, y = tiny_data()
    _, y_random = tiny_data(1)
    run = TrainingRun.start(tmp_path / "live", "val_auc", patience=2, images_per_epoch=len(x),
                            schedule="early_stop", epochs=30)
    compile_at(model, 1e-2)
    run.fit(model, x, (x, y_random[::-1]), 30, y=y, batch_size=8)
    summary = run.finish({})
    assert run.epochs_done < 30 and run.best.stopped
    assert summary["kept"] == "best" and summary["epochs_trained"] == summary["best_epoch"] + 2


# Trains the tiny model in a fresh process as a training stage does (setup: seeds, deterministic ops), with
# shuffled batches, dropout and the fixed schedule; prints the SHA-256 of its weights.
WORKER = textwrap.dedent('''
    import hashlib, sys
    import numpy as np
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from pipeline.params import TrainParams
    from pipeline.models.training import TrainingRun, setup
    from test_schedule import compile_at, tiny_data, tiny_model

    precision = {"float32": False, "bfloat16": "bfloat16"}[sys.argv[4]]
    setup(TrainParams(lr=1e-2, epochs=3, batch_size=8, seed=int(sys.argv[2]), mixed_precision=precision,
                      schedule="fixed", deterministic=True))
    model = tiny_model()
    x, y = tiny_data()
    compile_at(model, 1e-2)
    run = TrainingRun.start(sys.argv[3], "val_auc", 8, len(x), "fixed", 3)
    run.fit(model, x, (x, y), 3, y=y, batch_size=8, shuffle=True)
    run.finish({})
    print("WEIGHTS", hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest())
''')


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow is not installed")
@pytest.mark.parametrize("precision", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])  # the CPU recipe
def test_same_seed_gives_identical_weights_tensorflow_cpu(tmp_path, precision):
    def train(seed: int, name: str) -> str:
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, "-c", WORKER, str(ROOT), str(seed), str(tmp_path / name), precision],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("WEIGHTS"))

    first, second, other_seed = train(0, "a"), train(0, "b"), train(1, "c")
    assert first == second
    assert first != other_seed  # the hash does depend on the draws: the test can fail


def test_weights_hash_helper_is_sensitive():
    """Guard for the worker's hash: one changed weight changes it."""
    weights = [np.zeros(3, np.float32), np.ones(2, np.float32)]
    digest = hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest()
    weights[1][0] = 2
    assert hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest() != digest


# Runs the gradient of conv -> ReLU -> batch norm at the ResUNet's first-level size (16 x 128 x 128 x 32) in a
# fresh process, with or without the training stages' deterministic ops, and prints the op types of the graphs
# TensorFlow actually ran. The input of the batch norm gets three gradient contributions (AddN); Grappler's
# memory optimizer rewrites that AddN to a temporary variable that AssignAdds them in arrival order, which
# made the ResUNet's weights depend on CPU load.
GRAPH_WORKER = textwrap.dedent('''
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import tensorflow as tf
    from tensorflow.python.eager import context
    if sys.argv[2] == "deterministic":
        from pipeline.models.training import enable_deterministic_ops
        enable_deterministic_ops()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((16, 128, 128, 3), np.float32))
    kernel = tf.Variable(rng.standard_normal((3, 3, 3, 32), np.float32))

    @tf.function
    def gradient():
        with tf.GradientTape() as tape:
            h = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
            mean, variance = tf.nn.moments(h, [0, 1, 2], keepdims=True)
            loss = tf.reduce_sum(tf.nn.batch_normalization(h, mean, variance, None, None, 1e-3))
        return tape.gradient(loss, kernel)

    context.enable_run_metadata()
    gradient()
    ops = set()
    for graphs in context.export_run_metadata().function_graphs:
        for graph in [*graphs.partition_graphs, graphs.post_optimization_graph]:
            ops |= {node.op for node in graph.node}
    print("OPS", " ".join(sorted(ops)))
''')


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow is not installed")
def test_deterministic_ops_sum_gradients_in_graph_order_tensorflow():
    def ops_run(mode: str) -> set[str]:
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, "-c", GRAPH_WORKER, str(ROOT), mode], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return set(next(line for line in done.stdout.splitlines() if line.startswith("OPS")).split()[1:])

    default, deterministic = ops_run("default"), ops_run("deterministic")
    # TensorFlow's default rewrites the AddN (the test can fail); if not, the pass no longer acts at this size
    assert {"TemporaryVariable", "AssignAdd"} <= default, f"no arrival-order rewrite by default: {sorted(default)}"
    assert "AddN" in deterministic and not {"TemporaryVariable", "AssignAdd", "AccumulateNV2"} & deterministic
