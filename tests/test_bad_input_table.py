"""docs/bad_inputs.md, row by row: every class of bad input and what the user sees (issue 13).

The rule: bad input gets one clear line naming the file and the problem, exit 2, no traceback, nothing
half-written, no input byte changed. Tolerated inputs (junk files, 0/1 masks, a prediction case without
ground truth) run through with exit 0 and do what the table says.

Each entry of CASES builds its input under tmp_path, runs the command in-process
(``pipeline.__main__.main``) with tmp_path as the working directory, and states the exit code and what
the one error line says. ``test_doc_table_lists_exactly_these_cases`` keeps the table and CASES in step.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from bad_files import junk, make_bad_entry, tree_digest, truncate, write_brats_case, write_compressed_tiff

import pipeline.models.nets  # noqa: F401  (registers the custom layers)
from pipeline.__main__ import main
from pipeline.evaluation.bundle import read_bundle
from pipeline.models.training import save_model
from pipeline.predict import OUTPUT_MARKER

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_inputs.md"
SIZE = 64  # px: stored slices, model input, kaggle_3m TIFFs
SLICES = 4
PATIENTS = ("TCGA_CS_4941_19960909", "TCGA_DU_5849_19950405", "TCGA_HT_7602_19951103")
RESCAN = "TCGA_CS_4941_20000101"  # a second scan of the first patient (split rows)
A, B = PATIENTS[0], PATIENTS[1]
BRATS = ("BraTS2021_00000", "BraTS2021_00002")
BRATS_SHAPE = (40, 40, 12)


# ------------------------------------------------------------------------------------------ inputs


def lgg_case(parent: Path, name: str, masks: bool = True, top: int = 255) -> Path:
    """A kaggle_3m case folder: SLICES RGB uint8 TIFFs at SIZE px with 0/``top`` masks, tumour in slices 2-3;
    every case's images differ (ingest warns about one image under two case ids)."""
    folder = parent / name
    folder.mkdir(parents=True)
    for n in range(1, SLICES + 1):
        image = np.zeros((SIZE, SIZE, 3), np.uint8)
        image[8:56, 10:54] = (60 + n, 90, 40 + sum(name.encode()) % 100)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if n in (2, 3):
            mask[20:30, 20:34] = top
            image[20:30, 20:34, 1] = 200
        tifffile.imwrite(folder / f"{name}_{n}.tif", image, photometric="rgb")
        if masks:
            tifffile.imwrite(folder / f"{name}_{n}_mask.tif", mask)
    return folder


def kaggle_root(tmp: Path, cases: tuple[str, ...] = PATIENTS, top: int = 255) -> Path:
    root = tmp / "kaggle_3m"
    root.mkdir()
    for name in cases:
        lgg_case(root, name, top=top)
    return root


def brats_case(parent: Path, name: str) -> Path:
    return write_brats_case(parent, name, BRATS_SHAPE, (6, 5, 1), np.s_[14:20, 12:18, 4:8])


def brats_root(tmp: Path) -> Path:
    root = tmp / "BraTS2021_Training_Data"
    for name in BRATS:
        brats_case(root, name)
    return root


def decathlon_root(tmp: Path) -> Path:
    root = tmp / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}))
    brain = np.zeros(BRATS_SHAPE, np.int16)
    brain[6:-6, 5:-5, 1:-1] = 1
    for name in ("BRATS_001", "BRATS_002"):
        image = np.stack([brain * 100 * k for k in range(1, 5)], axis=-1)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{name}.nii.gz")
        label = np.zeros(BRATS_SHAPE, np.uint8)
        label[14:20, 12:18, 4:8] = 1
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{name}.nii.gz")
    return root


