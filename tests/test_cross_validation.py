"""Cross-validation folds (split.folds > 1) from scoring to the bundle, on stand-in and tiny models (seconds).

- every non-test patient is scored out of fold: by its own fold's models only, so perturbing another
  fold's model never moves its score, and the gate threshold (chosen on those scores) never reads a
  prediction of a model that trained on the patient, nor a test patient's;
- the test patients are scored by the ensemble: the mean of the folds' probabilities (classifier and
  segmenter), also as ``predict`` loads it from a bundle whose cascade.json lists the fold models;
- the spread over folds (``fold_spread``); a single split keeps one model of each kind.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from pipeline.data.case import LGG_CHANNELS, Case
from pipeline.data.slices import SliceStore, write_store
from pipeline.data.split import assign_folds, assign_splits, patient_table
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError
from pipeline.evaluation.bundle import Bundle, read_bundle
from pipeline.evaluation.cascade import Cascade, MeanOfModels, members
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.evaluation.scoring import (
    SEG_THRESHOLD_CANDIDATES,
    at_seg_threshold,
    choose_threshold,
    evaluate_split,
    fold_spread,
    out_of_fold_split,
    score_patients,
)
from pipeline.models.training import save_model
from pipeline.params import SplitParams
from pipeline.paths import CLASSIFIER, SEGMENTER, fold_model

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
FOLDS = 3


class Constant:
    """A stand-in classifier: every slice scores `value` (so a score tells which model made it)."""

    def __init__(self, value: float):
        self.value = value

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x), 1), self.value, np.float32)


class Scaled:
    """A stand-in classifier that sees tumour: `value` x the slice's brightest first-channel pixel / 255."""

    def __init__(self, value: float):
        self.value = value

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return (self.value * np.asarray(x, np.float32)[..., 0].max(axis=(1, 2)) / 255)[:, None]


class Brightness:
    """A stand-in segmenter: the pixel probability is the first channel / 255 x `scale`."""

    input_shape = (None, None, None, 3)  # one slice of any size

    def __init__(self, scale: float):
        self.scale = scale

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)[..., :1] / 255 * self.scale


@pytest.fixture(scope="module")
def store_and_split(tmp_path_factory) -> tuple[SliceStore, pd.DataFrame]:
    """15 tiny patients (6 slices at 32 px, tumour in the middle slices of 12: bright in the first channel),
    3 test patients and 3 folds."""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(15):
        image = rng.integers(0, 40, (6, SIZE, SIZE, 3), dtype=np.uint8)
        labels = np.zeros((6, SIZE, SIZE), np.uint8)
        if i % 5:
            labels[2:4, 8:8 + 2 * i % 16 + 4, 10:20] = 1
            labels[4, 10:12, 10:12] = 1  # a small, faint tumour slice: the gate has something to decide
        image[..., 0] += (labels * rng.integers(150, 215, labels.shape)).astype(np.uint8)
        cases.append(Case(f"P{i:02d}", image, labels, "lgg", LGG_CHANNELS, np.arange(6),
                          meta={"institution": "AB"}))
    root = tmp_path_factory.mktemp("cv") / "slices"
    write_store(cases, root)
    store = SliceStore(root)
    table = patient_table(store.manifest, store.patients)
    split = assign_folds(table, assign_splits(table, SplitParams(0.6, 0.2, 0.2, seed=0)), FOLDS, 0)
    return store, split


def fold_cascades(values: list[float], classifier: type = Constant) -> list[Cascade]:
    return [Cascade(classifier(v), Brightness(1.0 + f / 4), 0.5) for f, v in enumerate(values)]


def ensemble_of(cascades: list[Cascade]) -> Cascade:
    return Cascade(MeanOfModels([c.classifier for c in cascades]), MeanOfModels([c.segmenter for c in cascades]), 0.5)


