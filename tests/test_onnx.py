"""ONNX export (``python -m pipeline export``) and ONNX Runtime prediction (``predict --models EXPORTED_DIR``).

The session's tiny Keras bundle (conftest.py ``tiny_bundle``) is exported once per module; predicting with
the export must write the masks the Keras bundle writes (per-case Dice >= 0.999), in a process that never
imports TensorFlow or keras, with nothing requirements-onnx.txt does not install.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install .[export])")
pytest.importorskip("tf2onnx", reason="the export extra is not installed (pip install .[export])")

import keras  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402
from tiny_models import tiny_classifier  # noqa: E402

from pipeline.__main__ import main  # noqa: E402
from pipeline.data.demo import write_brats2021, write_kaggle_3m  # noqa: E402
from pipeline.errors import InputError  # noqa: E402
from pipeline.evaluation.bundle import CASCADE_FILE, bundle_files, file_hashes, read_bundle  # noqa: E402
from pipeline.evaluation.metrics import dice  # noqa: E402
from pipeline.export import TOLERANCE, export_bundle, export_model  # noqa: E402
from pipeline.models.nets import PerImageStandardization  # noqa: E402
from pipeline.predict import Predictor, find_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_CASES = {"lgg": SHARED_DATA / "lgg" / "kaggle_3m" / "TCGA_CS_4943_20000902",
                "brats2021": SHARED_DATA / "brats" / "BraTS2021" / "BraTS2021_00006"}
MIN_DICE = 0.999  # per case, ONNX Runtime's masks against the Keras bundle's


@pytest.fixture(scope="module")
def onnx_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "models_onnx"
    differences = export_bundle(tiny_bundle, out)
    assert set(differences) == {"classifier", "segmenter"} and max(differences.values()) <= TOLERANCE
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Demo cases the tiny bundle was not trained on: a BraTS 2021 folder (60 px) and a kaggle_3m folder (256 px)."""
    root = tmp_path_factory.mktemp("onnx_inputs")
    brats = write_brats2021(root / "brats", patients=1, slices=24, size=60, seed=3)
    lgg = write_kaggle_3m(root / "lgg", patients=1, slices_per_patient=12, image_size=256, seed=4)
    return {"brats2021": root / "brats" / brats[0], "lgg": root / "lgg" / lgg[0]}


def test_export_writes_a_complete_onnx_bundle(tiny_bundle: Path, onnx_bundle: Path) -> None:
    raw = json.loads((onnx_bundle / CASCADE_FILE).read_text())
    assert raw["format"] == "onnx" and raw["models"] == {"classifier": ["classifier.onnx"], "segmenter": ["segmenter.onnx"]}
    names = bundle_files(raw["models"])
    assert sorted(p.name for p in onnx_bundle.iterdir()) == sorted([*names, CASCADE_FILE])
    assert raw["sha256"] == file_hashes(onnx_bundle, names)  # the export records its own files
    for sidecar in ("classifier.json", "segmenter.json"):
        assert (onnx_bundle / sidecar).read_bytes() == (tiny_bundle / sidecar).read_bytes()
    keras_raw = json.loads((tiny_bundle / CASCADE_FILE).read_text())
    assert keras_raw["format"] == "keras"
    for key in ("task", "gate", "seg_threshold", "postprocessing"):
        assert raw[key] == keras_raw[key]
    bundle = read_bundle(onnx_bundle)
    assert bundle.format == "onnx" and bundle.segmenters == ("segmenter.onnx",)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_the_exported_graph_computes_the_custom_layers(mode: str, tmp_path: Path) -> None:
    """BackbonePreprocess (each mode) and PerImageStandardization become ONNX ops giving Keras' numbers."""
    keras.utils.set_random_seed(1)
    image = keras.Input((32, 32, 3))
    standardised = PerImageStandardization()(image)
    preprocessed = tiny_classifier(32, (4,), preprocess=mode)(image)
    model = keras.Model(image, keras.layers.Concatenate()([keras.layers.GlobalMaxPooling2D()(standardised),
                                                          preprocessed]))
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    images[0] = 7.0  # a constant image: the standardisation's epsilon branch
    assert export_model(model, 32, tmp_path / "m.onnx", images) <= TOLERANCE
    assert np.abs(np.asarray(model.predict_on_batch(images))).max() > 0.1  # not a test on zeros


