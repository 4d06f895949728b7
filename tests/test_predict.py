"""`python -m pipeline predict` and `pipeline.predict.Predictor` on every input layout.

Models (the session fixture `tiny_bundle`, built once): a tiny untrained CNN classifier with the project's input/output
names, and a tiny ResUNet (widths 16, 32) trained for a few seconds at 64 px on synthetic demo slices
of other patients (BraTS 2021 volumes and kaggle_3m TIFFs read through the real readers). The Dice
tests run at threshold 0 (every slice with brain is segmented), so they measure where the
segmenter's mask lands in the input's own space; the gate itself is tested with thresholds 0 and 1.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import tifffile

import pipeline.models.nets  # noqa: F401  (registers the custom layers)
from pipeline.__main__ import main
from pipeline.data.case import LGG_CHANNELS
from pipeline.data.demo import _patient_plan, write_brats2021, write_kaggle_3m
from pipeline.data.sources import read_lgg_case
from pipeline.errors import InputError
from pipeline.evaluation.bundle import MODELS, bundle_files, file_hashes
from pipeline.evaluation.metrics import call_summary, dice, roc_auc
from pipeline.predict import OUTPUT_MARKER, Predictor, find_inputs, write_run_index

SIZE = 64  # model input size (px)
# Dice of the written masks against the demo truth, measured over 9 training runs (seeds 0-2, 3 or 5
# epochs; training is not bit-reproducible across processes): BraTS 2021 case 0.90-0.97, Decathlon
# file (resized 100 -> 64 px, axes swapped) 0.69-0.85, kaggle_3m TIFFs (256 -> 64 -> 256 px) 0.86-0.93.
# A misplaced mask scores far lower: flipped left-right 0.00 (BraTS) / 0.38-0.43 (Decathlon), with its
# x and y axes swapped 0.40-0.42 / 0.06, flipped along z 0.00 (Decathlon). The bounds sit about 0.15
# under the lowest measurement and above every flipped or transposed mask.
MIN_DICE = {"brats": 0.75, "decathlon": 0.55, "lgg": 0.7}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def models(tiny_bundle: Path) -> Path:
    """The session's tiny model bundle (conftest.py): read it, copy it to change it."""
    return tiny_bundle


@pytest.fixture(scope="module")
def predictor(models: Path) -> Predictor:
    return Predictor.from_dir(models, threshold=0.0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """New demo cases in every layout: a BraTS 2021 case folder (60 px: padded to 64), a kaggle_3m case
    folder (256 px TIFFs: resized to 64 and back), a Decathlon 4D file (100 px with its axes swapped:
    resized and reoriented)."""
    root = tmp_path_factory.mktemp("predict_inputs")
    brats = write_brats2021(root / "brats", patients=2, slices=32, size=60, seed=0)
    lgg = write_kaggle_3m(root / "lgg", patients=2, slices_per_patient=16, image_size=256, seed=0)
    write_brats2021(root / "decathlon_src", patients=1, slices=32, size=100, seed=5)
    source = next((root / "decathlon_src").iterdir())
    case = source.name
    sequences = [nib.load(source / f"{case}_{s}.nii.gz") for s in ("flair", "t1", "t1ce", "t2")]  # Task01 order
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)  # array axes 0 <-> 1
    affine = sequences[0].affine @ swap
    affine[:3, 3] += [5.0, -7.0, 12.0]
    stacked = np.stack([np.asarray(s.dataobj).transpose(1, 0, 2) for s in sequences], axis=-1)
    (root / "decathlon").mkdir()
    nib.save(nib.Nifti1Image(stacked, affine), root / "decathlon" / "BRATS_001.nii.gz")
    seg = np.asarray(nib.load(source / f"{case}_seg.nii.gz").dataobj).transpose(1, 0, 2)
    nib.save(nib.Nifti1Image(seg, affine), root / "decathlon_truth.nii.gz")
    assert _visible_tumour(5, "brats2021", 0)
    brats_case = brats[_first_visible(0, "brats2021", len(brats))]
    return {
        "brats": root / "brats" / brats_case,
        "brats_other": root / "brats" / next(b for b in brats if b != brats_case),
        "lgg": root / "lgg" / lgg[_first_visible(0, "kaggle_3m", len(lgg))],
        "decathlon": root / "decathlon" / "BRATS_001.nii.gz",
        "decathlon_truth": root / "decathlon_truth.nii.gz",
    }