def test_out_of_fold_scores_come_from_the_patients_own_fold_only(store_and_split):
    store, split = store_and_split
    values = [0.2, 0.5, 0.8]
    folds = fold_cascades(values)
    scored = score_patients(store, out_of_fold_split(split), ensemble_of(folds), folds)
    rows = scored.slices.merge(split[["patient_id"]].assign(true_split=split.split), on="patient_id")
    oof, test = rows[rows.split == "val"], rows[rows.split == "test"]
    assert set(oof.patient_id) == set(split.patient_id[split.split != "test"])  # every non-test patient, once
    np.testing.assert_allclose(oof.probability, [values[int(f)] for f in oof.fold])  # its own fold's model
    np.testing.assert_allclose(test.probability, np.mean(values))  # the test patients: the ensemble's mean

    # Perturb fold 1's classifier: only fold 1's patients move among the out-of-fold scores.
    perturbed = fold_cascades([0.2, 0.05, 0.8])
    again = score_patients(store, out_of_fold_split(split), ensemble_of(perturbed), perturbed).slices
    moved = set(again.patient_id[again.probability.to_numpy() != scored.slices.probability.to_numpy()])
    own = set(split.patient_id[split.fold == 1])
    assert moved - set(split.patient_id[split.split == "test"]) == own


def test_the_cascade_score_is_each_folds_own_classifier_times_its_own_segmenter(store_and_split):
    """evaluate.slice_score "cascade" out of fold: a patient's score is its own fold's classifier probability times
    its own fold's segmenter maximum (tests/test_slice_score.py has the score itself); the classifier's probability
    stays in classifier_probability."""
    store, split = store_and_split
    values = [0.2, 0.5, 0.8]
    folds = [dataclasses.replace(c, slice_score="cascade") for c in fold_cascades(values)]
    ensemble = dataclasses.replace(ensemble_of(folds), slice_score="cascade")
    slices = score_patients(store, out_of_fold_split(split), ensemble, folds).slices
    oof = slices[slices.split == "val"]
    for _, row in oof.sample(12, random_state=0).iterrows():
        f = int(row.fold)
        brightest = store.images(row.patient_id)[row.slice_index, ..., 0].max() / 255 * (1.0 + f / 4)
        assert row.classifier_probability == pytest.approx(values[f])
        assert row.probability == pytest.approx(values[f] * brightest, rel=1e-5)


def test_fold_models_train_without_their_folds_patients(store_and_split, tmp_path):
    """What each fold's training stage reads (``training_rows``): fold f's patients are its validation rows
    only, never its training rows; no test patient on either side; every non-test patient validates once."""
    from pipeline.models.training import training_rows

    store, split = store_and_split
    split.to_csv(tmp_path / "split.csv", index=False)
    test = set(split.patient_id[split.split == "test"])
    validated = []
    for fold in range(FOLDS):
        rows = training_rows(store, tmp_path / "split.csv", fold)
        own = set(split.patient_id[split.fold == fold])
        assert set(rows["val"].patient_id) == own
        assert set(rows["train"].patient_id) == set(split.patient_id) - own - test
        validated += sorted(own)
    assert sorted(validated) == sorted(set(split.patient_id) - test)
    with pytest.raises(InputError, match="train fold by fold"):  # with folds, a model is a fold's
        training_rows(store, tmp_path / "split.csv")


def test_the_gate_is_chosen_on_out_of_fold_scores_only(store_and_split):
    """Changing the ensemble (what scores the test patients, and what trained on every non-test patient)
    leaves the threshold where it was; changing a fold model moves it."""
    store, split = store_and_split
    folds = fold_cascades([1.0, 0.9, 0.8], Scaled)
    base = choose_threshold(score_patients(store, out_of_fold_split(split), ensemble_of(folds), folds).slices,
                            "patient_dice")
    assert 0 < base < 1
    other_ensemble = Cascade(Constant(0.01), Brightness(0.1), 0.5)
    same = choose_threshold(score_patients(store, out_of_fold_split(split), other_ensemble, folds).slices,
                            "patient_dice")
    assert same == base
    shifted = fold_cascades([0.95, 0.85, 0.75], Scaled)
    assert choose_threshold(score_patients(store, out_of_fold_split(split), ensemble_of(shifted), shifted).slices,
                            "patient_dice") != base


