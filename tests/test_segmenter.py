"""The segmenter: one pixel threshold, written once, and an architecture registry.

``PIXEL_THRESHOLD`` (pipeline.models.nets.segmenter) is the only place the number is written: training's
metrics and the sidecar take it from there, evaluate reads the sidecar's into the bundle, prediction the bundle's.

``segmenter.arch`` names an entry of ``pipeline.models.registry.SEGMENTERS``. The proof that adding one is a
module plus a registry line: a toy architecture that lives in this file only is registered, and the
train_segmenter stage trains it, records it in the sidecar and saves a model that loads; unregistered,
params reject it again.
"""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.errors import ParamsError
from pipeline.evaluation.cascade import combine, gated_mask
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.models import registry
from pipeline.models.nets.layers import PerImageStandardization
from pipeline.models.nets.resunet import build_resunet
from pipeline.models.nets.segmenter import PIXEL_THRESHOLD, build_segmenter
from pipeline.models.nets.unet import build_unet
from pipeline.params import load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]
# Where a segmenter pixel threshold is given: these calls' arguments, these keywords and these dict keys.
THRESHOLD_CALLS = {"DiceAt", "IoUAt", "combine", "Cascade", "load"}
THRESHOLD_NAMES = {"seg_threshold", "threshold"}


def threshold_literals(tree: ast.AST) -> list[int]:
    """Line numbers where a number is written as a segmenter pixel threshold in ``tree``."""
    lines = []
    for node in ast.walk(tree):
        values: list[ast.AST] = []
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in {"DiceAt", "IoUAt"}:
                values += node.args[:1]
            if name == "combine":
                values += node.args[2:3]
            if name in THRESHOLD_CALLS:
                values += [k.value for k in node.keywords if k.arg == "seg_threshold"]
        elif isinstance(node, ast.Dict):  # the sidecar's "threshold" (the classifier's sidecar has none)
            values += [v for k, v in zip(node.keys, node.values)
                       if isinstance(k, ast.Constant) and k.value in ("threshold", "seg_threshold")
                       and isinstance(v, ast.Constant)]
        elif isinstance(node, (ast.AnnAssign, ast.arguments)):  # a field or parameter default
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and node.target.id == "seg_threshold" and node.value is not None:
                values.append(node.value)
            if isinstance(node, ast.arguments):
                named = node.args[len(node.args) - len(node.defaults):]
                values += [d for a, d in zip(named, node.defaults) if a.arg in THRESHOLD_NAMES]
        lines += [v.lineno for v in values if isinstance(v, ast.Constant) and isinstance(v.value, float)]
    return lines


def test_the_literal_finder_finds_each_way_of_writing_a_threshold():
    source = ("DiceAt(0.5)\ncombine(p, g, 0.5)\nCascade.load(a, b, threshold=0.3, seg_threshold=0.5)\n"
              "x = {'threshold': 0.5}\nclass C:\n    seg_threshold: float = 0.5\ndef f(seg_threshold=0.5): ...\n"
              "combine(p, g, PIXEL_THRESHOLD)\n")
    assert sorted(threshold_literals(ast.parse(source))) == [1, 2, 3, 4, 6, 7]


def test_the_segmenter_pixel_threshold_is_written_once():
    found = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        lines = threshold_literals(ast.parse(path.read_text()))
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    assert not found, f"a segmenter pixel threshold written as a number (use PIXEL_THRESHOLD): {found}"
    assert 0 < PIXEL_THRESHOLD < 1


def test_gated_mask_is_combine_on_a_thresholded_mask():
    rng = np.random.default_rng(0)
    probabilities = rng.random((4, 8, 8)).astype(np.float32)
    gated = np.array([True, False, True, True])
    post = PostProcessing(min_component_px=2, keep_largest_component=True)
    for threshold in (PIXEL_THRESHOLD, 0.8):
        expected = combine(probabilities, gated, threshold, post)
        assert np.array_equal(gated_mask(probabilities >= threshold, gated, post), expected)
        assert not expected[1].any() and expected.any()


