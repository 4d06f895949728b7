"""Inference and explanations run on fixed-shape batches: the last batch is zero-padded up to batch_size and
the padding dropped, so the outputs equal unpadded ones and, under JAX, XLA compiles each step once (not once
per volume length: on an H200, evaluate spent ~60 of 100 s recompiling for new last-batch shapes).
"""

from __future__ import annotations

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
from tiny_models import LAST_CONV, tiny_classifier

from pipeline.evaluation.cascade import Cascade, predict_in_batches
from pipeline.evaluation.explain import grad_cam_cells, integrated_gradients_raw
from pipeline.models.batches import fixed_batches, pad_rows

ROOT = Path(__file__).resolve().parents[1]

JAX_MISSING = importlib.util.find_spec("jax") is None


def tiny_models(size: int = 16) -> tuple[keras.Model, keras.Model]:
    """Stand-ins for the classifier ([B,S,S,3] -> [B,1], a conv layer ``LAST_CONV``) and the segmenter (-> [B,S,S,1])."""
    keras.utils.set_random_seed(0)
    classifier = tiny_classifier(size, (4,), batchnorm=True)
    image = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(keras.layers.Rescaling(1 / 255)(image))
    segmenter = keras.Model(image, keras.layers.Conv2D(1, 1, activation="sigmoid")(h))
    return classifier, segmenter


def volume(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """n random uint8 slices [n, S, S, 3]."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# Run under KERAS_BACKEND=jax: counts XLA compilations (jax.monitoring fires this event once per backend
# compile) while the cascade, Grad-CAM and integrated gradients run on inputs of many lengths. Prints, per
# kind, the count before its first call and after each call.
JAX_WORKER = textwrap.dedent('''
    import json

    import jax
    import keras

    from pipeline.evaluation.cascade import Cascade
    from pipeline.evaluation.explain import grad_cam_cells, integrated_gradients_raw
    from test_fixed_shapes import LAST_CONV, tiny_models, volume

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration"
        else None)
    classifier, segmenter = tiny_models()
    cascade = Cascade(classifier, segmenter, threshold=0.0, batch_size=4)  # threshold 0: every slice segmented
    counts = {"backend": keras.backend.backend(), "cascade": [len(compiles)]}
    for n in (5, 7, 13, 16, 17, 1):
        cascade.predict_volume(volume(n, seed=n))
        counts["cascade"].append(len(compiles))
    counts["gradcam"] = [len(compiles)]
    for n in (5, 7, 13, 2, 1):
        grad_cam_cells(classifier, volume(n, seed=n).astype("float32"), LAST_CONV, batch_size=4)
        counts["gradcam"].append(len(compiles))
    counts["ig"] = [len(compiles)]
    for n, steps in ((1, 3), (2, 5), (3, 2)):
        integrated_gradients_raw(classifier, volume(n, seed=n).astype("float32"), steps=steps, batch_size=4)
        counts["ig"].append(len(compiles))
    print("RESULT " + json.dumps(counts))
''')


def test_fixed_batches_pad_only_the_last_batch() -> None:
    x = np.arange(7 * 2, dtype=np.uint8).reshape(7, 2)
    batches = list(fixed_batches(x, 3))
    assert [n for _, n in batches] == [3, 3, 1]
    assert all(b.shape == (3, 2) and b.dtype == np.float32 for b, _ in batches)
    np.testing.assert_array_equal(np.concatenate([b[:n] for b, n in batches]), x)
    assert not batches[-1][0][1:].any()  # zero padding
    assert list(fixed_batches(x[:0], 3)) == []
    assert pad_rows(x, 7) is x
    with pytest.raises(ValueError):
        pad_rows(x, 6)


def test_padded_inference_equals_unpadded() -> None:
    classifier, segmenter = tiny_models()
    x = volume(13)
    for model in (classifier, segmenter):
        whole = np.asarray(model.predict_on_batch(x.astype(np.float32)))  # one unpadded batch of 13
        padded = predict_in_batches(model, x, batch_size=4)  # 4 + 4 + 4 + (1 + 3 zero rows)
        assert padded.shape == whole.shape
        np.testing.assert_allclose(padded, whole, rtol=1e-5, atol=1e-6)
    cascade = Cascade(classifier, segmenter, threshold=0.0, batch_size=16)  # one batch, 3 padding rows
    assert cascade.classify(x).shape == (13,) and cascade.segment(x).shape == (13, 16, 16)
    assert cascade.classify(x[:0]).shape == (0,)


def test_padded_explanations_equal_unpadded() -> None:
    classifier, _ = tiny_models()
    x = volume(6).astype(np.float32)
    np.testing.assert_allclose(grad_cam_cells(classifier, x, LAST_CONV, batch_size=4),
                               grad_cam_cells(classifier, x, LAST_CONV, batch_size=6), rtol=1e-4, atol=1e-6)
    padded = integrated_gradients_raw(classifier, x[:2], steps=3, batch_size=4)  # 6 inputs: 4 + (2 + 2 zero rows)
    whole = integrated_gradients_raw(classifier, x[:2], steps=3, batch_size=6)
    for field in ("attributions", "scores", "baseline_scores"):
        np.testing.assert_allclose(getattr(padded, field), getattr(whole, field), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(JAX_MISSING, reason="jax is not installed")
def test_no_recompilation_after_the_first_volume_under_jax() -> None:
    """Volumes of 5, 7, 13, 16, 17 and 1 slices at batch 4: every XLA compilation happens on the first
    volume (the classifier's and the segmenter's predict step); Grad-CAM and integrated gradients likewise
    compile on their first call only, whatever the number of images."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", JAX_WORKER], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    counts = json.loads(result.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert counts.pop("backend") == "jax"
    for kind, (before, first, *later) in counts.items():
        assert first > before, f"{kind}: no compilation seen on the first call ({counts})"
        assert later == [first] * len(later), f"{kind} recompiled after its first call: {counts}"