def test_masks_redrawn_at_a_pixel_threshold_are_the_ones_scored_at_it(store_and_split):
    """evaluate.seg_threshold auto: the masks and pixel counts ``at_seg_threshold`` redraws from the kept levels
    are exactly what scoring at that threshold gives, out of fold and for the test patients' ensemble."""
    store, split = store_and_split
    folds = fold_cascades([0.9, 0.8, 0.7])
    kept = score_patients(store, out_of_fold_split(split), ensemble_of(folds), folds,
                          seg_thresholds=SEG_THRESHOLD_CANDIDATES)
    for t in (0.2, 0.65):  # background pixels reach 0.2 (first channel up to 40/255, x up to 1.5), not 0.65
        at_t = [dataclasses.replace(c, seg_threshold=t) for c in folds]
        scored = score_patients(store, out_of_fold_split(split), dataclasses.replace(ensemble_of(folds), seg_threshold=t),
                                at_t)
        redrawn = at_seg_threshold(kept, t)
        pd.testing.assert_frame_equal(redrawn.slices, scored.slices)
        assert redrawn.seg_masks.keys() == scored.seg_masks.keys()
        for pid, mask in scored.seg_masks.items():
            np.testing.assert_array_equal(redrawn.seg_masks[pid], mask)
    assert at_seg_threshold(kept, 0.2).slices.seg_pixels.sum() > at_seg_threshold(kept, 0.65).slices.seg_pixels.sum()


def test_segmenter_ensemble_is_the_mean_of_the_folds(store_and_split):
    store, split = store_and_split
    folds = fold_cascades([0.2, 0.5, 0.8])
    images = store.images(split.patient_id[split.split == "test"].iloc[0])
    ensemble = ensemble_of(folds)
    np.testing.assert_allclose(ensemble.segment(images), np.mean([c.segment(images) for c in folds], axis=0),
                               rtol=1e-6)


def test_fold_spread_per_fold_means():
    split = pd.DataFrame({"patient_id": list("abcdef"), "split": ["train"] * 5 + ["test"],
                          "fold": pd.array([0, 0, 1, 1, 1, None], "Int64")})
    patients = pd.DataFrame({"patient_id": list("abcde"), "has_tumour": [True, True, True, True, False],
                             "dice_cascade": [0.6, 0.8, 0.9, 0.5, 1.0]})
    slices = pd.DataFrame({"patient_id": list("aabbccddee"), "has_tumour": [1, 0] * 5,
                           "probability": [0.9, 0.1, 0.2, 0.8, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1]})
    spread = fold_spread(patients, slices, split)
    assert spread["folds"] == 2
    np.testing.assert_allclose(spread["dice_patient_mean_per_fold"], [0.7, 0.7])  # the tumour-free e left out
    assert spread["dice_patient_mean_sd"] == pytest.approx(0.0)
    assert spread["auc_per_fold"] == [0.75, 1.0]  # fold 0: 3 of its 4 tumour/no-tumour slice pairs in order
    single = fold_spread(patients, slices, split.drop(columns="fold"))  # one split: the val patients, one fold
    assert single["folds"] == 1 and np.isnan(single["dice_patient_mean_sd"])


# ------------------------------------------------------------------------------- the bundle and predict


def tiny_pair(seed: int) -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    classifier = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))))
    segmenter = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(
        keras.layers.Rescaling(1 / 255)(inputs)))
    return classifier, segmenter