def _visible_tumour(seed: int, layout: str, i: int) -> bool:
    """Demo patient i has a tumour of normal contrast (about 15% of demo tumours are faint on purpose,
    and a segmenter trained for seconds misses those)."""
    _, has_tumour, low_contrast = _patient_plan(seed, layout, i)
    return has_tumour and not low_contrast


def _first_visible(seed: int, layout: str, patients: int) -> int:
    return next(i for i in range(patients) if _visible_tumour(seed, layout, i))


def _summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text())


# ------------------------------------------------------------------------------------------ volumes


def test_brats2021_case_gives_a_nifti_in_the_input_space(predictor: Predictor, inputs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """Same shape, affine and sform/qform codes as the input; Dice >= 0.75 vs the truth (MIN_DICE)."""
    case = inputs["brats"]
    results = predictor.predict_path(case, tmp_path)
    assert [r["status"] for r in results] == ["ok"]
    out = tmp_path / case.name
    image = nib.load(out / f"{case.name}_mask.nii.gz")
    reference = nib.load(case / f"{case.name}_t1.nii.gz")
    mask = np.asarray(image.dataobj)
    assert mask.shape == reference.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(image.affine, reference.affine)
    assert image.header.get_sform(coded=True)[1] == reference.header.get_sform(coded=True)[1]
    assert image.header.get_qform(coded=True)[1] == reference.header.get_qform(coded=True)[1]
    truth = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj) > 0
    assert dice(truth, mask > 0) >= MIN_DICE["brats"]

    summary = _summary(out)
    assert summary == results[0]
    assert summary["tumour_present"] and summary["layout"] == "brats2021_case"
    assert summary["n_slices"] == mask.shape[2] == len(summary["slices"])  # every slice, none dropped
    assert summary["threshold"] == 0.0 and summary["channels"] == list(LGG_CHANNELS)
    assert summary["slice_score"] == "classifier"  # the tiny bundle's gate.score (none written: read as classifier)
    assert summary["voxel_mm"] == [1.0, 1.0, 1.0]
    assert summary["tumour_volume_ml"] == pytest.approx(mask.sum() / 1000)
    per_slice = {s["slice"]: s["tumour_px"] for s in summary["slices"]}
    assert per_slice == {z: int(mask[:, :, z].sum()) for z in range(mask.shape[2])}  # L-P-S: z stays z
    assert all(s["tumour_mm2"] == s["tumour_px"] for s in summary["slices"])
    assert summary["slices_with_tumour"] == [z for z, px in per_slice.items() if px]
    assert summary["max_probability"] == max(s["probability"] for s in summary["slices"])
    blank = [s["slice"] for s in summary["slices"] if s["blank"]]
    assert blank and all(not np.asarray(reference.dataobj)[:, :, z].any() for z in blank)
    assert len(summary["outputs"]["overlays"]) == len(summary["slices_with_tumour"])
    assert all((out / name).is_file() for name in summary["outputs"]["overlays"])


def test_decathlon_file_resized_and_reoriented(predictor: Predictor, inputs: dict[str, Path], tmp_path: Path) -> None:
    """A lone 4D file (Task01 channel order, no dataset.json): Dice >= 0.55 vs the truth (MIN_DICE)."""
    path = inputs["decathlon"]
    [result] = predictor.predict_path(path, tmp_path)
    image = nib.load(tmp_path / "BRATS_001" / "BRATS_001_mask.nii.gz")
    source = nib.load(path)
    assert image.shape == source.shape[:3]
    np.testing.assert_allclose(image.affine, source.affine)
    truth = np.asarray(nib.load(inputs["decathlon_truth"]).dataobj) > 0
    assert dice(truth, np.asarray(image.dataobj) > 0) >= MIN_DICE["decathlon"]
    assert result["layout"] == "decathlon_file" and result["source"] == "decathlon"
    # the file's axis 2 is still the axial one: per-slice areas follow it
    mask = np.asarray(image.dataobj)
    assert [s["tumour_px"] for s in result["slices"]] == [int(mask[:, :, z].sum()) for z in range(mask.shape[2])]


