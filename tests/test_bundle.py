"""The model bundle (models/cascade.json + sidecars) and the task spec: one source for prediction."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.regions import REGIONS
from pipeline.data.task import TaskSpec, target_mask
from pipeline.errors import InputError
from pipeline.evaluation.bundle import Bundle, read_bundle
from pipeline.evaluation.postprocess import PostProcessing

TASK = TaskSpec(128, ("t1", "flair", "t1gd"), {"mode": "per_volume", "clip_percentiles": [0.5, 99.5]})


def _bundle_dir(tmp_path: Path, task: TaskSpec = TASK) -> Path:
    """A folder with placeholder model files, sidecars that match ``task``, and cascade.json."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("classifier", "segmenter"):
        (folder / f"{name}.keras").write_bytes(b"placeholder")
        (folder / f"{name}.json").write_text(json.dumps({"input_size": task.image_size, "channels": list(task.channels),
                                                         "intensity": task.intensity}))
    Bundle(task, 0.42, "youden", 0.5, PostProcessing(10, True)).write(folder)
    return folder


def test_bundle_round_trip(tmp_path: Path) -> None:
    bundle = read_bundle(_bundle_dir(tmp_path))
    assert bundle.task == TASK and bundle.threshold == 0.42 and bundle.threshold_rule == "youden"
    assert bundle.post == PostProcessing(10, True) and bundle.seg_threshold == 0.5
    assert bundle.slice_score == "classifier"


def test_hole_filling_round_trips_and_an_old_bundle_reads_without_it(tmp_path: Path) -> None:
    folder = _bundle_dir(tmp_path)
    Bundle(TASK, 0.42, "youden", 0.5, PostProcessing(0, True, fill_holes=True)).write(folder)
    assert read_bundle(folder).post.fill_holes
    raw = json.loads((folder / "cascade.json").read_text())
    del raw["postprocessing"]["fill_holes"]  # written before the step existed
    (folder / "cascade.json").write_text(json.dumps(raw))
    assert read_bundle(folder).post == PostProcessing(0, True, fill_holes=False)


