"""data.target "regions" end to end on demo BraTS data, in process: ingest, split, the real train_segmenter stage
(a tiny classifier stands in for the ResNet50; the gate is 0, every slice segmented), evaluate, report, then
predict on a new case of each edition (BraTS 2021, BraTS 2023, Decathlon)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from tiny_models import LAST_CONV, tiny_classifier

from pipeline.data.demo import write_brats2021, write_brats2023, write_decathlon
from pipeline.data.regions import REGIONS
from pipeline.data.slices import SliceStore
from pipeline.evaluation.schema import REGION_METRICS, check
from pipeline.models.training import save_model, store_intensity
from pipeline.params import Params, load_params
from pipeline.predict.outputs import write_run_index
from pipeline.predict.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def tiny_params(root: Path) -> Params:
    p = load_params(ROOT / "params.yaml")
    return replace(
        p,
        data=replace(p.data, source="brats2021", root=str(root), image_size=SIZE, target="regions"),
        train=replace(p.train, epochs=4, batch_size=8),
        augment=replace(p.augment, enabled=False),
        segmenter=replace(p.segmenter, filters=(16, 32, 64), epochs_factor=1, patience=8),
        evaluate=replace(p.evaluate, threshold=0.0, keep_largest_component=False, bootstrap=10, gradcam_per_group=1,
                         ig_steps=4),
    )


def save_tiny_classifier() -> None:
    """models/classifier.keras + sidecar: a tiny untrained CNN with the real classifier's contract."""
    store = SliceStore("data/slices")
    model = tiny_classifier(SIZE, (16, 16), strides=2, padding="valid")
    save_model(model, Path("models/classifier.keras"), {
        "kind": "classifier", "input_size": SIZE, "channels": store.channels, "intensity": store_intensity(store),
        "backbone": "tiny", "last_conv_layer": LAST_CONV, "pretrained": False, "localisation_weight": 0.0,
        "head": "average", "threshold": None})


@pytest.mark.slow
def test_regions_train_evaluate_report_and_predict_every_edition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages import evaluate, ingest, report, split, train_segmenter

    write_brats2021(tmp_path / "brats", patients=10, slices=24, size=SIZE, seed=21)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path / "brats")
    keras.utils.set_random_seed(0)
    ingest.run(params)
    split.run(params)
    save_tiny_classifier()
    train_segmenter.run(params)
    sidecar = json.loads(Path("models/segmenter.json").read_text())
    assert sidecar["target"] == "regions" and sidecar["output_channels"] == list(REGIONS)
    evaluate.run(params)

    cascade = json.loads(Path("models/cascade.json").read_text())
    assert cascade["task"]["target"] == "regions" and cascade["task"]["regions"] == list(REGIONS)
    summary = json.loads(Path("reports/eval/regions.json").read_text())
    check(summary, REGION_METRICS)
    rows = pd.read_csv("reports/eval/regions.csv")
    assert sorted(rows.region.unique()) == sorted(REGIONS)
    whole = summary["test"]["whole_tumour"]
    assert whole["n_patients"] >= 1 and whole["dice_patient_mean"] > 0.2, summary["test"]
    for region in REGIONS:  # every figure present and in range where defined
        figures = summary["test"][region]
        assert figures["volume_unit"] == "ml" and figures["hd95_unit"] == "mm"
        assert 0 <= figures["specificity_mean"] <= 1
    cases = json.loads(Path("reports/eval/region_cases.json").read_text())
    assert cases and all(Path("reports", c["png"]).is_file() for c in cases)
    # the LGG-style whole-tumour outputs are still there, unchanged in form
    assert json.loads(Path("reports/metrics.json").read_text())["dice_mean"] is not None

    report.run(params)
    html = Path("reports/index.html").read_text()
    assert 'id="regions"' in html and all(f'id="region-{r}"' in html for r in REGIONS)

    # predict on new cases of each edition: a label map in the input's grid and its own label numbers
    write_brats2021(tmp_path / "new/brats2021", patients=1, slices=24, size=SIZE, seed=99)
    write_brats2023(tmp_path / "new/brats2023", patients=1, slices=24, size=SIZE, seed=99)
    write_decathlon(tmp_path / "new/decathlon", patients=1, slices=24, size=SIZE, seed=99)
    predictor = Predictor.from_dir("models")
    allowed = {"brats2021": {0, 1, 2, 4}, "brats2023": {0, 1, 2, 3}, "decathlon": {0, 1, 2, 3}}
    found = {}
    for edition, values in allowed.items():
        results = predictor.predict_path(tmp_path / "new" / edition, tmp_path / "out" / edition)
        assert [r["status"] for r in results] == ["ok"], results
        r = results[0]
        folder = tmp_path / "out" / edition / r["case_id"]
        label_map = nib.load(folder / r["outputs"]["labels"])
        reference = nib.load(r["input"] if edition == "decathlon" else next(Path(r["input"]).glob("*t2*.nii.gz")))
        assert label_map.shape == reference.shape[:3]
        np.testing.assert_allclose(label_map.affine, reference.affine)
        labels = np.asarray(label_map.dataobj)
        assert set(np.unique(labels).tolist()) <= values
        voxel_ml = float(np.prod(label_map.header.get_zooms()[:3])) / 1000
        assert r["region_volumes_ml"]["whole_tumour"] == pytest.approx((labels > 0).sum() * voxel_ml)
        enhancing = {"brats2021": 4, "brats2023": 3, "decathlon": 3}[edition]
        assert r["region_volumes_ml"]["enhancing_tumour"] == pytest.approx((labels == enhancing).sum() * voxel_ml)
        assert set(r["validation_regions"]) == set(REGIONS)
        assert r["outputs"]["overlays"] and all((folder / o).is_file() for o in r["outputs"]["overlays"])
        found[edition] = r
        index = write_run_index(results, tmp_path / "out" / edition / "predictions.json")
        assert set(index["validation_regions"]) == set(REGIONS)
    # one patient in three editions: the same regions, whatever the label numbers
    for edition in ("brats2023", "decathlon"):
        assert found[edition]["region_volumes_ml"] == pytest.approx(found["brats2021"]["region_volumes_ml"])