def write_fold_bundle(folder: Path, folds: int) -> Bundle:
    """models/ as training and evaluate leave it with `folds` folds (fold 0 at the single split's paths)."""
    sidecar = {"input_size": SIZE, "channels": list(LGG_CHANNELS)}
    for f in range(folds):
        classifier, segmenter = tiny_pair(f)
        save_model(classifier, folder / fold_model(CLASSIFIER, f).relative_to("models"), {**sidecar, "fold": f})
        save_model(segmenter, folder / fold_model(SEGMENTER, f).relative_to("models"), {**sidecar, "fold": f})
    task = TaskSpec(SIZE, LGG_CHANNELS, {"mode": "as_stored", "clip_percentiles": None})
    bundle = Bundle(task, 0.5, "youden", 0.5, PostProcessing(),
                    tuple(str(fold_model(CLASSIFIER, f).relative_to("models")) for f in range(folds)),
                    tuple(str(fold_model(SEGMENTER, f).relative_to("models")) for f in range(folds)), "oof")
    bundle.write(folder)
    return bundle


def test_predict_averages_the_fold_models_the_bundle_lists(tmp_path):
    from pipeline.predict.predictor import Predictor

    folder = tmp_path / "models"
    write_fold_bundle(folder, FOLDS)
    raw = json.loads((folder / "cascade.json").read_text())
    assert raw["models"]["classifier"] == ["classifier.keras", "folds/classifier/fold_1.keras",
                                           "folds/classifier/fold_2.keras"]
    assert raw["gate"]["chosen_on"] == "oof"
    predictor = Predictor.from_dir(folder)
    assert len(members(predictor.cascade.classifier)) == FOLDS and len(members(predictor.cascade.segmenter)) == FOLDS
    assert len(predictor.model_files["classifier"]) == FOLDS

    images = np.random.default_rng(1).integers(0, 255, (5, SIZE, SIZE, 3), dtype=np.uint8)
    singles = [Cascade.load(folder / c, folder / s, 0.5) for c, s in zip(raw["models"]["classifier"],
                                                                          raw["models"]["segmenter"], strict=True)]
    np.testing.assert_allclose(predictor.cascade.classify(images), np.mean([c.classify(images) for c in singles], 0),
                               rtol=1e-5)
    np.testing.assert_allclose(predictor.cascade.segment(images), np.mean([c.segment(images) for c in singles], 0),
                               rtol=1e-5, atol=1e-7)
    assert not np.allclose(singles[0].classify(images), singles[1].classify(images))  # the folds do differ