def test_threshold_gates_slices_and_defaults_to_the_bundle(models: Path, inputs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    assert Predictor.from_dir(models).threshold == 0.0  # models/cascade.json
    closed = Predictor.from_dir(models, threshold=1.0)
    [result] = closed.predict_path(inputs["brats"], tmp_path)
    assert not result["tumour_present"] and not result["slices_with_tumour"] and result["threshold"] == 1.0
    assert not any(s["segmented"] for s in result["slices"])
    assert not np.asarray(nib.load(tmp_path / inputs["brats"].name / f"{inputs['brats'].name}_mask.nii.gz").dataobj).any()
    no_bundle = shutil.copytree(models, tmp_path / "no_bundle")
    (no_bundle / "cascade.json").unlink()
    with pytest.raises(InputError, match="cascade.json"):
        Predictor.from_dir(no_bundle)


def test_a_copied_bundle_predicts_byte_identical_masks_whatever_the_workspace_says(
        models: Path, inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """models/ copied away, then params.yaml and reports/ of the workspace changed (other clipping,
    post-processing, threshold): the masks are byte-identical, because prediction reads only the bundle."""
    here = tmp_path / "workspace"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["predict", str(inputs["brats"]), "-o", "before", "--models", str(models)]) == 0
    moved = shutil.copytree(models, tmp_path / "elsewhere" / "bundle")
    (here / "params.yaml").write_text("data: {clip_percentiles: [10, 60]}\nevaluate: {min_component_px: 100000, "
                                      "keep_largest_component: true, threshold: 1.0}\n")
    (here / "reports" / "eval").mkdir(parents=True)
    (here / "reports" / "eval" / "threshold.json").write_text(json.dumps({"rule": "youden", "threshold": 1.0}))
    (here / "models").mkdir()  # an empty workspace models/ must not be consulted either
    assert main(["predict", str(inputs["brats"]), "-o", "after", "--models", str(moved)]) == 0
    name = f"{inputs['brats'].name}/{inputs['brats'].name}_mask.nii.gz"
    before, after = nib.load(here / "before" / name), nib.load(here / "after" / name)
    assert np.asarray(before.dataobj).any()
    np.testing.assert_array_equal(np.asarray(before.dataobj), np.asarray(after.dataobj))
    np.testing.assert_array_equal(before.affine, after.affine)


def test_predict_volume_skips_blank_slices(predictor: Predictor) -> None:
    images = np.zeros((3, SIZE, SIZE, 3), np.uint8)
    images[1, 20:40, 20:40] = 120
    out = predictor.predict_volume(images)
    assert out["probabilities"].shape == (3,) and out["mask"].shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(out["blank"], [True, False, True])
    assert out["probabilities"][0] == 0 and not out["mask"][[0, 2]].any() and out["gated"][1]
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict_volume(images.astype(np.float32))
    cascade_scored = dataclasses.replace(predictor, cascade=dataclasses.replace(predictor.cascade, slice_score="cascade"))
    out = cascade_scored.predict_volume(np.zeros_like(images))  # every slice blank: nothing for the models to score
    assert not out["gated"].any() and not out["probabilities"].any() and out["blank"].all()


# ------------------------------------------------------------------------------------------ TIFFs


def test_kaggle_3m_case_gives_mask_tiffs_at_256(predictor: Predictor, inputs: dict[str, Path], tmp_path: Path) -> None:
    """One 0/255 mask TIFF per slice in kaggle_3m naming at 256x256; Dice >= 0.7 vs the truth (MIN_DICE)."""
    case = inputs["lgg"]
    [result] = predictor.predict_path(case, tmp_path)
    out = tmp_path / case.name
    images = sorted(p for p in case.glob("*.tif") if not p.stem.endswith("_mask"))
    assert sorted(result["outputs"]["masks"]) == sorted(f"{p.stem}_mask.tif" for p in images)
    truth, pred = [], []
    for p in images:
        mask = tifffile.imread(out / f"{p.stem}_mask.tif")
        assert mask.shape == (256, 256) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        pred.append(mask > 0)
        truth.append(tifffile.imread(case / f"{p.stem}_mask.tif") > 0)
    assert dice(np.stack(truth), np.stack(pred)) >= MIN_DICE["lgg"]
    assert result["voxel_mm"] is None and result["tumour_volume_ml"] is None
    assert all(s["tumour_mm2"] is None for s in result["slices"])
    areas = {s["slice"]: s["tumour_px"] for s in result["slices"]}
    assert sum(areas.values()) == int(np.stack(pred).sum())


def test_single_tiff_slice(predictor: Predictor, inputs: dict[str, Path], tmp_path: Path) -> None:
    case = inputs["lgg"]
    path = next(p for p in sorted(case.glob("*_mask.tif")) if tifffile.imread(p).any())
    image = path.with_name(path.name.replace("_mask", ""))
    [result] = predictor.predict_path(image, tmp_path)
    assert result["case_id"] == image.stem and result["n_slices"] == 1
    assert (tmp_path / image.stem / path.name).is_file()
    assert tifffile.imread(tmp_path / image.stem / path.name).shape == (256, 256)


# ------------------------------------------------------------------------------------------ folders and errors


def test_folder_with_a_broken_case_finishes_the_others(models: Path, inputs: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for key in ("brats", "lgg"):
        shutil.copytree(inputs[key], folder / inputs[key].name)
    shutil.copy(inputs["decathlon"], folder / "BRATS_001.nii.gz")
    broken = shutil.copytree(inputs["brats_other"], folder / inputs["brats_other"].name)
    flair = broken / f"{broken.name}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:400])  # truncated
    out = tmp_path / "out"

    code = main(["predict", str(folder), "-o", str(out), "--models", str(models), "--threshold", "0"])
    assert code == 1
    for case_id in (inputs["brats"].name, inputs["lgg"].name, "BRATS_001"):
        assert _summary(out / case_id)["status"] == "ok"
    assert not (out / broken.name).exists()
    run = json.loads((out / "predictions.json").read_text())["cases"]
    [failed] = [r for r in run if r["status"] == "failed"]
    assert failed["input"] == str(broken) and "not a readable NIfTI" in failed["error"]
    assert str(broken) in capsys.readouterr().err


def test_all_cases_failing_and_bad_usage_exit_2(models: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(inputs["brats"], tmp_path / inputs["brats"].name)
    (folder / f"{folder.name}_t1ce.nii.gz").unlink()
    assert main(["predict", str(folder), "-o", str(tmp_path / "out"), "--models", str(models), "--threshold", "0"]) == 2
    assert main(["predict", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out"), "--models", str(models),
                 "--threshold", "0"]) == 2
    assert main(["predict", str(folder), "-o", str(tmp_path / "out"), "--models", str(tmp_path)]) == 2  # no models
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(folder)])  # no -o
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(folder), "-o", "x", "--threshold", "1.5"])
    assert exit_info.value.code == 2