def write_params(tmp: Path, data: dict | None = None, **sections: dict) -> Path:
    """tmp/params.yaml: the project's params.yaml with data.* and other sections updated."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update({"image_size": SIZE, **(data or {})})
    for section, values in sections.items():
        params[section].update(values)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ cases


@dataclass
class Run:
    """What a case runs: ``python -m pipeline ARGV`` in tmp_path; ``names``: what the error line names
    (``error: <names>: ...``); ``inputs``: trees that must stay byte-identical; ``allowed``: paths under
    tmp_path a failing run may still write (a complete run index listing the failure)."""

    argv: list[str]
    names: str = ""
    inputs: list[Path] = field(default_factory=list)
    allowed: tuple[str, ...] = ()
    out: Path | None = None  # predict: the -o folder


@dataclass(frozen=True)
class Case:
    stage: str  # ingest | split | params | predict: the section of the table
    build: Callable[..., Run]  # (tmp_path, models) -> Run
    exit: int
    message: str = ""  # regex: the one error line (exit 2)
    check: Callable[..., None] | None = None  # (tmp_path, run, caplog) -> None: what else the row says


def ingest(tmp: Path, root: Path, names: Path | str, **data) -> Run:
    params = write_params(tmp, {"source": data.pop("source", "lgg"), "root": str(root), **data})
    return Run(["ingest", "--params", str(params)], str(names), [root])


def broken_slice(how: str) -> Callable[..., Run]:
    def build(tmp: Path, models: Path) -> Run:
        root = kaggle_root(tmp)
        path = root / B / f"{B}_2.tif"
        if how in ("deflate", "lzw", "packbits"):
            image = np.zeros((SIZE, SIZE, 3), np.uint8)
            image[8:56, 10:54] = (62, 90, 70)
            write_compressed_tiff(path, image, how)
            truncate(path, 0.6)
        else:
            make_bad_entry(path, how)
        return ingest(tmp, root, path)
    return build


def lgg_damage(damage: str) -> Callable[..., Run]:
    def build(tmp: Path, models: Path) -> Run:
        root = kaggle_root(tmp)
        image, mask = root / B / f"{B}_3.tif", root / B / f"{B}_3_mask.tif"
        if damage == "no_mask":
            mask.unlink()
            named = image
        elif damage == "no_image":
            image.unlink()
            named = mask
        elif damage == "mask_values":
            bad = np.zeros((SIZE, SIZE), np.uint8)
            bad[20:30, 20:34] = 128
            bad[40:44, 40:44] = 255
            tifffile.imwrite(mask, bad)
            named = mask
        elif damage == "one_channel":
            tifffile.imwrite(image, np.full((SIZE, SIZE), 80, np.uint8))
            named = image
        elif damage == "other_case":
            named = root / B / f"{A}_{SLICES + 1}.tif"
            shutil.copy(root / A / f"{A}_1.tif", named)
        else:
            raise ValueError(damage)
        return ingest(tmp, root, named)
    return build


def unrecognised_root(tmp: Path, models: Path) -> Run:
    root = tmp / "downloads"
    (root / "scans").mkdir(parents=True)
    (root / "notes.txt").write_text("MRI from the scanner\n")
    return ingest(tmp, root, root)


def missing_root(tmp: Path, models: Path) -> Run:
    root = tmp / "kaggle_3m"
    return Run(ingest(tmp, root, root).argv, str(root))


def brats_damage(damage: str) -> Callable[..., Run]:
    def build(tmp: Path, models: Path) -> Run:
        root = brats_root(tmp)
        case = root / BRATS[1]
        seg = case / f"{BRATS[1]}_seg.nii.gz"
        if damage == "missing_modality":
            (case / f"{BRATS[1]}_t1ce.nii.gz").unlink()
            named = case
        elif damage == "truncated":
            named = case / f"{BRATS[1]}_flair.nii.gz"
            truncate(named, 0.5)
        elif damage == "orientation":
            flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # same shape and origin, the x axis running the other way
            nib.save(nib.Nifti1Image(np.asarray(nib.load(seg).dataobj), flip), seg)
            named = seg
        elif damage in ("complex", "huge_header"):
            named = case / f"{BRATS[1]}_t1.nii.gz"
            t1 = nib.load(named)
            if damage == "complex":
                nib.save(nib.Nifti1Image(np.asarray(t1.dataobj).astype(np.complex64), t1.affine), named)
            else:  # a corrupt header: 30000^3 voxels claimed, the data of 40x40x12
                raw = bytearray(nib.Nifti1Image(np.asarray(t1.dataobj), t1.affine).to_bytes())
                raw[42:48] = np.full(3, 30000, "<i2").tobytes()  # dim[1:4] (dim: int16[8] at byte 40)
                named.write_bytes(gzip.compress(bytes(raw)))
        elif damage == "unknown_label":
            labels = np.asarray(nib.load(seg).dataobj).copy()
            labels[15, 13, 5] = 3
            nib.save(nib.Nifti1Image(labels, np.eye(4)), seg)
            named = seg
        else:
            raise ValueError(damage)
        return ingest(tmp, root, named, source="brats2021")
    return build


def case_linked_into_store(tmp: Path, models: Path) -> Run:
    """A case folder of the root that is a link into data/slices/, which ingest is about to replace."""
    kept = lgg_case(tmp / "data" / "slices", A)  # e.g. data kept next to a previous store
    root = kaggle_root(tmp, (B, PATIENTS[2]))
    (root / A).symlink_to(kept, target_is_directory=True)
    return ingest(tmp, root, "data/slices")


def root_named_like_an_old_store(tmp: Path, models: Path) -> Run:
    """data.root is data/.slices.old, the name a replaced store used to be parked under (and deleted)."""
    (tmp / "data" / "slices").mkdir(parents=True)
    (tmp / "data" / "slices" / "manifest.csv").write_text("a previous store\n")
    root = tmp / "data" / ".slices.old"
    for name in PATIENTS:
        lgg_case(root, name)
    return ingest(tmp, root, root)


def root_kept(tmp: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    assert len(list((tmp / "data" / ".slices.old").rglob("*.tif"))) == 2 * SLICES * len(PATIENTS)
    assert (tmp / "data" / "slices" / "manifest.csv").read_text().startswith("patient_id")  # the new store
    assert not [p for p in (tmp / "data").iterdir() if p.name not in ("slices", ".slices.old")]


def decathlon_without_label(tmp: Path, models: Path) -> Run:
    root = decathlon_root(tmp)
    (root / "labelsTr" / "BRATS_002.nii.gz").unlink()
    return ingest(tmp, root, root / "imagesTr" / "BRATS_002.nii.gz", source="decathlon")


def skip_truncated(tmp: Path, models: Path) -> Run:
    run = broken_slice("deflate")(tmp, models)
    write_params(tmp, {"source": "lgg", "root": str(tmp / "kaggle_3m"), "on_error": "skip"})
    return run


def skipped_is_listed(tmp: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    case = tmp / "kaggle_3m" / B
    assert any(w.startswith(f"skipping {case}: {run.names}: not a readable TIFF (") for w in pipeline_warnings(caplog))
    skipped = pd.read_csv(tmp / "data" / "slices" / "skipped.csv")
    assert len(skipped) == 1 and skipped.path[0] == str(tmp / "kaggle_3m" / B), skipped
    assert skipped.reason[0].startswith(f"{run.names}: not a readable TIFF (truncated or corrupt"), skipped.reason[0]
    manifest = pd.read_csv(tmp / "data" / "slices" / "manifest.csv")
    assert sorted(manifest.patient_id.unique()) == [A, PATIENTS[2]]


def with_junk(tmp: Path, models: Path) -> Run:
    root = kaggle_root(tmp)
    junk(root, A)
    for name in PATIENTS:
        junk(root / name, f"{name}_1.tif")
    return ingest(tmp, root, "")


def pipeline_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("pipeline")]


def all_slices_stored(tmp: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    assert not pipeline_warnings(caplog), pipeline_warnings(caplog)
    manifest = pd.read_csv(tmp / "data" / "slices" / "manifest.csv")
    assert sorted(manifest.patient_id.unique()) == sorted(PATIENTS) and len(manifest) == len(PATIENTS) * SLICES
    assert manifest.has_tumour.sum() == 2 * len(PATIENTS)
    assert not (tmp / "data" / "slices" / "skipped.csv").exists() or pd.read_csv(
        tmp / "data" / "slices" / "skipped.csv").empty


def zero_one_masks(tmp: Path, models: Path) -> Run:
    return ingest(tmp, kaggle_root(tmp, top=1), "")


def same_as_0_255(tmp: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    all_slices_stored(tmp, run, caplog)
    manifest = pd.read_csv(tmp / "data" / "slices" / "manifest.csv")
    assert (manifest[manifest.has_tumour].tumour_pixels == 10 * 14).all()  # the 0/1 squares, as 0/255 would give


# --- split


def split_case(damage: str) -> Callable[..., Run]:
    """A slice store (4 scans of 3 patients) and a good data/split.csv from it, then a bad split.file."""

    def build(tmp: Path, models: Path) -> Run:
        root = kaggle_root(tmp, (*PATIENTS, RESCAN))
        write_params(tmp, {"source": "lgg", "root": str(root)})
        assert main(["ingest"]) == 0 and main(["split"]) == 0
        rows = {A: "train", RESCAN: "train", B: "val", PATIENTS[2]: "test"}
        if damage == "unknown":
            rows["TCGA_ZZ_9999_20000101"] = "test"
        elif damage == "missing":
            del rows[PATIENTS[2]]
        elif damage == "apart":
            rows[RESCAN] = "test"
        path = tmp / "my_split.csv"
        if damage != "absent":
            pd.DataFrame({"patient_id": list(rows), "split": list(rows.values())}).to_csv(path, index=False)
        params = write_params(tmp, {"source": "lgg", "root": str(root)}, split={"file": str(path)})
        return Run(["split", "--params", str(params)], str(path), [root, tmp / "data" / "slices"])

    return build


def split_file_is_its_output(tmp: Path, models: Path) -> Run:
    """split.file: data/split.csv, the stage's own output, edited by hand (an extra column, rows reordered)."""
    root = kaggle_root(tmp, (*PATIENTS, RESCAN))
    write_params(tmp, {"source": "lgg", "root": str(root)})
    assert main(["ingest"]) == 0 and main(["split"]) == 0
    mine = pd.read_csv(tmp / "data" / "split.csv").iloc[::-1].assign(note="checked by hand")
    mine.to_csv(tmp / "data" / "split.csv", index=False)
    params = write_params(tmp, {"source": "lgg", "root": str(root)}, split={"file": "data/split.csv"})
    return Run(["split", "--params", str(params)], "data/split.csv", [root, tmp / "data"])


