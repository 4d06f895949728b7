"""Models saved under one Keras backend load and predict the same under the others, and mixed precision
trains with float32 loss math under every backend (CPU). Split from tests/test_backends.py so the two
files run on different pytest-xdist workers.

Keras fixes its backend when it is imported, so every run on a chosen backend is a subprocess (WORKER)
with KERAS_BACKEND in its environment. A backend's tests skip when its package is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from backends import BACKENDS, INSTALLED, on, thread_env

ROOT = Path(__file__).resolve().parents[1]

# Probabilities of a model saved under one backend and loaded under the other agree within this.
ATOL = 1e-4

# Run as `python -c WORKER <command> <args>` under the backend chosen by the caller's environment.
WORKER = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import keras
    import numpy as np
    import tiny_models

    from pipeline.evaluation.cascade import Cascade
    from pipeline.models.losses import get_loss
    from pipeline.models.nets.classifier import build_classifier
    from pipeline.models.nets.layers import BackbonePreprocess
    from pipeline.models.nets.resunet import build_resunet
    from pipeline.params import TrainParams
    from pipeline.models.seg_metrics import DiceAt, IoUAt
    from pipeline.models.training import save_model, setup

    SIZE = 32


    def data(n, seed):
        """n random images (0..255), odd ones with a square tumour: (x, masks [n, S, S, 1], labels [n, 1])."""
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype("float32")
        labels = (np.arange(n) % 2).astype("float32")[:, None]
        masks = np.zeros((n, SIZE, SIZE, 1), "float32")
        masks[:, 8:20, 10:22] = labels[:, :, None, None]
        return x, masks, labels


    def compile_like_the_stages(classifier, segmenter):
        classifier.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                           metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")])
        segmenter.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"),
                          metrics=[DiceAt(0.5), IoUAt(0.5)])
        return classifier, segmenter


    def tiny_classifier():
        """The classifier's input preprocessing and head on one conv block instead of ResNet50."""
        return tiny_models.tiny_classifier(SIZE, (8,), strides=2, padding="valid", preprocess="caffe",
                                           batchnorm=True, dropout=0.3)


    def predictions(cascade):
        """Both models' probabilities on fixed inputs, through the code path evaluate and predict use."""
        x, _, _ = data(6, seed=1)
        return {"classifier": cascade.classify(x), "segmenter": cascade.segment(x)}


    def as_if_trained(model, seed=0):
        """Move every variable off its initial value, BatchNormalization statistics included (moving
        variances kept positive), as training would: a saved model that only round-trips its initial
        values could hide a lost variable. Cheaper than ResNet50's first train step under each backend."""
        rng = np.random.default_rng(seed)
        for v in model.variables:
            value = keras.ops.convert_to_numpy(v.value)
            if "moving_variance" in v.path:
                v.assign(rng.uniform(0.5, 1.5, value.shape).astype(value.dtype))
            elif value.dtype.kind == "f":
                v.assign((value + rng.normal(0, 0.02, value.shape)).astype(value.dtype))


    def train(out, other=None):
        """The classifier (ResNet50, its variables moved: ``as_if_trained``) and a ResUNet trained one step,
        saved as the stages save them, and this process's predictions written; then, given `other`, load the
        models saved there and predict with them."""
        setup(TrainParams(lr=1e-3, epochs=1, batch_size=4, seed=0, mixed_precision=False))
        classifier, segmenter = compile_like_the_stages(build_classifier(SIZE, "resnet50", weights="none")[0],
                                                        build_resunet(SIZE, (16, 32), out_channels=1))
        x, masks, _ = data(4, seed=0)
        as_if_trained(classifier)
        segmenter.fit(x, masks, batch_size=4, epochs=1, verbose=0)
        out = Path(out)
        save_model(classifier, out / "classifier.keras", {"kind": "classifier"})
        save_model(segmenter, out / "segmenter.keras", {"kind": "segmenter"})
        np.savez(out / f"predicted_{keras.backend.backend()}.npz", **predictions(Cascade(classifier, segmenter, 0.5)))
        if other:
            load(other)


    def load(folder):
        """Load the models of `folder` (safe mode) and write this backend's predictions next to them."""
        folder = Path(folder)
        cascade = Cascade.load(folder / "classifier.keras", folder / "segmenter.keras", threshold=0.5)
        compiled = keras.saving.load_model(folder / "segmenter.keras", safe_mode=True)  # custom loss and metrics
        assert type(compiled.loss).__name__ == "BCEDiceLoss", compiled.loss
        np.savez(folder / f"predicted_{keras.backend.backend()}.npz", **predictions(cascade))


    def mixed():
        """One epoch of a tiny classifier and a ResUNet under train.mixed_precision, compiled as the stages
        compile them: what runs in float16 and what in float32."""
        import pipeline.models.losses as losses

        setup(TrainParams(lr=1e-3, epochs=1, batch_size=4, seed=0, mixed_precision=True))
        classifier, segmenter = compile_like_the_stages(tiny_classifier(), build_resunet(SIZE, (16, 32), 1))
        x, masks, labels = data(8, seed=0)
        weights = np.where(labels[:, 0] > 0, 2.0, 0.7).astype("float32")  # as class_balance: weights gives them
        result = {"policy": keras.mixed_precision.global_policy().name}
        for name, model, y, w in (("classifier", classifier, labels, weights), ("segmenter", segmenter, masks, None)):
            history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=1, verbose=0).history
            y_pred = model(x[:4])
            loss = model.compute_loss(x[:4], y[:4], y_pred)
            result[name] = {
                "optimizer": type(model.optimizer).__name__,
                "compute_dtypes": sorted({layer.compute_dtype for layer in model.layers if layer.weights}),
                "output_dtype": keras.backend.standardize_dtype(y_pred.dtype),
                "loss_dtype": keras.backend.standardize_dtype(loss.dtype),
                "history": {k: [float(v) for v in vs] for k, vs in history.items()},
            }
        y16 = keras.ops.cast(masks[:4], "float16")
        p16 = keras.ops.cast(segmenter(x[:4]), "float16")
        result["loss_functions_on_float16"] = {
            name: keras.backend.standardize_dtype(getattr(losses, name)(y16, p16).dtype)
            for name in ("soft_dice_loss", "tversky_loss", "focal_tversky_loss", "bce_dice_loss")}
        result["tensorflow_loaded"] = "tensorflow" in sys.modules  # seeding, training and losses leave it out
        print("RESULT " + json.dumps(result))


    command, *args = sys.argv[1:]
    print("BACKEND " + keras.backend.backend())
    {"train": train, "load": load, "mixed": mixed}[command](*args)