def _predict_onnx_in_a_subprocess(models: Path, case: Path, out: Path, blocked: set[str]) -> None:
    """``python -m pipeline predict`` in a fresh interpreter in which the top-level modules ``blocked`` cannot
    be imported (as if not installed: optional imports fall back). Fails unless it succeeds without having
    imported TensorFlow or keras."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ONNX_TEST_BLOCKED": " ".join(sorted(blocked))}
    done = subprocess.run([sys.executable, "-c", PROBE, "predict", str(case), "-o", str(out), "--models", str(models)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HEAVY []" in done.stdout, done.stdout


PROBE = """
import importlib.abc, os, sys
blocked = set(os.environ["ONNX_TEST_BLOCKED"].split())
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the light install)", name=name)
sys.meta_path.insert(0, Block())
from pipeline.__main__ import main
rc = main(sys.argv[1:])
print("HEAVY", sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
sys.exit(rc)
"""


def _masks(folder: Path) -> np.ndarray:
    """The predicted mask a case folder holds (NIfTI, or the kaggle_3m TIFFs in slice order) as bool."""
    import nibabel as nib
    import tifffile

    summary = json.loads((folder / "summary.json").read_text())
    outputs = summary["outputs"]
    if "masks" in outputs:
        return np.stack([tifffile.imread(folder / name) > 0 for name in outputs["masks"]])
    return np.asarray(nib.load(folder / outputs["mask"]).dataobj) > 0


def test_onnx_predict_writes_the_keras_masks_without_tensorflow(tiny_bundle: Path, onnx_bundle: Path,
                                                               cases: dict[str, Path], tmp_path: Path) -> None:
    """In a process where only what requirements-onnx.txt installs can be imported (everything else installed
    here, TensorFlow and keras included, is blocked), ONNX predict writes the Keras bundle's masks."""
    blocked = _outside_the_light_install()
    assert {"tensorflow", "keras", "jax", "onnxruntime"} & blocked == {"tensorflow", "keras", "jax"}
    keras_predictor = Predictor.from_dir(tiny_bundle)
    for layout, case in cases.items():
        _predict_onnx_in_a_subprocess(onnx_bundle, case, tmp_path / "onnx", blocked)
        keras_predictor.predict_path(case, tmp_path / "keras")
        theirs, ours = _masks(tmp_path / "keras" / case.name), _masks(tmp_path / "onnx" / case.name)
        assert theirs.shape == ours.shape and theirs.any(), layout
        assert dice(theirs, ours) >= MIN_DICE, layout


def _outside_the_light_install() -> set[str]:
    """The top-level modules of every distribution installed here that installing requirements-onnx.txt (with
    what its lines require) would not install. Checks each of its lines is as pyproject.toml has it."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {str(Requirement(r)) for r in [*project["dependencies"], *project["optional-dependencies"]["onnx"]]}
    lines = [line.strip() for line in (ROOT / "requirements-onnx.txt").read_text().splitlines()]
    light = [Requirement(line) for line in lines if line and not line.startswith("#")]
    assert {str(r) for r in light} <= declared, "requirements-onnx.txt differs from pyproject.toml"
    installed = _with_requirements({canonicalize_name(r.name) for r in light})
    return {top for top, owners in metadata.packages_distributions().items()
            if top != "pipeline" and not any(canonicalize_name(d) in installed for d in owners)}


def _with_requirements(names: set[str]) -> set[str]:
    """``names`` and every distribution they require, transitively (extras left out), as installed here."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return found


@pytest.mark.parametrize("layout", list(SHARED_CASES))
def test_onnx_masks_equal_keras_on_the_shared_real_scans(layout: str, tiny_bundle: Path, onnx_bundle: Path) -> None:
    path = SHARED_CASES[layout]
    if not path.exists():
        pytest.skip(f"shared sample data not found at {path}")
    keras_predictor, onnx_predictor = Predictor.from_dir(tiny_bundle), Predictor.from_dir(onnx_bundle)
    [item] = find_inputs(path)
    case = keras_predictor.read(item)
    theirs, ours = keras_predictor.predict_case(case), onnx_predictor.predict_case(case)
    assert theirs.mask.any()
    assert dice(theirs.mask, ours.mask) >= MIN_DICE
    assert np.abs(theirs.probabilities - ours.probabilities).max() <= TOLERANCE


def test_export_refuses_what_it_cannot_export(tiny_bundle: Path, onnx_bundle: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--models", str(onnx_bundle), "-o", str(tmp_path / "again")]) == 2
    assert "is already a onnx bundle" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["export", "--models", str(tiny_bundle), "-o", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(foreign) in err and "refusing to replace it" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "again").exists()


def test_an_edited_onnx_model_is_refused(onnx_bundle: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(onnx_bundle, tmp_path / "copy")
    with open(copy / "segmenter.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match="segmenter.onnx.*changed since cascade.json was written"):
        Predictor.from_dir(copy)


def test_a_fold_ensemble_exports_every_fold_model(tiny_bundle: Path, cases: dict[str, Path], tmp_path: Path) -> None:
    """Cross-validation bundles list several models of a kind (their probabilities averaged): each is
    exported at its own path, and the ONNX ensemble predicts what the Keras one does."""
    from pipeline.evaluation.bundle import Bundle

    folder = shutil.copytree(tiny_bundle, tmp_path / "folds_bundle")
    keras_bundle = read_bundle(folder)
    for kind in ("classifier", "segmenter"):
        (folder / "folds" / kind).mkdir(parents=True)
        for suffix in (".keras", ".json"):
            shutil.copyfile(folder / f"{kind}{suffix}", folder / "folds" / kind / f"fold_1{suffix}")
    dataclasses.replace(keras_bundle, classifiers=("classifier.keras", "folds/classifier/fold_1.keras"),
                        segmenters=("segmenter.keras", "folds/segmenter/fold_1.keras"), sha256={}).write(folder)
    export_bundle(folder, tmp_path / "folds_onnx")
    exported = read_bundle(tmp_path / "folds_onnx")
    assert exported.classifiers == ("classifier.onnx", "folds/classifier/fold_1.onnx")
    assert exported.segmenters == ("segmenter.onnx", "folds/segmenter/fold_1.onnx")
    assert isinstance(exported, Bundle)
    keras_predictor, onnx_predictor = Predictor.from_dir(folder), Predictor.from_dir(tmp_path / "folds_onnx")
    case = keras_predictor.read(find_inputs(cases["brats2021"])[0])
    theirs, ours = keras_predictor.predict_case(case), onnx_predictor.predict_case(case)
    assert theirs.mask.any() and dice(theirs.mask, ours.mask) >= MIN_DICE


def test_a_bundle_of_neighbouring_slices_predicts_and_exports(tiny_bundle: Path, cases: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """A 2.5-D segmenter (segmenter.context_slices 1: 9 input channels) in a bundle: predict gives each slice the
    neighbours of the whole volume, blank slices included, as evaluate's Cascade does; the ONNX export takes
    9 channels and predicts the same."""
    from pipeline.evaluation.cascade import Cascade
    from pipeline.models.nets import build_resunet
    from pipeline.models.training import save_model

    folder = shutil.copytree(tiny_bundle, tmp_path / "context_bundle")
    bundle = read_bundle(folder)
    keras.utils.set_random_seed(5)
    segmenter = build_resunet(64, (16, 32), in_channels=9)
    sidecar = {**json.loads((folder / "segmenter.json").read_text()), "context_slices": 1}
    save_model(segmenter, folder / "segmenter.keras", sidecar)
    dataclasses.replace(bundle, sha256={}).write(folder)
    predictor = Predictor.from_dir(folder)
    case = predictor.read(find_inputs(cases["brats2021"])[0])
    images = case.image.copy()
    images[len(images) // 2] = 0  # a blank slice inside the volume: skipped, yet still a neighbour
    found = predictor.predict_volume(images)
    assert found["blank"].tolist().count(True) >= 1
    scored = ~found["blank"]
    plain = Cascade(None, segmenter, 0.0).segment(images)  # the whole volume's neighbours
    assert np.allclose(found["seg_probabilities"][scored], plain[scored], atol=1e-4)  # batches differ: float noise
    assert not np.allclose(plain, np.asarray(segmenter.predict_on_batch(
        np.concatenate([images] * 3, axis=-1).astype(np.float32)))[..., 0], atol=1e-3)  # the context matters

    export_bundle(folder, tmp_path / "context_onnx")
    onnx_predictor = Predictor.from_dir(tmp_path / "context_onnx")
    assert onnx_predictor.cascade.segmenter.input_shape[-1] == 9
    onnx_found = onnx_predictor.predict_volume(images)
    assert np.abs(onnx_found["seg_probabilities"] - found["seg_probabilities"]).max() <= TOLERANCE