def dead_pid() -> int:
    """The id of a process that has ended: what the temporary names of a killed run carry."""
    import subprocess

    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def split_after_killed_run(tmp: Path, models: Path) -> Run:
    """A split killed mid-write left data/.split.tmp-<pid>-<random>.csv next to data/split.csv."""
    run = split_case("apart")(tmp, models)
    params = write_params(tmp, {"source": "lgg", "root": str(tmp / "kaggle_3m")})
    (tmp / "data" / f".split.tmp-{dead_pid()}-k1ll.csv").write_text("patient_id,split\nTCGA_CS_4941_19960909,tr")
    return Run(["split", "--params", str(params)], "", [run.inputs[0]])


def temporaries_removed(tmp: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    assert not list((tmp / "data").glob(".split.tmp-*")), list((tmp / "data").iterdir())
    assert pd.read_csv(tmp / "data" / "split.csv").patient_id.nunique() == len(PATIENTS) + 1


def root_holds_the_store(tmp: Path, models: Path) -> Run:
    """data.root: data, the folder that holds data/slices, which ingest replaces."""
    root = tmp / "data"
    for name in PATIENTS:
        lgg_case(root, name)
    return ingest(tmp, root, root)


# --- params


def bad_params(text: str | None = None, **sections: dict) -> Callable[..., Run]:
    """A good kaggle_3m root and a params file with one bad value: ingest must not start."""

    def build(tmp: Path, models: Path) -> Run:
        root = kaggle_root(tmp)
        data = sections.get("data", {})
        others = {name: values for name, values in sections.items() if name != "data"}
        path = write_params(tmp, {"source": "lgg", "root": str(root), **data}, **others)
        if text is not None:
            path.write_text(path.read_text().replace("data:\n", text, 1))
        key = next((f": {s}.{k}" for s, values in sections.items() for k in values), "")
        return Run(["ingest", "--params", str(path)], f"{path}{key}", [root])  # the file, then the key

    return build


def unknown_key(tmp: Path, models: Path) -> Run:
    run = bad_params()(tmp, models)
    path = Path(run.argv[-1])
    params = yaml.safe_load(path.read_text())
    params["train"]["learning_rate"] = 1e-4  # train.lr is the key
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    run.names = f"{path}: train.learning_rate"
    return run


# --- predict


def predict(tmp: Path, models: Path, source: Path, out: Path, names: Path | str = "", **kw) -> Run:
    return Run(["predict", str(source), "-o", str(out), "--models", str(models)], str(names),
               [source if source.exists() else tmp / "scans", models], out=out, **kw)


def scans(tmp: Path, masks: bool = True) -> Path:
    folder = tmp / "scans"
    lgg_case(folder, A, masks=masks)
    return folder


def output_overlap(where: str) -> Callable[..., Run]:
    def build(tmp: Path, models: Path) -> Run:
        source = scans(tmp)
        out = {"equal": source, "inside": source / "predictions", "contains": tmp, "file": tmp / "predictions"}[where]
        if where == "file":
            out.write_text("my notes\n")
        return predict(tmp, models, source, out, out)
    return build


def foreign_case_folder(tmp: Path, models: Path) -> Run:
    source = scans(tmp)
    mine = tmp / "predictions" / A
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own work, not a prediction\n")
    return predict(tmp, models, source / A, tmp / "predictions", mine, allowed=("predictions/predictions.json",))


def failure_listed(tmp: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    """The one file a failed case leaves: the run index, listing the failure (the folder itself is untouched)."""
    index = json.loads((run.out / "predictions.json").read_text())
    assert [(c["status"], c["error"]) for c in index["cases"]] == [("failed", str(run.names) + ": " + (
        f"exists and was not written by predict (no {OUTPUT_MARKER} marker); refusing to replace it: move it away "
        "or choose another output folder"))], index


def no_bundle(tmp: Path, models: Path) -> Run:
    copy = shutil.copytree(models, tmp / "models")
    (copy / "cascade.json").unlink()
    run = predict(tmp, copy, scans(tmp), tmp / "predictions", copy / "cascade.json")
    return run


def bad_mask(tmp: Path, models: Path) -> Run:
    source = scans(tmp)
    tifffile.imwrite(source / A / f"{A}_2_mask.tif", np.full((SIZE, SIZE), 9, np.uint8))
    return predict(tmp, models, source, tmp / "predictions", source / A / f"{A}_2_mask.tif")


def no_masks(tmp: Path, models: Path) -> Run:
    return predict(tmp, models, scans(tmp, masks=False), tmp / "predictions")


def predicted_unlabelled(warning: str | None) -> Callable[..., None]:
    def check(tmp: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
        summary = json.loads((run.out / A / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["validation"] is None
        assert len(summary["slices"]) == SLICES and (run.out / A / OUTPUT_MARKER).is_file()
        index = json.loads((run.out / "predictions.json").read_text())
        assert index["validation"] is None, index
        warnings = pipeline_warnings(caplog)
        if warning is None:
            assert not warnings, warnings
        else:
            assert len(warnings) == 1 and re.search(warning, warnings[0]), warnings
            assert warnings[0].startswith(f"{run.names}: "), warnings
    return check


def bundle_damage(damage: str) -> Callable[..., Run]:
    """A copy of the bundle, then one thing wrong with it; "swapped" and "threshold_true" leave a cascade.json
    whose hashes match its files (as evaluate would have written it), so the other checks are what refuse."""

    def build(tmp: Path, models: Path) -> Run:
        copy = shutil.copytree(models, tmp / "models")
        bundle = read_bundle(copy)
        raw = json.loads((copy / "cascade.json").read_text())
        named = copy / "cascade.json"
        if damage == "retrained":  # train_classifier ran again, evaluate did not
            keras.utils.set_random_seed(1)
            model = keras.saving.load_model(copy / "classifier.keras", compile=False)
            model.layers[-1].set_weights([w + 0.5 for w in model.layers[-1].get_weights()])
            save_model(model, copy / "classifier.keras", json.loads((copy / "classifier.json").read_text()))
            named = copy / "classifier.keras"
        elif damage == "no_hashes":  # written before cascade.json recorded them
            raw.pop("sha256")
            (copy / "cascade.json").write_text(json.dumps(raw))
        elif damage == "swapped":  # segmenter.keras is in fact a classifier
            shutil.copy(copy / "classifier.keras", copy / "segmenter.keras")
            dataclasses.replace(bundle, sha256={}).write(copy)
            named = copy / "segmenter.keras"
        elif damage == "threshold_true":
            raw["gate"]["threshold"] = True
            (copy / "cascade.json").write_text(json.dumps(raw))
        elif damage in ("empty", "truncated"):  # an interrupted copy of the bundle
            named = copy / "segmenter.keras"
            named.write_bytes(b"" if damage == "empty" else named.read_bytes()[:4096])
        else:
            raise ValueError(damage)
        return predict(tmp, copy, scans(tmp), tmp / "predictions", named)

    return build


def partial_masks(damage: str) -> Callable[..., Run]:
    """A kaggle_3m case with some of its mask files missing, one mask without its image, or a dangling mask link."""

    def build(tmp: Path, models: Path) -> Run:
        source = scans(tmp)
        case = source / A
        if damage == "missing":
            for n in (1, 3):
                (case / f"{A}_{n}_mask.tif").unlink()
            named = case / f"{A}_1.tif"
        elif damage == "orphan":
            named = case / f"{A}_{SLICES + 1}_mask.tif"
            shutil.copy(case / f"{A}_2_mask.tif", named)
        elif damage == "dangling":
            named = case / f"{A}_3_mask.tif"
            named.unlink()
            named.symlink_to(tmp / "elsewhere" / named.name)
        else:
            raise ValueError(damage)
        return predict(tmp, models, source, tmp / "predictions", named)

    return build


def predicted_in_full(warning: str) -> Callable[..., None]:
    """Every slice predicted and its mask written; the case unscored, with the one warning."""
    unlabelled = predicted_unlabelled(warning)

    def check(tmp: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
        unlabelled(tmp, run, caplog)
        summary = json.loads((run.out / A / "summary.json").read_text())
        assert summary["outputs"]["masks"] == [f"{A}_{n}_mask.tif" for n in range(1, SLICES + 1)], summary["outputs"]
        assert all((run.out / A / name).is_file() for name in summary["outputs"]["masks"])

    return check


def after_killed_run(tmp: Path, models: Path) -> Run:
    """A predict killed mid-write left a half case folder and a half run index in OUT, and a training killed
    mid-save a half model file in the bundle folder."""
    out = tmp / "predictions"
    dead = dead_pid()
    (out / f".{A}.tmp-{dead}-h4lf").mkdir(parents=True)
    (out / f".{A}.tmp-{dead}-h4lf" / "summary.json").write_text("{")
    (out / f".predictions.tmp-{dead}-h4lf.json").write_text("{")
    copy = shutil.copytree(models, tmp / "models")
    (copy / f".classifier.tmp-{dead}-h4lf.keras").write_bytes(b"PK")
    return predict(tmp, copy, scans(tmp), out)


def leftovers_gone(tmp: Path, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    """OUT holds the case folder and the index only; the bundle's leftover is no part of what predict read."""
    assert sorted(p.name for p in run.out.iterdir()) == [A, "predictions.json"], list(run.out.iterdir())
    summary = json.loads((run.out / A / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["validation"] is not None
    assert sorted(Path(f).name for f in summary["model_files"].values()) == ["classifier.keras", "segmenter.keras"]


def dangling_output(tmp: Path, models: Path) -> Run:
    out = tmp / "predictions"
    out.symlink_to(tmp / "nowhere")
    return predict(tmp, models, scans(tmp), out, out)


def input_linked_into_output(tmp: Path, models: Path) -> Run:
    """A mask of the input is a link to a file of an earlier prediction folder (say, a pseudo-label): the
    new prediction would replace that folder and so change the input."""
    source = scans(tmp)
    out = tmp / "predictions"
    assert main(["predict", str(source / A), "-o", str(out), "--models", str(models)]) == 0
    mask = source / A / f"{A}_2_mask.tif"
    mask.unlink()
    mask.symlink_to(out / A / f"{A}_2_mask.tif")
    return predict(tmp, models, source / A, out, out / A, allowed=("predictions/predictions.json",))


def missing_input(tmp: Path, models: Path) -> Run:
    source = tmp / "scans" / "TCGA_CS_4941_1996"
    (tmp / "scans").mkdir()
    return predict(tmp, models, source, tmp / "predictions", source)


CASES: dict[str, Case] = {
    # --- ingest: kaggle_3m
    "tiff_truncated_deflate": Case("ingest", broken_slice("deflate"), 2, r"not a readable TIFF \(truncated or corrupt"),
    "tiff_truncated_lzw": Case("ingest", broken_slice("lzw"), 2, r"not a readable TIFF \(truncated or corrupt"),
    "tiff_truncated_packbits": Case("ingest", broken_slice("packbits"), 2, r"not a readable TIFF \(corrupted strip "),
    "image_without_mask": Case("ingest", lgg_damage("no_mask"), 2, r"image without mask \(no \S+_3_mask\.tif\)$"),
    "mask_without_image": Case("ingest", lgg_damage("no_image"), 2, r"mask without image \(no matching"),
    "mask_values": Case("ingest", lgg_damage("mask_values"), 2, r"mask values must be 0/255 or 0/1, got \[0, 128, 255\]$"),
    "one_channel_image": Case("ingest", lgg_damage("one_channel"), 2, r"expected 3 channels .* \(1 channels\)$"),
    "slice_of_another_case": Case("ingest", lgg_damage("other_case"), 2,
                                  rf"belongs to another case \({A}\), not to its folder {B}"),
    "dangling_symlink": Case("ingest", broken_slice("dangling_link"), 2, r"dangling link \(points to \S+, which does not exist\)$"),
    "symlink_loop": Case("ingest", broken_slice("symlink_loop"), 2, r"symlink loop"),
    "folder_as_slice": Case("ingest", broken_slice("folder"), 2, r"is a folder, not a file$"),
    "zero_byte_file": Case("ingest", broken_slice("empty"), 2, r"empty file \(0 bytes\)$"),
    "unrecognised_root": Case("ingest", unrecognised_root, 2, r"no kaggle_3m case folders \(TCGA_\*\) found$"),
    "missing_root": Case("ingest", missing_root, 2, r"no such folder$"),
    # --- ingest: BraTS 2021 and Decathlon
    "brats_missing_modality": Case("ingest", brats_damage("missing_modality"), 2,
                                   r"missing sequence t1gd: no <case>_t1ce \(or t1gd\)\.nii\.gz file$"),
    "brats_truncated_nifti": Case("ingest", brats_damage("truncated"), 2, r"not a readable NIfTI file \("),
    "brats_label_orientation": Case("ingest", brats_damage("orientation"), 2,
                                    r"geometry differs from \S+_t1\.nii\.gz: orientation LAS vs RAS \(the files of one case "
                                    r"must share one voxel grid; resample one onto the other\)$"),
    "brats_unknown_label": Case("ingest", brats_damage("unknown_label"), 2,
                                r"unexpected label values \[3\] \(declared: \[0, 1, 2, 4\]\)$"),
    "nifti_complex": Case("ingest", brats_damage("complex"), 2, r"voxel type complex64 is not a real number"),
    "nifti_huge_header": Case("ingest", brats_damage("huge_header"), 2,
                              r"header claims shape \(30000, 30000, 30000\) .*: not a brain MRI volume$"),
    "case_linked_into_store": Case("ingest", case_linked_into_store, 2, r"the slice store contains the input "),
    "root_holds_the_store": Case("ingest", root_holds_the_store, 2,
                                 r"`ingest` reads this \(params data\.root\) and would write data/slices inside it"),
    "root_named_like_an_old_store": Case("ingest", root_named_like_an_old_store, 0, check=root_kept),
    "decathlon_image_without_label": Case("ingest", decathlon_without_label, 2,
                                          r"image without label \(no labelsTr/ file of this name\)$"),
    # --- ingest: tolerated
    "on_error_skip": Case("ingest", skip_truncated, 0, check=skipped_is_listed),
    "hidden_files": Case("ingest", with_junk, 0, check=all_slices_stored),
    "masks_0_1": Case("ingest", zero_one_masks, 0, check=same_as_0_255),
    # --- split
    "split_file_missing": Case("split", split_case("absent"), 2, r"no such split file \(params\.yaml split\.file\)$"),
    "split_file_unknown_patient": Case("split", split_case("unknown"), 2,
                                       r"1 patient\(s\) not in the slice store: \['TCGA_ZZ_9999_20000101'\]"),
    "split_file_missing_patient": Case("split", split_case("missing"), 2,
                                       rf"1 patient\(s\) of the slice store not listed: \['{PATIENTS[2]}'\]"),
    "split_file_scans_apart": Case("split", split_case("apart"), 2,
                                   r"scans of one patient TCGA_CS_4941 are in different splits"),
    "split_file_is_its_output": Case("split", split_file_is_its_output, 2,
                                     r"`split` reads this \(params split\.file\) and would write data/split\.csv "
                                     r"over it; give split\.file a path apart from split's outputs"),
    "split_after_killed_run": Case("split", split_after_killed_run, 0, check=temporaries_removed),
    # --- params
    "params_ig_steps_0": Case("params", bad_params(evaluate={"ig_steps": 0}), 2, r"0 is outside \[2, 10000\]$"),
    "params_bootstrap_negative": Case("params", bad_params(evaluate={"bootstrap": -5}), 2,
                                      r"-5 is outside \[0, 1000000\]$"),
    "params_image_size_4096": Case("params", bad_params(data={"image_size": 4096}), 2,
                                   r"4096 is too large \(at most 1024"),
    "params_unknown_key": Case("params", unknown_key, 2, r"unknown key \(known: .*\blr\b"),
    "params_bad_yaml": Case("params", bad_params(text="data:\n  root: [unclosed\n"), 2, r"not valid YAML \(expected ',' or '\]'.* at line 3, column 9\)$"),
    # --- predict
    "predict_output_is_input": Case("predict", output_overlap("equal"), 2, r"output folder is the input "),
    "predict_output_inside_input": Case("predict", output_overlap("inside"), 2, r"output folder lies inside the input "),
    "predict_output_contains_input": Case("predict", output_overlap("contains"), 2,
                                          r"output folder contains the input "),
    "predict_output_is_a_file": Case("predict", output_overlap("file"), 2, r"the output path exists and is not a folder"),
    "predict_foreign_case_folder": Case("predict", foreign_case_folder, 2,
                                        r"exists and was not written by predict \(no \.pipeline-predict marker\)",
                                        check=failure_listed),
    "predict_no_bundle": Case("predict", no_bundle, 2, r"missing: `evaluate` writes it"),
    "predict_output_dangling_link": Case("predict", dangling_output, 2, r"the output path is a dangling link"),
    "predict_input_linked_into_output": Case("predict", input_linked_into_output, 2,
                                             r"case output folder contains the input \S+_2_mask\.tif"),
    "predict_missing_input": Case("predict", missing_input, 2, r"no such file or folder$"),
    "predict_bad_mask": Case("predict", bad_mask, 0, check=predicted_unlabelled(r"read without reference masks")),
    "predict_without_masks": Case("predict", no_masks, 0, check=predicted_unlabelled(None)),
    "predict_stale_bundle": Case("predict", bundle_damage("retrained"), 2,
                                 r"changed since cascade\.json was written \(sha256 \w+…, recorded \w+…\), so the "
                                 r"bundle's gate threshold and post-processing were chosen for another file: re-run "
                                 r"`evaluate` \(`dvc repro`\)"),
    "predict_bundle_without_hashes": Case("predict", bundle_damage("no_hashes"), 2,
                                          r"records no sha256 of its model files \(written by an older version\).*: "
                                          r"re-run `evaluate` \(`dvc repro`\)"),
    "predict_swapped_models": Case("predict", bundle_damage("swapped"), 2,
                                   rf"is not a segmenter: it outputs \[N, 1\] for input \[N, {SIZE}, {SIZE}, 3\], a "
                                   rf"segmenter gives \[N, {SIZE}, {SIZE}, 1\] \(a classifier's output: are the two "
                                   r"model files swapped\?\)$"),
    "predict_bundle_threshold_true": Case("predict", bundle_damage("threshold_true"), 2,
                                          r"gate threshold true is not a number in \[0, 1\]$"),
    "predict_empty_model": Case("predict", bundle_damage("empty"), 2, r"empty model file \(0 bytes\)"),
    "predict_truncated_model": Case("predict", bundle_damage("truncated"), 2,
                                    r"truncated or not a Keras file \(4096 bytes, no complete \.keras zip archive\)"),
    "predict_some_masks_missing": Case("predict", partial_masks("missing"), 0,
                                       check=predicted_in_full(r"image without mask .*read without reference masks$")),
    "predict_orphan_mask": Case("predict", partial_masks("orphan"), 0,
                                check=predicted_in_full(r"mask without image .*read without reference masks$")),
    "predict_dangling_mask": Case("predict", partial_masks("dangling"), 0,
                                  check=predicted_in_full(r"dangling link .*read without reference masks$")),
    "predict_after_killed_run": Case("predict", after_killed_run, 0, check=leftovers_gone),
}


# ------------------------------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def models(tiny_bundle: Path) -> Path:
    """The session's tiny model bundle (conftest.py: 64 px, LGG channel order, gate threshold 0)."""
    return tiny_bundle


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                   caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    models = request.getfixturevalue("models") if case.stage == "predict" else None
    run = case.build(tmp_path, models)
    capsys.readouterr()
    caplog.clear()
    inputs = {root: tree_digest(root) if root.is_dir() else None for root in run.inputs}
    before = tree_digest(tmp_path)

    code = main(run.argv)

    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and not [r for r in caplog.records if r.exc_info], stderr
    assert code == case.exit, stderr
    for root, digest in inputs.items():
        assert (tree_digest(root) if root.is_dir() else None) == digest, f"an input byte changed under {root}"
    if case.exit == 2:
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {run.names}: "), stderr
        assert re.search(case.message, lines[0]), lines[0]
        after = tree_digest(tmp_path)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        changed -= {k for k in changed if k not in before and after[k] == "dir"  # an empty parent (data/) is
                    and not any(v != "dir" for j, v in after.items() if j.startswith(f"{k}/"))}  # no output
        assert changed <= set(run.allowed), f"written or changed: {sorted(changed)}"
    else:
        assert not stderr, stderr
    if case.check is not None:
        case.check(tmp_path, run, caplog)


def doc_ids(text: str) -> list[str]:
    """The ids in the first column of the table rows of docs/bad_inputs.md."""
    return re.findall(r"^\|\s*`([a-z0-9_]+)`\s*\|", text, flags=re.MULTILINE)


def test_doc_table_lists_exactly_these_cases() -> None:
    ids = doc_ids(DOC.read_text())
    assert len(ids) == len(set(ids)), "an id appears twice in docs/bad_inputs.md"
    assert sorted(ids) == sorted(CASES), (sorted(set(ids) - set(CASES)), sorted(set(CASES) - set(ids)))