''')


def run_worker(backend: str, *args: str, timeout: int = 600) -> str:
    """Run WORKER under `backend`; returns its stdout (the test fails with its output if it fails)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", **thread_env(backend),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", WORKER, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{backend} {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert f"BACKEND {backend}\n" in result.stdout, result.stdout[-2000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(len(INSTALLED) < 2, reason="needs a second backend installed")
def test_models_move_between_backends(tmp_path):
    """Trained (the segmenter; the classifier's variables moved as if trained) and saved under each installed
    backend, loaded (safe mode) and run under the next one in the ring tensorflow -> jax -> torch ->
    tensorflow: the same probabilities."""
    made_by = {backend: tmp_path / backend for backend in INSTALLED}
    for folder in made_by.values():
        folder.mkdir()
    loaded_by = {saved: INSTALLED[(i + 1) % len(INSTALLED)] for i, saved in enumerate(INSTALLED)}
    previous = None
    for backend in INSTALLED:  # each trains, saves, and loads what the one before it saved
        run_worker(backend, "train", str(made_by[backend]), *([str(made_by[previous])] if previous else []))
        previous = backend
    run_worker(INSTALLED[0], "load", str(made_by[INSTALLED[-1]]))  # close the ring
    for saved_under, folder in made_by.items():
        loaded_under = loaded_by[saved_under]
        reference = np.load(folder / f"predicted_{saved_under}.npz")
        loaded = np.load(folder / f"predicted_{loaded_under}.npz")
        for model in ("classifier", "segmenter"):
            expected, got = reference[model], loaded[model]
            assert got.shape == expected.shape == ((6,) if model == "classifier" else (6, 32, 32))
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL,
                                       err_msg=f"{model} saved under {saved_under}, loaded under {loaded_under}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", [on(b) for b in BACKENDS])
def test_mixed_precision_keeps_loss_in_float32(backend):
    """train.mixed_precision: float16 layers, float32 inputs to the loss, a loss-scaled optimizer; it trains."""
    stdout = run_worker(backend, "mixed")
    result = json.loads(stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["policy"] == "mixed_float16"
    for name in ("classifier", "segmenter"):
        r = result[name]
        assert r["optimizer"] == "LossScaleOptimizer", r
        assert "float16" in r["compute_dtypes"], r  # convolutions run in float16 ...
        assert "float32" in r["compute_dtypes"], r  # ... the output layer in float32
        assert r["output_dtype"] == "float32" and r["loss_dtype"] == "float32", r
        assert all(np.isfinite(v).all() for v in r["history"].values()), r
    assert set(result["loss_functions_on_float16"].values()) == {"float32"}, result
    assert result["tensorflow_loaded"] == (backend == "tensorflow"), "a JAX run should not import TensorFlow"
