"""The model bundle: a models/ folder that describes itself, so prediction reads nothing else.

    models/classifier.keras + classifier.json   the gate (training writes the sidecar)
    models/segmenter.keras  + segmenter.json    the delineation
    models/folds/<kind>/fold_<f>.keras + .json   split.folds > 1: fold models 1..k-1 (fold 0 is the file above)
    models/cascade.json                          written by ``evaluate``: the task spec (image size,
                                                 channels, intensity scaling, target region), the gate
                                                 threshold chosen on validation patients, the
                                                 segmenter's pixel threshold, the post-processing, and
                                                 the model files of each kind (several: an ensemble,
                                                 whose probabilities are averaged)

Copy the folder anywhere and ``Predictor.from_dir(folder)`` predicts exactly as the workspace did,
whatever params.yaml or reports/ say there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.data.task import TaskSpec
from pipeline.errors import InputError
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.models.training import load_sidecar
from pipeline.writing import atomic_path

CLASSIFIER_FILE = "classifier.keras"
SEGMENTER_FILE = "segmenter.keras"
CASCADE_FILE = "cascade.json"


@dataclass(frozen=True)
class Bundle:
    """What ``models/cascade.json`` holds. threshold: the gate on the classifier's probability, in [0, 1];
    seg_threshold: the segmenter's per-pixel probability threshold."""

    task: TaskSpec
    threshold: float
    threshold_rule: str
    seg_threshold: float
    post: PostProcessing
    classifiers: tuple[str, ...] = (CLASSIFIER_FILE,)  # model files in the folder; several: their mean
    segmenters: tuple[str, ...] = (SEGMENTER_FILE,)
    chosen_on: str = "val"  # "val", or "oof": out-of-fold predictions of the cross-validation folds

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task.to_json(),
                "gate": {"threshold": self.threshold, "rule": self.threshold_rule, "chosen_on": self.chosen_on},
                "seg_threshold": self.seg_threshold, "postprocessing": asdict(self.post),
                "models": {"classifier": list(self.classifiers), "segmenter": list(self.segmenters)}}

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/cascade.json`` atomically; returns its path."""
        path = Path(folder) / CASCADE_FILE
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def read_bundle(folder: str | Path) -> Bundle:
    """Read ``folder/cascade.json`` and check the two models' sidecars agree with its task spec.
    InputError naming the file for anything missing or inconsistent."""
    folder = Path(folder)
    path = folder / CASCADE_FILE
    for model in (folder / CLASSIFIER_FILE, folder / SEGMENTER_FILE):
        if not model.is_file():
            raise InputError(model, "model file not found; a model folder holds classifier.keras, segmenter.keras "
                                    "and cascade.json (`dvc repro` writes them)")
    try:
        raw = json.loads(path.read_text())
        listed = raw.get("models") or {}
        files = [tuple([names] if isinstance(names, str) else names)  # one file name, or a list (an ensemble)
                 for names in (listed.get("classifier", CLASSIFIER_FILE), listed.get("segmenter", SEGMENTER_FILE))]
        if not all(files) or not all(isinstance(name, str) for names in files for name in names):
            raise ValueError(f"models must name a file or a list of files of each kind, got {listed}")
        bundle = Bundle(TaskSpec.from_json(raw["task"]), float(raw["gate"]["threshold"]), str(raw["gate"]["rule"]),
                        float(raw["seg_threshold"]), PostProcessing(**raw["postprocessing"]), *files,
                        chosen_on=str(raw["gate"].get("chosen_on", "val")))
    except FileNotFoundError:
        raise InputError(path, "missing: `evaluate` writes it (the gate threshold and task spec of these "
                               "models); run `dvc repro`") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(path, f"not a valid model bundle file ({type(e).__name__}: {e})") from None
    for name, value in (("gate threshold", bundle.threshold), ("seg_threshold", bundle.seg_threshold)):
        if not 0.0 <= value <= 1.0:
            raise InputError(path, f"{name} {value} is outside [0, 1]")
    post = bundle.post
    if isinstance(post.min_component_px, bool) or not isinstance(post.min_component_px, int) \
            or post.min_component_px < 0 or not isinstance(post.keep_largest_component, bool):
        raise InputError(path, f"postprocessing {asdict(post)} needs a whole min_component_px >= 0 and a "
                               "true/false keep_largest_component")
    for name in (*bundle.classifiers, *bundle.segmenters):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(path, f"model file {name!r} must be a path inside the model folder")
        if not (folder / name).is_file():
            raise InputError(folder / name, f"model file listed in {CASCADE_FILE} not found")
    task_from_sidecars(folder, expected=bundle.task)
    for classifier, segmenter in zip(bundle.classifiers[1:], bundle.segmenters[1:], strict=False):
        task_from_sidecars(folder, expected=bundle.task, names=(classifier, segmenter))
    return bundle


def task_from_sidecars(folder: str | Path, expected: TaskSpec | None = None,
                       names: tuple[str, str] = (CLASSIFIER_FILE, SEGMENTER_FILE)) -> TaskSpec:
    """The task spec the two models' sidecars agree on (input_size, channels, intensity); InputError
    naming the sidecar that disagrees with the other, or with ``expected``. Sidecars written before
    the intensity record read as {"mode": "as_stored"}. names: the classifier's and the segmenter's files."""
    specs = []
    for name in names:
        sidecar = load_sidecar(Path(folder) / name)
        where = (Path(folder) / name).with_suffix(".json")
        size = sidecar.get("input_size")
        try:
            if not isinstance(size, int):
                raise ValueError(f"input_size must be a whole number of pixels, got {size!r}")
            spec = TaskSpec.from_json({"image_size": size, "channels": sidecar.get("channels") or [],
                                       "intensity": sidecar.get("intensity") or {"mode": "as_stored"}})
        except (ValueError, TypeError) as e:
            raise InputError(where, str(e)) from None
        specs.append((spec, where))
    (classifier, classifier_json), (segmenter, segmenter_json) = specs
    if segmenter != classifier:
        raise InputError(segmenter_json, f"segmenter takes {_describe(segmenter)} but the classifier "
                                         f"{_describe(classifier)}")
    if expected is not None and classifier != expected:
        raise InputError(classifier_json, f"models take {_describe(classifier)} but {CASCADE_FILE} says "
                                          f"{_describe(expected)}")
    return classifier


def _describe(spec: TaskSpec) -> str:
    return f"{spec.image_size} px {','.join(spec.channels)} ({spec.intensity.get('mode')} intensities)"