def test_ensemble_members_benchmark_scores_the_ensemble_and_each_fold_alone(tmp_path, store_and_split):
    """benchmarks/ensemble_members.py: the test patients, scored by the bundle's ensemble and by each fold's two
    models alone at the bundle's operating point; "fold_f" is fold f's files (fold 0 at the single split's paths)."""
    spec = importlib.util.spec_from_file_location("ensemble_members", ROOT / "benchmarks" / "ensemble_members.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    store, split = store_and_split
    run = tmp_path / "run"
    write_fold_bundle(run / "models", FOLDS)
    (run / "data").mkdir()
    (run / "data" / "slices").symlink_to(store.root, target_is_directory=True)
    split.to_csv(run / "data" / "split.csv", index=False)

    dice, auc = benchmark.score_models(run)
    assert list(dice) == ["ensemble", *(f"fold_{f}" for f in range(FOLDS))]
    test = split[split.split == "test"]
    with_tumour = {p for p in test.patient_id if store.labels(p).any()}
    assert with_tumour and all(set(d.index) == with_tumour for d in dice.values())
    alone = Cascade.load(run / "models/folds/classifier/fold_2.keras", run / "models/folds/segmenter/fold_2.keras", 0.5)
    _, _, patients = evaluate_split(score_patients(store, split, alone), store, "test", 0.5, PostProcessing(), 2, 0)
    np.testing.assert_allclose(dice["fold_2"].sort_index(),
                               patients[patients.has_tumour].set_index("patient_id").dice_cascade.sort_index())
    assert not all(dice["ensemble"].equals(dice[f"fold_{f}"]) for f in range(FOLDS))  # the mean is not a member
    printed = json.loads(json.dumps(benchmark.report(run, dice, auc)))  # what main prints
    assert printed["dice_per_patient"].keys() == with_tumour
    assert all(printed["dice_per_patient"][p][name] == pytest.approx(d[p]) for name, d in dice.items() for p in d.index)

    split.assign(split="train", fold=split.fold.fillna(0)).to_csv(run / "data" / "split.csv", index=False)  # no test
    with pytest.raises(InputError, match="split.csv: needs folds .* and test patients"):
        benchmark.score_models(run)


def test_single_split_bundle_is_one_model_of_each_kind(tmp_path):
    folder = tmp_path / "models"
    write_fold_bundle(folder, 1)
    raw = json.loads((folder / "cascade.json").read_text())
    assert raw["models"] == {"classifier": ["classifier.keras"], "segmenter": ["segmenter.keras"]}
    assert not (folder / "folds" / "classifier").exists() or not any((folder / "folds" / "classifier").iterdir())
    cascade = Cascade.load(folder / "classifier.keras", folder / "segmenter.keras", 0.5)
    assert isinstance(cascade.classifier, keras.Model)  # no ensemble wrapper for one model
    # cascade.json written before the fold lists (a file name per kind) still reads
    raw["models"] = {"classifier": "classifier.keras", "segmenter": "segmenter.keras"}
    (folder / "cascade.json").write_text(json.dumps(raw))
    assert read_bundle(folder).classifiers == ("classifier.keras",)


def test_a_listed_fold_model_that_is_missing_is_named(tmp_path):
    folder = tmp_path / "models"
    write_fold_bundle(folder, 2)
    (folder / "folds" / "segmenter" / "fold_1.keras").unlink()
    with pytest.raises(InputError, match="fold_1.keras"):
        read_bundle(folder)


# --------------------------------------------------------------------- the stages, end to end, 3 folds


@pytest.mark.slow
@pytest.mark.parametrize("test_fraction", [0.2, 0.0], ids=["with_test", "no_test"])
def test_three_folds_through_split_training_evaluate_and_predict(tmp_path, monkeypatch, test_fraction):
    """split.folds 3 on a tiny demo store (9 patients, 32 px, 1 epoch, a 1-conv classifier): the split stage
    writes folds, each training stage trains 3 models and never reads a test patient, evaluate scores every
    non-test patient out of fold (and chooses the pixel threshold there, evaluate.seg_threshold auto) and writes
    the spread over folds, cascade.json lists the 3 models of each kind and that threshold, and the bundle loads
    as an ensemble. With split.test 0 every patient is in a fold: the test metrics
    are null, the headline keeps the out-of-fold figures, and the report shows them under a banner."""
    from dataclasses import replace

    from pipeline.data.demo import write_kaggle_3m
    from pipeline.data.sources import read_cases
    from pipeline.data.split import read_split
    from pipeline.params import load_params
    from pipeline.predict.predictor import Predictor
    from pipeline.stages import evaluate, train_classifier, train_segmenter
    from pipeline.stages import split as split_stage

    monkeypatch.chdir(tmp_path)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params = replace(params,
                     data=replace(params.data, source="lgg", root=str(tmp_path / "kaggle_3m"), image_size=32),
                     split=replace(params.split, folds=3, train=0.8 - test_fraction, val=0.2, test=test_fraction),
                     train=replace(params.train, epochs=1, batch_size=8),
                     segmenter=replace(params.segmenter, filters=(16, 32), epochs_factor=1),
                     evaluate=replace(params.evaluate, bootstrap=5, gradcam_per_group=1, ig_steps=2,
                                      seg_threshold="auto"))
    write_kaggle_3m(tmp_path / "kaggle_3m", patients=9, slices_per_patient=6, image_size=64, seed=3)
    write_store(read_cases(params.data), "data/slices")
    split_stage.run(params)
    split = read_split("data/split.csv")
    test_ids = set(split.patient_id[split.split == "test"])
    assert bool(test_ids) == (test_fraction > 0)
    assert sorted(split.fold.dropna().unique()) == [0, 1, 2] and split.fold[split.split == "test"].isna().all()

    read: set[str] = set()
    original = SliceStore.images

    def recording(self, patient_id):
        read.add(patient_id)
        return original(self, patient_id)

    def tiny_classifier(size, backbone, weights, dropout, head):
        inputs = keras.Input((size, size, 3), name="image")
        x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
        outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
        return keras.Model(inputs, outputs), {"backbone": backbone, "pretrained": False, "weights_source": "none",
                                              "preprocessing": "none", "last_conv_layer": "conv"}

    monkeypatch.setattr(train_classifier, "build_classifier", tiny_classifier)
    with monkeypatch.context() as m:
        m.setattr(SliceStore, "images", recording)
        train_classifier.run(params)
        train_segmenter.run(params)
    assert read and read.isdisjoint(test_ids), "training read a test patient"
    for kind in ("classifier", "segmenter"):
        for f in range(3):
            sidecar = json.loads(fold_model(Path(f"models/{kind}.keras"), f).with_suffix(".json").read_text())
            assert (sidecar["fold"], sidecar["folds"]) == (f, 3)
            assert sidecar["training"]["schedule"] == params.train.schedule
        assert Path(f"reports/train_{kind}/folds/fold_2/metrics.json").is_file()

    evaluate.run(params)
    metrics = json.loads(Path("reports/eval/metrics_full.json").read_text())
    assert metrics["threshold"]["chosen_on"] == "oof" and metrics["cross_validation"]["folds"] == 3
    assert len(metrics["cross_validation"]["dice_patient_mean_per_fold"]) == 3
    slices = pd.read_csv("reports/eval/slices.csv", dtype={"patient_id": str})
    oof = slices[slices.split == "val"]
    assert set(oof.patient_id) == set(split.patient_id[split.split != "test"])
    own = oof.drop_duplicates("patient_id").set_index("patient_id").fold
    assert (own == split.set_index("patient_id").fold[own.index].astype(float)).all()
    bundle = json.loads(Path("models/cascade.json").read_text())
    assert len(bundle["models"]["classifier"]) == 3 and len(bundle["models"]["segmenter"]) == 3
    predictor = Predictor.from_dir("models")
    assert len(members(predictor.cascade.classifier)) == 3
    # the pixel threshold chosen out of fold (seg_threshold auto) is the one predict applies
    assert metrics["postprocessing"]["seg_threshold_rule"] == "auto" and metrics["postprocessing"]["chosen_on"] == "oof"
    assert predictor.cascade.seg_threshold == bundle["seg_threshold"] == metrics["postprocessing"]["seg_threshold"]
    # so are the post-processing steps (evaluate.fill_holes and keep_largest_component auto)
    chosen = {k: metrics["postprocessing"][k] for k in ("min_component_px", "keep_largest_component", "fill_holes")}
    assert bundle["postprocessing"] == chosen == dataclasses.asdict(predictor.cascade.post)
    headline = json.loads(Path("reports/metrics.json").read_text())
    assert headline["val_dice_mean"] == metrics["val"]["cascade"]["dice_patient_mean"] is not None
    if test_fraction == 0:
        from pipeline.evaluation.schema import METRICS, leaf_paths, lookup
        assert all(lookup(metrics, path) is None for path in leaf_paths(METRICS) if path.startswith("test."))
        assert headline["dice_mean"] is None and not (slices.split == "test").any()
        fold0 = set(split.patient_id[split.fold == 0])
        gallery = json.loads(Path("reports/eval/gallery.json").read_text())
        assert gallery and {g["patient_id"] for g in gallery} <= fold0, "explained by fold 0's classifier: its own"
        from pipeline.stages import report
        report.run(params)
        html = Path("reports/index.html").read_text()
        assert "No test split" in html and "Out-of-fold AUC" in html and "Test AUC" not in html
        assert "Inputs not found" not in html and "Test slices" not in html and "test, ensemble" not in html
        cases = json.loads(Path("reports/eval/cases.json").read_text())
        assert cases and {c["patient_id"] for c in cases} <= fold0
    else:
        assert headline["dice_mean"] == metrics["test"]["cascade"]["dice_patient_mean"] is not None


def test_listed_model_files_stay_inside_the_folder(tmp_path):
    folder = tmp_path / "models"
    write_fold_bundle(folder, 2)
    raw = json.loads((folder / "cascade.json").read_text())
    raw["models"]["classifier"][1] = "../elsewhere.keras"
    (folder / "cascade.json").write_text(json.dumps(raw))
    with pytest.raises(InputError, match="is not a path inside the bundle folder"):
        read_bundle(folder)


def test_evaluate_refuses_models_trained_for_another_split(tmp_path):
    """A model whose sidecar lists a patient it would now score (a test patient; with folds, one of its own
    fold) was trained for another split: evaluate stops with one line naming it, before scoring."""
    from pipeline.evaluation.scoring import check_models_never_saw

    split = pd.DataFrame({"patient_id": ["a", "b", "c", "d", "t"], "split": ["train"] * 4 + ["test"],
                          "fold": [0, 0, 1, 1, None]})
    paths = []
    for f, trained_on in enumerate((["c", "d"], ["a", "b"])):
        path = tmp_path / f"fold_{f}.keras"
        (tmp_path / f"fold_{f}.json").write_text(json.dumps({"trained_on": trained_on}))
        paths.append([path])
    check_models_never_saw(split, paths)  # each fold model trained on the other fold only
    (tmp_path / "fold_1.json").write_text(json.dumps({"trained_on": ["a", "c"]}))  # c is fold 1's own
    with pytest.raises(InputError, match=r"fold_1.keras: was trained on 1 patient\(s\) that evaluate scores with it \(c\)"):
        check_models_never_saw(split, paths)
    (tmp_path / "fold_1.json").write_text(json.dumps({"trained_on": ["a", "t"]}))  # t is a test patient
    with pytest.raises(InputError, match=r"\(t\)"):
        check_models_never_saw(split, paths)
    single = split.drop(columns="fold").assign(split=["train", "train", "val", "val", "test"])
    (tmp_path / "fold_0.json").write_text(json.dumps({"trained_on": ["a", "b", "c"]}))  # c: a val patient
    with pytest.raises(InputError, match=r"fold_0.keras: .*\(c\)"):
        check_models_never_saw(single, paths[:1])
    (tmp_path / "fold_0.json").write_text(json.dumps({"kind": "classifier"}))  # written before trained_on
    check_models_never_saw(single, paths[:1])


def test_evaluate_needs_test_patients_or_folds(store_and_split, tmp_path, monkeypatch):
    """A split with no test patient is for cross-validation only (split.test 0 with folds): a single split
    without one (a hand-written split.csv) stops evaluate with one line naming the file."""
    from pipeline.params import load_params
    from pipeline.stages import evaluate

    store, split = store_and_split
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    Path("data/slices").symlink_to(store.root)
    single = split.drop(columns="fold").assign(split=np.where(split.fold.fillna(0) == 0, "val", "train"))
    single.to_csv("data/split.csv", index=False)
    with pytest.raises(InputError, match="data/split.csv: no patient in test and no folds"):
        evaluate.run(load_params(Path(__file__).resolve().parents[1] / "params.yaml"))
