"""params.yaml is read into typed sections; bad keys and values are clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ParamsError
from pipeline.params import load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repo_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.data.source == "demo"
    assert params.data.channels == ("t1", "flair", "t1gd")
    assert params.train.lr > 0


@pytest.mark.parametrize("path, value, message", [
    (("data", "source"), "nifti", "data.source"),
    (("data", "image_size"), 100, "data.image_size"),
    (("data", "channels"), ["t1", "flair"], "data.channels"),
    (("data", "channels"), ["t1", "flair", "dwi"], "data.channels"),
    (("train", "lr"), "fast", "train.lr"),
    (("train", "epochs"), 0, "train.epochs"),
    (("split", "test"), 0.5, "split"),
    (("evaluate", "threshold"), "sensitivity:high", "evaluate.threshold"),
    (("evaluate", "threshold"), 1.5, "evaluate.threshold"),
    (("evaluate", "slice_score"), "segmenter", "evaluate.slice_score"),
    (("classifier", "unfreeze"), "some", "classifier.unfreeze"),
    # valid types that used to fail only later, inside a stage (issue 13)
    (("evaluate", "ig_steps"), 0, "evaluate.ig_steps"),
    (("evaluate", "ig_steps"), 1, "evaluate.ig_steps"),
    (("evaluate", "bootstrap"), -1, "evaluate.bootstrap"),
    (("evaluate", "gradcam_per_group"), -2, "evaluate.gradcam_per_group"),
    (("evaluate", "min_component_px"), -5, "evaluate.min_component_px"),
    (("data", "image_size"), 4096, "data.image_size: 4096 is too large"),
    (("data", "image_size"), 1056, "data.image_size: 1056 is too large"),
    (("train", "lr"), True, "train.lr: expected a number, got True"),  # YAML true is no learning rate
    (("evaluate", "threshold"), True, "evaluate.threshold"),
    (("evaluate", "keep_largest_component"), "yes", "evaluate.keep_largest_component: 'yes' must be true, false or auto"),
    (("evaluate", "keep_largest_component"), 1, "evaluate.keep_largest_component"),
    (("evaluate", "fill_holes"), "always", "evaluate.fill_holes: 'always' must be true, false or auto"),
    (("evaluate", "fill_holes"), 0, "evaluate.fill_holes"),
    (("evaluate", "seg_threshold"), "sometimes", "evaluate.seg_threshold: 'sometimes' must be trained or auto"),
    (("evaluate", "seg_threshold"), 0, "evaluate.seg_threshold"),
    (("evaluate", "seg_threshold"), 1.0, "evaluate.seg_threshold"),
    (("evaluate", "seg_threshold"), True, "evaluate.seg_threshold"),  # YAML true is no threshold
    (("classifier", "head"), "attention", "classifier.head"),
    (("train", "mixed_precision"), "float8", "train.mixed_precision: 'float8' must be true, false or bfloat16"),
    (("classifier", "class_balance"), "oversample", "classifier.class_balance"),
    (("segmenter", "sampling"), "area", "segmenter.sampling"),
    (("classifier", "localisation_weight"), -1, "classifier.localisation_weight"),
    (("augment", "missing_sequences"), 1.5, "augment.missing_sequences"),
    (("segmenter", "deep_supervision"), 4, r"segmenter.deep_supervision: 4 is outside \[0, 3\]"),  # 5 widths: 3 under the top
    (("segmenter", "deep_supervision"), True, "segmenter.deep_supervision: expected a whole number"),
    (("segmenter", "context_slices"), 4, r"segmenter.context_slices: 4 is outside \[0, 3\]"),
    (("segmenter", "context_slices"), -1, "segmenter.context_slices"),
])
def test_bad_values_name_the_key(path, value, message):
    raw = copy.deepcopy(RAW)
    raw[path[0]][path[1]] = value
    with pytest.raises(ParamsError, match=message):
        params_from_dict(raw)


def test_missing_sequences_needs_flair_among_the_channels():
    raw = copy.deepcopy(RAW)
    raw["augment"]["missing_sequences"] = 0.3
    assert params_from_dict(raw).augment.missing_sequences == 0.3
    raw["data"]["channels"] = ["t1", "t2", "t1gd"]
    with pytest.raises(ParamsError, match=r"augment.missing_sequences: 0.3 needs flair among data.channels"):
        params_from_dict(raw)


def test_seg_threshold_auto_is_for_the_whole_tumour():
    raw = copy.deepcopy(RAW)
    raw["evaluate"]["seg_threshold"] = "auto"
    assert params_from_dict(raw).evaluate.seg_threshold == "auto"
    raw["data"]["target"] = "regions"
    with pytest.raises(ParamsError, match=r"evaluate.seg_threshold: auto .* not 'regions'"):
        params_from_dict(raw)
    raw["evaluate"]["seg_threshold"] = 0.4  # a number is one threshold for every region, as the trained one is
    assert params_from_dict(raw).evaluate.seg_threshold == 0.4


def test_every_split_needs_patients():
    raw = copy.deepcopy(RAW)
    raw["split"].update(train=0.8, val=0.2, test=0.0)
    with pytest.raises(ParamsError, match=r"split.test: 0.0 must be above 0 \(0 only with split.folds > 1\)"):
        params_from_dict(raw)
    raw["split"]["folds"] = 5  # cross-validation over every patient: the out-of-fold figures are the evaluation
    assert params_from_dict(raw).split.test == 0.0
    raw["split"].update(train=1.0, val=0.0, test=0.0)
    with pytest.raises(ParamsError, match="split.val: 0.0 must be above 0"):
        params_from_dict(raw)


def test_unknown_and_missing_keys():
    raw = copy.deepcopy(RAW)
    raw["train"]["learning_rate"] = 0.1
    with pytest.raises(ParamsError, match="train.learning_rate: unknown key"):
        params_from_dict(raw)
    raw = copy.deepcopy(RAW)
    del raw["data"]["root"]
    with pytest.raises(ParamsError, match="data.root: missing key"):
        params_from_dict(raw)


def test_scientific_notation_from_exp_run_is_a_number():
    raw = copy.deepcopy(RAW)
    raw["train"]["lr"] = "1e-4"  # YAML 1.1 reads 1e-4 as text; `dvc exp run -S train.lr=1e-4` writes that
    assert params_from_dict(raw).train.lr == pytest.approx(1e-4)
    raw["evaluate"]["threshold"] = "sensitivity:0.95"
    assert params_from_dict(raw).evaluate.threshold == "sensitivity:0.95"


def test_narrow_segmenter_is_refused_only_where_onednn_would_corrupt_the_heap(monkeypatch):
    import keras

    raw = copy.deepcopy(RAW)
    raw["segmenter"]["filters"] = [8, 16]
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    if keras.config.backend() == "tensorflow":
        with pytest.raises(ParamsError, match="segmenter.filters.*oneDNN"):
            params_from_dict(raw)
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert params_from_dict(raw).segmenter.filters == (8, 16)


def test_split_file_is_optional():
    """split.file may be null, "", left out (all: the seeded random split) or a path; anything else names the key."""
    raw = copy.deepcopy(RAW)
    assert params_from_dict(raw).split.file is None
    del raw["split"]["file"]
    assert params_from_dict(raw).split.file is None
    raw["split"]["file"] = ""
    assert params_from_dict(raw).split.file == ""
    raw["split"]["file"] = "splits/fold0.csv"
    assert params_from_dict(raw).split.file == "splits/fold0.csv"
    raw["split"]["file"] = 3
    with pytest.raises(ParamsError, match="split.file"):
        params_from_dict(raw)


@pytest.mark.parametrize("path, value", [
    (("evaluate", "ig_steps"), 2), (("evaluate", "bootstrap"), 0), (("evaluate", "gradcam_per_group"), 0),
    (("evaluate", "min_component_px"), 0), (("data", "image_size"), 1024),
    (("evaluate", "keep_largest_component"), "auto"), (("evaluate", "keep_largest_component"), True),
    (("evaluate", "fill_holes"), "auto"), (("evaluate", "fill_holes"), False),
    (("evaluate", "seg_threshold"), "auto"), (("evaluate", "seg_threshold"), 0.3),
    (("train", "mixed_precision"), "bfloat16"), (("classifier", "class_balance"), "undersample"),
])
def test_edge_values_that_work_are_accepted(path, value):
    raw = copy.deepcopy(RAW)
    raw[path[0]][path[1]] = value
    assert getattr(getattr(params_from_dict(raw), path[0]), path[1]) == value


def test_mixed_precision_names_a_keras_policy():
    for value, policy in ((False, "float32"), (True, "mixed_float16"), ("bfloat16", "mixed_bfloat16")):
        raw = copy.deepcopy(RAW)
        raw["train"]["mixed_precision"] = value
        assert params_from_dict(raw).train.precision_policy == policy
