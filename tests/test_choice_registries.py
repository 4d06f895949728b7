"""The choice lists params.yaml validates against are the implementations' registries
(``pipeline.models.registry``, ``pipeline.sequences``), and reading them stays light: importing
``pipeline.params`` (every stage does) imports neither keras nor the data model."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import yaml

from pipeline.errors import ParamsError
from pipeline.models import registry
from pipeline.models.losses import get_loss
from pipeline.params import params_from_dict

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(section: str, key: str, value) -> dict:
    raw = copy.deepcopy(RAW)
    raw[section][key] = value
    return raw


def test_importing_params_imports_no_keras_and_no_data_model():
    code = ("import sys, pipeline.params; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('keras', 'tensorflow', 'jax', 'torch') or m.startswith('pipeline.data')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("section, key, table", [
    ("classifier", "backbone", registry.BACKBONES),
    ("classifier", "head", registry.HEADS),
    ("segmenter", "loss", registry.LOSSES),
])
def test_params_accept_exactly_the_registry_names(section, key, table):
    for name in table:
        assert getattr(getattr(params_from_dict(with_value(section, key, name)), section), key) == name
    with pytest.raises(ParamsError, match=f"{section}.{key}: 'nope' is not one of {', '.join(table)}"):
        params_from_dict(with_value(section, key, "nope"))


def test_a_loss_added_to_the_registry_is_a_params_choice_and_built(monkeypatch):
    monkeypatch.setitem(registry.LOSSES, "tversky_again", registry.LOSSES["tversky"])
    assert params_from_dict(with_value("segmenter", "loss", "tversky_again")).segmenter.loss == "tversky_again"
    assert get_loss("tversky_again", alpha=0.6, beta=0.4).get_config()["alpha"] == pytest.approx(0.6)


@pytest.mark.parametrize("name", list(registry.LOSSES))
def test_every_registered_loss_is_built_with_the_params_it_takes(name):
    loss = get_loss(name, alpha=0.6, beta=0.4, gamma=0.8)
    assert isinstance(loss, keras.losses.Loss) and loss.name == name
    config = loss.get_config()
    for param, value in {"alpha": 0.6, "beta": 0.4, "gamma": 0.8}.items():
        if param in inspect.signature(type(loss)).parameters:
            assert config[param] == pytest.approx(value)


def test_every_registered_backbone_names_a_keras_application():
    for name, backbone in registry.BACKBONES.items():
        assert callable(getattr(keras.applications, backbone.application, None)), name


def test_a_backbone_added_to_the_registry_is_a_params_choice_and_built():
    """``register_backbone`` with an import path (``tiny_models.tiny_backbone``, as tests/test_devices.py uses it)."""
    from tiny_models import TINY_BACKBONE, register_tiny_backbone

    from pipeline.models.nets.classifier import build_classifier, zero_init_residual_branches

    register_tiny_backbone()
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_tiny_backbone()
        assert params_from_dict(with_value("classifier", "backbone", TINY_BACKBONE)).classifier.backbone == TINY_BACKBONE
        model, info = build_classifier(32, TINY_BACKBONE, weights="none")
        assert tuple(model.get_layer(info["last_conv_layer"]).output.shape) == (None, 16, 16, 8)
        assert tuple(model.output.shape) == (None, 1) and zero_init_residual_branches(model, info) == 1
    finally:
        registry.unregister_backbone(TINY_BACKBONE)
    assert TINY_BACKBONE not in registry.BACKBONES


def test_every_registered_segmenter_builder_loads():
    for name, segmenter in registry.SEGMENTERS.items():
        assert callable(registry.load(segmenter.build)), name
        assert segmenter.description, name


def test_every_threshold_rule_params_accept_is_computed_by_evaluate():
    """evaluate.threshold rules: params.THRESHOLD_RULES is what ``scoring.choose_threshold`` computes (youden
    and f1 in ``metrics.select_threshold``, patient_dice in scoring), and nothing else is accepted."""
    import numpy as np
    import pandas as pd

    from pipeline.evaluation.scoring import choose_threshold
    from pipeline.params import THRESHOLD_RULES

    rng = np.random.default_rng(0)
    tumour = np.tile([True, False, True, False, False, True], 4)
    slices = pd.DataFrame({"patient_id": np.repeat(["a", "b", "c", "d"], 6), "split": "val", "has_tumour": tumour,
                           "probability": np.clip(0.3 * tumour + rng.random(24) * 0.7, 0, 1),
                           "tumour_pixels": 40 * tumour, "seg_pixels": 35 * tumour, "seg_overlap_pixels": 30 * tumour})
    for rule in THRESHOLD_RULES:
        assert 0 <= choose_threshold(slices, rule) <= 1, rule
        assert params_from_dict(with_value("evaluate", "threshold", rule)).evaluate.threshold == rule
    with pytest.raises(ValueError):
        choose_threshold(slices, "nope")
    with pytest.raises(ParamsError, match="evaluate.threshold"):
        params_from_dict(with_value("evaluate", "threshold", "nope"))