def test_missing_modality_names_the_case(predictor: Predictor, inputs: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(inputs["brats"], tmp_path / inputs["brats"].name)
    (folder / f"{folder.name}_t1ce.nii.gz").unlink()
    [result] = predictor.predict_path(folder, tmp_path / "out")
    assert result["status"] == "failed" and result["input"] == str(folder)
    assert "missing sequence t1gd" in result["error"] and str(folder) in result["error"]
    with pytest.raises(InputError, match="missing sequence t1gd"):
        predictor.read(find_inputs(folder)[0])


def test_channel_mismatch(models: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    """Models trained on t2, flair, t1gd: kaggle_3m TIFFs (fixed t1, flair, t1gd) are refused by name;
    a BraTS case gives the models their own sequences; sidecars that disagree are refused at load."""
    other = shutil.copytree(models, tmp_path / "models")
    for name in ("classifier", "segmenter"):
        sidecar = json.loads((other / f"{name}.json").read_text())
        (other / f"{name}.json").write_text(json.dumps({**sidecar, "channels": ["t2", "flair", "t1gd"]}))
    bundle = json.loads((other / "cascade.json").read_text())
    bundle["task"]["channels"] = ["t2", "flair", "t1gd"]
    bundle["sha256"] = file_hashes(other, bundle_files(MODELS))  # a consistent bundle of t2 models
    (other / "cascade.json").write_text(json.dumps(bundle))
    t2_predictor = Predictor.from_dir(other, threshold=0.0)
    [result] = t2_predictor.predict_path(inputs["lgg"], tmp_path / "out")
    assert result["status"] == "failed" and str(inputs["lgg"]) in result["error"]
    assert "t1,flair,t1gd" in result["error"] and "t2,flair,t1gd" in result["error"]
    case = read_lgg_case(inputs["lgg"], SIZE)
    with pytest.raises(InputError, match="do not match"):
        t2_predictor.predict_case(case)
    [result] = t2_predictor.predict_path(inputs["brats"], tmp_path / "out")
    assert result["status"] == "ok" and result["channels"] == ["t2", "flair", "t1gd"]

    sidecar = json.loads((models / "classifier.json").read_text())
    (other / "classifier.json").write_text(json.dumps(sidecar))
    with pytest.raises(InputError, match="segmenter.json"):
        Predictor.from_dir(other, threshold=0.0)


def test_each_model_is_checked_for_its_role_on_load(models: Path) -> None:
    """A classifier gives [N, 1], a segmenter [N, S, S, 1]: a model in the other's place is refused by name
    (before issue 22 a classifier as segmenter.keras broadcast its [N, 1] over the slice: a 100 % mask)."""
    from pipeline.evaluation.cascade import Cascade

    classifier, segmenter = models / "classifier.keras", models / "segmenter.keras"
    with pytest.raises(InputError, match=rf"^{segmenter}: is not a classifier: it outputs \[N, {SIZE}, {SIZE}, 1\] "
                                         r".*\(a segmenter's output: are the two model files swapped\?\)$"):
        Cascade.load(segmenter, segmenter, threshold=0.5)
    with pytest.raises(InputError, match=rf"^{classifier}: is not a segmenter: it outputs \[N, 1\] for input "
                                         rf"\[N, {SIZE}, {SIZE}, 3\], a segmenter gives \[N, {SIZE}, {SIZE}, 1\]"):
        Cascade.load(classifier, classifier, threshold=0.5)
    cascade = Cascade.load(classifier, segmenter, threshold=0.5)
    assert cascade.segment(np.zeros((2, SIZE, SIZE, 3), np.uint8)).shape == (2, SIZE, SIZE)


def test_stage_cli_still_parses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["not_a_stage"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0 and "--threshold" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ never touch the input


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes): the state an input must keep."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def input_root(inputs: dict[str, Path], tmp_path: Path) -> Path:
    """A folder of cases (a kaggle_3m case and a BraTS 2021 case) the safety tests may aim -o at."""
    root = tmp_path / "scans"
    for key in ("lgg", "brats"):
        shutil.copytree(inputs[key], root / inputs[key].name)
    return root


@pytest.mark.parametrize("output", [
    "root",             # predict ROOT -o ROOT: each case folder used to be swapped for its outputs
    "case",             # -o inside an input
    "parent",           # -o holding the input (ROOT/<case> would replace the input case)
    "link_to_root",     # a symlink that resolves to the input
])
def test_predict_refuses_an_output_folder_that_overlaps_the_input(
        output: str, models: Path, input_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One line naming the output folder, exit 2, and not one byte of the input changed or added."""
    case = next(p for p in input_root.iterdir() if p.name.startswith("TCGA_"))
    source, out = {
        "root": (input_root, input_root),
        "case": (input_root, case / "out"),
        "parent": (case, input_root),
        "link_to_root": (input_root, tmp_path / "link"),
    }[output]
    if output == "link_to_root":
        out.symlink_to(input_root, target_is_directory=True)
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main(["predict", str(source), "-o", str(out), "--models", str(models), "--threshold", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {out}:") and "input" in err[0]
    assert _tree(tmp_path) == before


def test_predict_refuses_an_existing_file_as_output(models: Path, inputs: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "taken.txt"
    out.write_text("keep me")
    capsys.readouterr()
    code = main(["predict", str(inputs["brats"]), "-o", str(out), "--models", str(models), "--threshold", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a folder" in err[0] and str(out) in err[0]
    assert out.read_text() == "keep me"


def test_predict_replaces_only_case_folders_it_wrote(predictor: Predictor, inputs: dict[str, Path],
                                                     tmp_path: Path) -> None:
    """A second run over predict's own output replaces it (marker file); a folder of the same name that
    predict did not write fails that case and keeps every byte."""
    case = inputs["brats"]
    out = tmp_path / "out"
    [first] = predictor.predict_path(case, out)
    assert first["status"] == "ok" and (out / case.name / OUTPUT_MARKER).is_file()
    [again] = predictor.predict_path(case, out)
    assert again["status"] == "ok"

    foreign = tmp_path / "foreign"
    (foreign / case.name).mkdir(parents=True)
    (foreign / case.name / "notes.txt").write_text("the user's own file")
    before = _tree(foreign)
    [result] = predictor.predict_path(case, foreign)
    assert result["status"] == "failed" and "not written by predict" in result["error"]
    assert str(foreign / case.name) in result["error"]
    assert _tree(foreign) == before


# ------------------------------------------------------------------------------------------ external validation

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_labelled_input_is_scored_per_case_and_for_the_cohort(
        models: Path, predictor: Predictor, inputs: dict[str, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Each labelled case's summary holds Dice / HD95 / volume error against its own ground truth, equal
    to the metrics recomputed here; predictions.json and the console give the cohort's distribution."""
    folder = tmp_path / "cohort"
    for key in ("brats", "lgg"):
        shutil.copytree(inputs[key], folder / inputs[key].name)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        code = main(["predict", str(folder), "-o", str(out), "--models", str(models), "--threshold", "0"])
    assert code == 0
    dices, reference, called, scores_of_slices = [], [], [], []
    for key in ("brats", "lgg"):
        case = predictor.read(find_inputs(folder / inputs[key].name)[0])
        prediction = predictor.predict_case(case)
        scores = _summary(out / case.patient_id)["validation"]
        assert scores["dice"] == pytest.approx(dice(case.mask, prediction.mask))
        assert scores["dice"] >= MIN_DICE[key] - 0.1  # at the models' resolution, so close to the file-level check
        assert scores["hd95_unit"] == ("mm" if key == "brats" else "px") and np.isfinite(scores["hd95"])
        assert scores["truth_volume"] == pytest.approx(case.mask.sum() * (1e-3 if key == "brats" else 1))
        assert scores["volume_error"] == pytest.approx(scores["pred_volume"] - scores["truth_volume"])
        dices.append(scores["dice"])
        slices = _summary(out / case.patient_id)["slices"]
        assert [s["reference_tumour"] for s in slices] == case.mask.any(axis=(1, 2)).tolist()
        assert [s["tumour"] for s in slices] == prediction.mask.any(axis=(1, 2)).tolist()
        reference.append(case.mask.any(axis=(1, 2))[~prediction.blank])
        called.append(prediction.mask.any(axis=(1, 2))[~prediction.blank])
        scores_of_slices.append(prediction.probabilities[~prediction.blank])
    cohort = json.loads((out / "predictions.json").read_text())["validation"]
    # slice level, over both cases' non-blank slices: the final masks' calls against the reference
    expected = call_summary(np.concatenate(reference), np.concatenate(called))
    assert {k: cohort["slices"][k] for k in expected} == pytest.approx(expected, nan_ok=True)
    assert cohort["slices"]["auc"] == pytest.approx(roc_auc(np.concatenate(reference), np.concatenate(scores_of_slices)))
    assert cohort["n_labelled"] == cohort["n_with_tumour"] == 2
    assert cohort["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert cohort["dice"]["median"] == pytest.approx(np.median(dices))
    assert cohort["missed_tumours"] == 0
    assert any("external validation: 2 labelled" in r.getMessage() and "slices: AUC" in r.getMessage()
               for r in caplog.records)


def test_unlabelled_input_is_not_scored(predictor: Predictor, inputs: dict[str, Path], tmp_path: Path) -> None:
    case = shutil.copytree(inputs["brats"], tmp_path / inputs["brats"].name)
    (case / f"{case.name}_seg.nii.gz").unlink()
    results = predictor.predict_path(case, tmp_path / "out")
    assert results[0]["status"] == "ok" and results[0]["validation"] is None
    assert all(s["reference_tumour"] is None for s in results[0]["slices"])
    assert write_run_index(results, tmp_path / "out" / "predictions.json")["validation"] is None


@pytest.mark.parametrize("layout", ["lgg", "brats2021"])
def test_external_validation_on_the_shared_real_scans(layout: str, predictor: Predictor, tmp_path: Path) -> None:
    """Real scans with their real ground truth: the scores recomputed from the written mask files (in the
    input's own space) agree with the ones in summary.json (at the models' resolution) within resampling."""
    path = (SHARED_DATA / "lgg" / "kaggle_3m" / "TCGA_CS_4943_20000902" if layout == "lgg"
            else SHARED_DATA / "brats" / "BraTS2021" / "BraTS2021_00006")
    if not path.exists():
        pytest.skip(f"shared sample data not found at {path}")
    [result] = predictor.predict_path(path, tmp_path)
    scores = result["validation"]
    assert result["status"] == "ok" and scores is not None and scores["has_tumour"]
    if layout == "lgg":
        truth = np.stack([tifffile.imread(path / name) > 0  # the input mask of the same name
                          for name in result["outputs"]["masks"]])
        pred = np.stack([tifffile.imread(tmp_path / path.name / name) > 0 for name in result["outputs"]["masks"]])
        assert scores["truth_volume"] == pytest.approx(truth.sum() / 16, rel=0.1)  # 256 px files, 64 px models
    else:
        truth = np.asarray(nib.load(path / f"{path.name}_seg.nii.gz").dataobj) > 0
        pred = np.asarray(nib.load(tmp_path / path.name / f"{path.name}_mask.nii.gz").dataobj) > 0
        assert scores["truth_volume"] == pytest.approx(truth.sum() / 1000, rel=0.1)  # ml at 1 mm voxels
    assert scores["dice"] == pytest.approx(dice(truth, pred), abs=0.1)


def test_predict_on_dot_names_the_case_by_its_folder(models: Path, inputs: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`predict .` from inside a case folder: the case id is the folder's name (it used to be "", so the
    'case folder' was -o itself, and a second run wiped every other case and file in it)."""
    case = shutil.copytree(inputs["brats"], tmp_path / "in" / inputs["brats"].name)
    out = tmp_path / "out"
    (out / "TCGA_other").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    monkeypatch.chdir(case)
    for _ in range(2):
        assert main(["predict", ".", "-o", str(out), "--models", str(models)]) == 0
    assert (out / case.name / OUTPUT_MARKER).is_file() and not (out / OUTPUT_MARKER).exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / "TCGA_other").is_dir()


def test_decathlon_labels_are_scored_by_predict(predictor: Predictor, inputs: dict[str, Path], tmp_path: Path) -> None:
    """A Decathlon task folder with labelsTr/: external validation reads the label map of each image."""
    root = tmp_path / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shutil.copy(inputs["decathlon"], root / "imagesTr" / "BRATS_001.nii.gz")
    truth = nib.load(inputs["decathlon_truth"])
    labels = np.asarray(truth.dataobj).copy()
    labels[labels == 4] = 3  # BraTS 4 (enhancing) is Decathlon 3
    nib.save(nib.Nifti1Image(labels, truth.affine), root / "labelsTr" / "BRATS_001.nii.gz")
    [result] = predictor.predict_path(root, tmp_path / "out")
    assert result["status"] == "ok" and result["validation"] is not None
    assert result["validation"]["dice"] >= MIN_DICE["decathlon"] - 0.1
