"""The model bundle (models/cascade.json + sidecars) and the task spec: one source for prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.task import TARGET_REGIONS, TaskSpec, target_mask
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


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("gate"), "not a valid model bundle file"),
    (lambda b: b["gate"].update(threshold=1.5), "outside"),
    (lambda b: b["task"].update(channels=["t1", "flair"]), "3 channels"),
    (lambda b: b["task"].update(regions={"tumour": [4]}), "target regions"),
    (lambda b: b["task"].update(image_size=256), "models take 128 px"),
    (lambda b: b["task"]["intensity"].update(mode="as_stored"), "per_volume intensities"),
    (lambda b: b["task"].update(intensity=None), "as_stored intensities"),
    (lambda b: b["task"]["intensity"].update(mode="zscore"), "intensity mode 'zscore'"),
    (lambda b: b["task"]["intensity"].update(clip_percentiles=[1, 2, 3]), "clip_percentiles"),
    (lambda b: b.update(seg_threshold=2), "seg_threshold 2.0 is outside"),
    (lambda b: b["postprocessing"].update(min_component_px="5"), "postprocessing"),
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
    labels = np.array([[0, 1, 2], [4, 0, 3]], np.uint8)  # BraTS 1/2/4 and Decathlon 1/2/3 alike
    np.testing.assert_array_equal(target_mask(labels), labels > 0)
    assert TARGET_REGIONS == {"tumour": None}