# --- the architecture registry ----------------------------------------------------------------------------


def build_toy(image_size: int, filters, out_channels: int = 1) -> keras.Model:
    """The toy architecture: standardise, one 3x3 conv of filters[0], a 1x1 sigmoid conv. Lives here only."""
    image = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = PerImageStandardization(name="standardize")(image)
    x = keras.layers.Conv2D(filters[0], 3, padding="same", activation="relu", name="toy_conv")(x)
    out = keras.layers.Conv2D(out_channels, 1, activation="sigmoid", dtype="float32", name="tumour_mask")(x)
    return keras.Model(image, out, name="toy")


@pytest.fixture
def toy_arch():
    registry.register_segmenter("toy", registry.Segmenter(f"{__name__}:build_toy", "toy (tests/test_segmenter.py)"))
    yield "toy"
    registry.unregister_segmenter("toy")


def test_a_registered_architecture_is_a_params_choice_and_trains_through_the_stage(toy_arch, tiny_store,
                                                                                   monkeypatch):
    from pipeline.stages import train_segmenter

    work, params = tiny_store
    params = params_from_dict({**params.as_dict(), "segmenter": {**params.as_dict()["segmenter"], "arch": toy_arch,
                                                                  "filters": [16, 32], "epochs_factor": 1}})
    params = replace(params, train=replace(params.train, epochs=1, batch_size=4))
    monkeypatch.chdir(work)
    train_segmenter.run(params)

    sidecar = json.loads((work / "models/segmenter.json").read_text())
    assert sidecar["arch"] == "toy" and sidecar["architecture"] == "toy (tests/test_segmenter.py)"
    assert sidecar["threshold"] == PIXEL_THRESHOLD and sidecar["params"]["segmenter"]["arch"] == "toy"
    model = keras.saving.load_model(work / "models/segmenter.keras", compile=False, safe_mode=True)
    assert model.name == "toy" and [layer.name for layer in model.layers][-2:] == ["toy_conv", "tumour_mask"]


def test_an_unregistered_architecture_is_rejected_by_params_and_the_builder():
    raw = load_params(ROOT / "params.yaml").as_dict()
    raw["segmenter"]["arch"] = "toy"
    with pytest.raises(ParamsError, match="segmenter.arch: 'toy' is not one of resunet, unet"):
        params_from_dict(raw)
    with pytest.raises(ValueError, match="toy"):
        build_segmenter("toy", 32, (16, 32))


def test_resunet_through_the_registry_is_the_resunet_as_before():
    keras.utils.set_random_seed(0)
    direct = build_resunet(64, (16, 32, 64), out_channels=1)
    keras.utils.set_random_seed(0)
    built = build_segmenter("resunet", 64, [16, 32, 64])
    assert built.get_config() == direct.get_config()
    assert all(np.array_equal(a, b) for a, b in zip(built.get_weights(), direct.get_weights()))


def test_unet_is_the_plain_unet_of_buda_et_al():
    model = build_segmenter("unet", 64, (16, 32, 64))
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 64, 64, 1)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("MaxPooling2D") == 2 and kinds.count("Conv2DTranspose") == 2
    assert kinds.count("Concatenate") == 2 and kinds.count("Add") == 0  # skips concatenate; no residual units
    assert kinds.count("Conv2D") == 2 * 5 + 1 and kinds.count("BatchNormalization") == 2 * 5  # 2 per block, 5 blocks
    assert model.get_layer("bottleneck_conv1").filters == 64 and model.get_layer("dec1_conv2").filters == 16
    assert model.get_layer("tumour_mask").dtype_policy.compute_dtype == "float32"
    assert build_unet(256).count_params() == 7_768_929  # Buda et al.'s widths (32 ... 512)

    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (2, 64, 64, 3)).astype(np.float32)
    out = np.asarray(model.predict_on_batch(image))
    assert ((out >= 0) & (out <= 1)).all()
    # per-image standardisation inside the model: brightness and contrast changes give the same masks
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(image * 1.2 + 10)), out, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 4"):
        build_unet(66, (16, 32, 64))