def test_the_gate_score_round_trips_and_an_old_bundle_reads_as_classifier(tmp_path: Path) -> None:
    folder = _bundle_dir(tmp_path)
    Bundle(TASK, 0.42, "patient_dice", 0.5, PostProcessing(), slice_score="cascade").write(folder)
    assert json.loads((folder / "cascade.json").read_text())["gate"]["score"] == "cascade"
    assert read_bundle(folder).slice_score == "cascade"
    raw = json.loads((folder / "cascade.json").read_text())
    del raw["gate"]["score"]  # written before the score was recorded
    (folder / "cascade.json").write_text(json.dumps(raw))
    assert read_bundle(folder).slice_score == "classifier"


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("gate"), "not a valid model bundle file"),
    (lambda b: b["gate"].update(threshold=1.5), "outside"),
    (lambda b: b["task"].update(channels=["t1", "flair"]), "3 channels"),
    (lambda b: b["task"].update(regions={"tumour": [4]}), "target regions"),
    (lambda b: b["task"].update(regions=["whole_tumour", "tumour_core"]), "target regions"),
    (lambda b: b["task"].update(target="core"), "target 'core'"),
    (lambda b: b["task"].update(image_size=256), "models take 128 px"),
    (lambda b: b["task"].update(image_size=2048), "not a multiple of 32 pixels up to 1024"),
    (lambda b: b["task"]["intensity"].update(mode="as_stored"), "per_volume intensities"),
    (lambda b: b["task"].update(intensity=None), "as_stored intensities"),
    (lambda b: b["task"]["intensity"].update(mode="zscore"), "intensity mode 'zscore'"),
    (lambda b: b["task"]["intensity"].update(clip_percentiles=[1, 2, 3]), "clip_percentiles"),
    (lambda b: b.update(seg_threshold=2), "seg_threshold 2.0 is outside"),
    (lambda b: b["postprocessing"].update(min_component_px="5"), "postprocessing"),
    (lambda b: b["postprocessing"].update(fill_holes="yes"), "true/false keep_largest_component and fill_holes"),
    (lambda b: b["postprocessing"].update(holes=True), "not a valid model bundle file"),
    (lambda b: b["gate"].update(threshold=True), "gate threshold true is not a number in"),
    (lambda b: b["gate"].update(threshold="0.5"), r'gate threshold "0.5" is not a number in'),
    (lambda b: b["gate"].update(threshold=None), "gate threshold null is not a number in"),
    (lambda b: b.update(seg_threshold=False), "seg_threshold false is not a number in"),
    (lambda b: b["gate"].update(rule=3), "gate rule 3 is not a string"),
    (lambda b: b.pop("sha256"), r"records no sha256 of its model files .*re-run `evaluate` \(`dvc repro`\)"),
    (lambda b: b["sha256"].pop("segmenter.json"), "records no sha256 of segmenter.json"),
    (lambda b: b["models"].update(segmenter="../segmenter.keras"), "is not a path inside the bundle folder"),
    (lambda b: b.update(models={}), "models must list the classifier and the segmenter files"),
    (lambda b: b["models"].update(classifier=["classifier.keras", "classifier.keras"]), "listed twice"),
    (lambda b: b["models"].update(classifier=["classifier.keras", "other.keras"]), "2 classifiers but 1 segmenters"),
    (lambda b: b["gate"].update(chosen_on=["x"]), "chosen_on"),
    (lambda b: b["gate"].update(score="segmenter"), "gate score 'segmenter' is not one of classifier, cascade"),
])
def test_bad_bundle_is_one_line_naming_the_file(change, message: str, tmp_path: Path) -> None:
    folder = _bundle_dir(tmp_path)
    raw = json.loads((folder / "cascade.json").read_text())
    change(raw)
    (folder / "cascade.json").write_text(json.dumps(raw))
    with pytest.raises(InputError, match=message) as error:
        read_bundle(folder)
    assert str(folder) in str(error.value) and "\n" not in str(error.value)


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    folder = _bundle_dir(tmp_path)
    (folder / "segmenter.json").write_text("[1, 2")
    with pytest.raises(InputError, match="segmenter.json: not a readable model sidecar"):
        read_bundle(folder)
    (folder / "segmenter.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="segmenter.json: not a model sidecar"):
        read_bundle(folder)
    (folder / "cascade.json").write_text("{not json")
    with pytest.raises(InputError, match="cascade.json: not a valid"):
        read_bundle(folder)
    (folder / "cascade.json").unlink()
    with pytest.raises(InputError, match="cascade.json: missing"):
        read_bundle(folder)
    (folder / "segmenter.keras").unlink()
    with pytest.raises(InputError, match="segmenter.keras: model file not found"):
        read_bundle(folder)


def test_target_mask_is_every_nonzero_label_for_the_tumour_region() -> None:
    labels = np.array([[0, 1, 3], [7, 0, 1]], np.uint8)  # the pipeline's region map (pipeline.data.regions)
    np.testing.assert_array_equal(target_mask(labels), labels > 0)
    np.testing.assert_array_equal(target_mask(labels, "enhancing_tumour"), labels == 7)
    assert TaskSpec(64, ("t1", "flair", "t1gd"), {}).regions == ("whole_tumour",)
    assert TaskSpec(64, ("t1", "flair", "t1gd"), {}, "regions").regions == REGIONS


def test_a_bundle_from_before_the_regions_reads_as_whole_tumour() -> None:
    old = {"image_size": 64, "channels": ["t1", "flair", "t1gd"], "intensity": None, "target": "tumour",
           "regions": {"tumour": None}}
    assert TaskSpec.from_json(old).target == "whole_tumour"
    spec = TaskSpec(64, ("t1", "flair", "t1gd"), {"mode": "as_stored", "clip_percentiles": None}, "regions")
    assert TaskSpec.from_json(spec.to_json()) == spec


# --- issue 22: a bundle that cannot lie


def _dead_pid() -> int:
    """The id of a process that has ended (what a killed run's temporary names carry)."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_bundle_records_the_sha256_of_each_model_file_and_sidecar(tmp_path: Path) -> None:
    folder = _bundle_dir(tmp_path)
    raw = json.loads((folder / "cascade.json").read_text())
    names = ["classifier.keras", "classifier.json", "segmenter.keras", "segmenter.json"]
    assert raw["sha256"] == {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}
    assert read_bundle(folder).sha256 == raw["sha256"]


@pytest.mark.parametrize("name", ["classifier.keras", "classifier.json", "segmenter.keras", "segmenter.json"])
def test_a_model_file_changed_after_evaluate_is_refused_naming_it(name: str, tmp_path: Path) -> None:
    """A retrained classifier (or an edited sidecar) with the old cascade.json: the gate was chosen for another file."""
    folder = _bundle_dir(tmp_path)
    path = folder / name
    if name.endswith(".json"):
        path.write_bytes(path.read_bytes().replace(b"}", b', "retrained": true}'))
    else:
        with zipfile.ZipFile(path, "w") as archive:  # a whole .keras archive, of other weights
            archive.writestr("model.weights.h5", "retrained")
    with pytest.raises(InputError) as error:
        read_bundle(folder)
    message = str(error.value)
    assert message.startswith(f"{path}: changed since cascade.json was written"), message
    assert "re-run `evaluate` (`dvc repro`)" in message and "\n" not in message


@pytest.mark.parametrize("damage, message", [
    ("empty", r"empty model file \(0 bytes\)"),
    ("truncated", r"truncated or not a Keras file \(\d+ bytes, no complete \.keras zip archive\)"),
])
def test_a_cut_short_model_file_says_so(damage: str, message: str, tmp_path: Path) -> None:
    folder = _bundle_dir(tmp_path)
    path = folder / "segmenter.keras"
    with zipfile.ZipFile(path, "w") as archive:  # a real archive, then cut short as an interrupted copy leaves it
        archive.writestr("config.json", "{}" * 2000)
    Bundle(TASK, 0.42, "youden", 0.5, PostProcessing(10, True)).write(folder)
    path.write_bytes(b"" if damage == "empty" else path.read_bytes()[:200])
    with pytest.raises(InputError, match=f"^{path}: {message}") as error:
        read_bundle(folder)
    assert "not found" not in str(error.value)


def test_a_sidecar_of_the_other_role_is_refused(tmp_path: Path) -> None:
    folder = _bundle_dir(tmp_path)
    sidecar = json.loads((folder / "segmenter.json").read_text())
    (folder / "segmenter.json").write_text(json.dumps({**sidecar, "kind": "classifier"}))
    with pytest.raises(InputError, match=r"segmenter.json: describes a 'classifier' model, but segmenter.keras is the "
                                         r"bundle's segmenter$"):
        read_bundle(folder)


def test_evaluate_refuses_to_write_a_bundle_for_files_that_changed_while_it_ran(tmp_path: Path) -> None:
    folder = _bundle_dir(tmp_path)
    chosen_for = read_bundle(folder).sha256  # as evaluate hashes the models it loads
    before = (folder / "cascade.json").read_text()
    with zipfile.ZipFile(folder / "classifier.keras", "w") as archive:
        archive.writestr("model.weights.h5", "retrained meanwhile")
    with pytest.raises(InputError, match=r"classifier.keras: changed while `evaluate` ran"):
        Bundle(TASK, 0.3, "youden", 0.5, PostProcessing(), sha256=chosen_for).write(folder)
    assert (folder / "cascade.json").read_text() == before


def test_writing_the_bundle_removes_what_killed_runs_left_in_the_folder(tmp_path: Path) -> None:
    """A copy of models/ after evaluate carries no temporary of an interrupted training or evaluate; a live
    run's temporaries (this process's id) and other files are left alone."""
    folder = _bundle_dir(tmp_path)
    dead = _dead_pid()
    stale = [folder / f".classifier.tmp-{dead}-x1y2.keras", folder / f".segmenter.tmp-{dead}-abcd.json",
             folder / f".cascade.tmp-{dead}-q.json", folder / ".segmenter.tmp-oldstyle.keras"]
    live = folder / f".classifier.tmp-{os.getpid()}-live.keras"
    notes = folder / "notes.txt"
    for path in (*stale, live, notes):
        path.write_bytes(b"x")
    Bundle(TASK, 0.42, "youden", 0.5, PostProcessing(10, True)).write(folder)
    assert not [p for p in stale if p.exists()] and live.exists() and notes.exists()
    assert read_bundle(folder).threshold == 0.42


def test_a_listed_file_that_links_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    """The bundle is one folder: a listed path inside it that is a link to a file elsewhere is refused."""
    folder = _bundle_dir(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for name in ("segmenter.keras", "segmenter.json"):
        (folder / name).rename(outside / name)
        (folder / name).symlink_to(outside / name)
    with pytest.raises(InputError, match="lies outside the model folder"):
        read_bundle(folder)
