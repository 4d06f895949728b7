"""The model bundle: a models/ folder that describes itself, so prediction reads nothing else.

    models/classifier.keras + classifier.json   the gate (training writes the sidecar)
    models/segmenter.keras  + segmenter.json    the delineation
    models/folds/<kind>/fold_<f>.keras + .json   split.folds > 1: fold models 1..k-1 (fold 0 is the file above)
    models/cascade.json                          written by ``evaluate``: the task spec (image size,
                                                 channels, intensity scaling, target region), the gate
                                                 threshold chosen on validation (or out-of-fold)
                                                 patients and the score it thresholds (the classifier's
                                                 probability, or the cascade's slice score), the
                                                 segmenter's pixel threshold, the
                                                 post-processing, the model files of each kind
                                                 (several: an ensemble, whose probabilities are
                                                 averaged) and the sha256 of every model file and
                                                 sidecar it lists

``python -m pipeline export -o DIR`` (``pipeline.export``) writes the same bundle with the models as ONNX
(each ``<name>.keras`` as ``<name>.onnx``; cascade.json "format": "onnx", its "models" naming them and its
sha256 theirs); the sidecars and everything else are the same.

Copy the folder anywhere and ``Predictor.from_dir(folder)`` predicts exactly as the workspace did,
whatever params.yaml or reports/ say there. The bundle is one unit: ``read_bundle`` refuses it when a
listed file is not the one ``evaluate`` chose the gate for (a retrained classifier, a sidecar edited
by hand), and a cascade.json without hashes (written before they were recorded): re-run ``evaluate``.
The bundle is exactly the files cascade.json lists; ``write`` removes temporaries that interrupted
runs left in the folder (``pipeline.writing``), and predict reads nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.data.regions import TARGETS
from pipeline.data.task import TaskSpec
from pipeline.errors import InputError
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.models.sidecar import load_sidecar
from pipeline.params import SLICE_SCORES
from pipeline.writing import atomic_path, remove_stale_temporaries

CLASSIFIER_FILE = "classifier.keras"
SEGMENTER_FILE = "segmenter.keras"
CASCADE_FILE = "cascade.json"
# Role -> the model file(s) of a single-split bundle; each model's sidecar JSON sits next to it (same stem).
MODELS: dict[str, str | list[str]] = {"classifier": CLASSIFIER_FILE, "segmenter": SEGMENTER_FILE}
# cascade.json "format" -> the suffix of its model files (a cascade.json without "format" is "keras").
FORMATS = {"keras": ".keras", "onnx": ".onnx"}
RERUN = "re-run `evaluate` (`dvc repro`) to choose the gate for the models there now"


@dataclass(frozen=True)
class Bundle:
    """What ``models/cascade.json`` holds. threshold: the gate on the slice score ``slice_score``, in [0, 1];
    seg_threshold: the segmenter's per-pixel probability threshold."""

    task: TaskSpec
    threshold: float
    threshold_rule: str
    seg_threshold: float
    post: PostProcessing
    classifiers: tuple[str, ...] = (CLASSIFIER_FILE,)  # model files in the folder; several: their mean
    segmenters: tuple[str, ...] = (SEGMENTER_FILE,)
    chosen_on: str = "val"  # "val", or "oof": out-of-fold predictions of the cross-validation folds
    # File name -> sha256 hex digest of each model file and sidecar (``bundle_files``) the gate was chosen for;
    # empty: hashed from the folder when written.
    sha256: dict[str, str] = field(default_factory=dict)
    format: str = "keras"  # a FORMATS key: what the model files are
    slice_score: str = "classifier"  # a SLICE_SCORES value: what the gate thresholds (bundles without one: classifier)

    @property
    def models(self) -> dict[str, list[str]]:
        return {"classifier": list(self.classifiers), "segmenter": list(self.segmenters)}

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task.to_json(),
                "gate": {"threshold": self.threshold, "rule": self.threshold_rule, "chosen_on": self.chosen_on,
                         "score": self.slice_score},
                "seg_threshold": self.seg_threshold, "postprocessing": asdict(self.post),
                "format": self.format, "models": self.models, "sha256": self.sha256}

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/cascade.json`` atomically with the sha256 of each listed model file and sidecar;
        returns its path. With ``sha256`` given (``evaluate`` hashes the files it loads, before scoring),
        InputError naming a file that no longer matches: it changed while the gate was being chosen."""
        folder = Path(folder)
        names = bundle_files(self.models)
        remove_stale_temporaries([folder / name for name in (*names, CASCADE_FILE)])
        now = file_hashes(folder, names)
        for name, digest in self.sha256.items():
            if now.get(name) != digest:
                raise InputError(folder / name, "changed while `evaluate` ran (the gate was chosen for the file "
                                                "as it was when evaluate started): run `evaluate` again")
        path = folder / CASCADE_FILE
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(dataclasses.replace(self, sha256=now).to_json(), indent=2) + "\n")
        return path


def bundle_files(models: dict[str, Any]) -> list[str]:
    """The files a bundle's "models" entry lists (role -> a path relative to the bundle folder, or a list
    of them), each followed by its sidecar JSON. ValueError for anything but relative paths inside it."""
    names = []
    for role, value in models.items():
        listed = [value] if isinstance(value, str) else value
        if not listed:
            raise ValueError(f"models.{role}: names no file")
        for name in listed:
            path = PurePosixPath(name) if isinstance(name, str) else None
            if path is None or path.is_absolute() or ".." in path.parts or str(path) in ("", ".") \
                    or "\\" in name:
                raise ValueError(f"models.{role}: {name!r} is not a path inside the bundle folder")
            names += [str(path), str(path.with_suffix(".json"))]
    return names


def file_hashes(folder: str | Path, names: list[str]) -> dict[str, str]:
    """sha256 hex digest of each of ``names`` in ``folder``, by name (missing files left out)."""
    found = {}
    for name in names:
        path = Path(folder) / name
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            found[name] = digest.hexdigest()
    return found


def check_hashes(folder: Path, bundle: Bundle) -> None:
    """InputError unless every file ``bundle`` (as read from cascade.json) lists has the sha256 it records:
    naming the file that changed, or cascade.json when it records none (written before hashes were recorded)."""
    path = folder / CASCADE_FILE
    recorded = bundle.sha256
    if not isinstance(recorded, dict) or not recorded:
        raise InputError(path, "records no sha256 of its model files (written by an older version), so nothing "
                               f"shows it was chosen for the models next to it: {RERUN}")
    names = bundle_files(bundle.models)
    now = file_hashes(folder, names)
    for name in names:
        if not (folder / name).is_file():
            raise InputError(folder / name, f"missing: {CASCADE_FILE} lists it; copy the whole model folder")
        if not (folder / name).resolve().is_relative_to(folder.resolve()):
            raise InputError(folder / name, "lies outside the model folder (a link?): a bundle is one folder")
        if name not in recorded:
            raise InputError(path, f"records no sha256 of {name}: {RERUN}")
        if now[name] != recorded[name]:
            if name.endswith(".keras"):
                check_model_file(folder / name)  # cut short by a copy: say so, not "changed"
            raise InputError(folder / name, f"changed since {CASCADE_FILE} was written (sha256 {now[name][:12]}…, "
                                            f"recorded {str(recorded[name])[:12]}…), so the bundle's gate threshold "
                                            f"and post-processing were chosen for another file: {RERUN}")


def read_bundle(folder: str | Path) -> Bundle:
    """Read ``folder/cascade.json`` and check the two models' sidecars agree with its task spec.
    InputError naming the file for anything missing or inconsistent."""
    folder = Path(folder)
    path = folder / CASCADE_FILE
    fmt, first = _format_and_first_models(path)
    for model in (folder / first[0], folder / first[1]):
        if not model.is_file():
            raise InputError(model, f"model file not found; a model folder holds {first[0]}, {first[1]} "
                                    "and cascade.json (`dvc repro` writes them)")
    try:
        raw = json.loads(path.read_text())
        rule = raw["gate"]["rule"]
        if not isinstance(rule, str):
            raise TypeError(f"gate rule {rule!r} is not a string")
        listed = raw.get("models", MODELS)
        if not isinstance(listed, dict) or set(listed) != {"classifier", "segmenter"}:
            raise ValueError(f"models must list the classifier and the segmenter files, got {listed!r}")
        names = bundle_files(listed)  # ValueError for a path outside the folder
        if len(set(names)) != len(names):
            raise ValueError("a model file is listed twice")
        files = [tuple([names] if isinstance(names, str) else names)  # one file name, or a list (an ensemble)
                 for names in (listed["classifier"], listed["segmenter"])]
        if len(files[0]) != len(files[1]):
            raise ValueError(f"{len(files[0])} classifiers but {len(files[1])} segmenters: one of each per fold")
        chosen_on = raw["gate"].get("chosen_on", "val")
        if chosen_on not in ("val", "oof"):
            raise ValueError(f"gate chosen_on {chosen_on!r} is not val or oof")
        slice_score = raw["gate"].get("score", "classifier")
        if slice_score not in SLICE_SCORES:
            raise ValueError(f"gate score {slice_score!r} is not one of {', '.join(SLICE_SCORES)}")
        bundle = Bundle(TaskSpec.from_json(raw["task"]), _fraction(raw["gate"]["threshold"], "gate threshold", path),
                        rule, _fraction(raw["seg_threshold"], "seg_threshold", path),
                        PostProcessing(**raw["postprocessing"]), *files,
                        chosen_on=chosen_on, sha256=raw.get("sha256") or {}, format=fmt, slice_score=slice_score)
    except FileNotFoundError:
        raise InputError(path, "missing: `evaluate` writes it (the gate threshold and task spec of these "
                               "models); run `dvc repro`") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(path, f"not a valid model bundle file ({type(e).__name__}: {e})") from None
    post = bundle.post
    if isinstance(post.min_component_px, bool) or not isinstance(post.min_component_px, int) \
            or post.min_component_px < 0 or not isinstance(post.keep_largest_component, bool) \
            or not isinstance(post.fill_holes, bool):
        raise InputError(path, f"postprocessing {asdict(post)} needs a whole min_component_px >= 0 and "
                               "true/false keep_largest_component and fill_holes")
    for name in (*bundle.classifiers, *bundle.segmenters):
        if not (folder / name).is_file():
            raise InputError(folder / name, f"model file listed in {CASCADE_FILE} not found")
    for name in (*bundle.classifiers, *bundle.segmenters):
        if PurePosixPath(name).suffix != FORMATS[fmt]:
            raise InputError(path, f"models: {name!r} is not a {FORMATS[fmt]} file (format {fmt})")
    for classifier, segmenter in zip(bundle.classifiers, bundle.segmenters, strict=True):
        task_from_sidecars(folder, expected=bundle.task, names=(classifier, segmenter))
    check_hashes(folder, bundle)
    return bundle


def _format_and_first_models(path: Path) -> tuple[str, tuple[str, str]]:
    """The format cascade.json at ``path`` names and its first classifier and segmenter file; the Keras
    bundle's files when it is missing, unreadable or lists them wrongly (``read_bundle`` then names the
    problem). InputError for a format not in FORMATS."""
    try:
        raw = json.loads(path.read_text())
        listed = raw.get("models") or MODELS
        bundle_files(listed)
        names = tuple(value if isinstance(value, str) else value[0]
                      for value in (listed["classifier"], listed["segmenter"]))
        fmt = raw.get("format", "keras")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return "keras", (CLASSIFIER_FILE, SEGMENTER_FILE)
    if fmt not in FORMATS:
        raise InputError(path, f"format {json.dumps(fmt)} is not one of {', '.join(FORMATS)}")
    return fmt, names


def _fraction(value: Any, name: str, path: Path) -> float:
    """A bundle field that must be a number in [0, 1]: true/false, strings and NaN are refused (InputError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(path, f"{name} {json.dumps(value)} is not a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise InputError(path, f"{name} {float(value)} is outside [0, 1]")
    return float(value)


def check_model_file(path: Path) -> None:
    """InputError naming ``path`` when it is empty or no complete .keras (zip) archive: cut short by an
    interrupted copy or save (Keras itself calls both "file not found")."""
    size = path.stat().st_size
    if size == 0:
        raise InputError(path, "empty model file (0 bytes): an interrupted copy or save? Copy or train it again")
    if not zipfile.is_zipfile(path):
        raise InputError(path, f"truncated or not a Keras file ({size} bytes, no complete .keras zip archive): "
                               "copy or train it again")


def task_from_sidecars(folder: str | Path, expected: TaskSpec | None = None,
                       names: tuple[str, str] = (CLASSIFIER_FILE, SEGMENTER_FILE)) -> TaskSpec:
    """The task spec the two models' sidecars agree on (input_size, channels, intensity); InputError
    naming the sidecar that disagrees with the other, or with ``expected``. Sidecars written before
    the intensity record read as {"mode": "as_stored"}. names: the classifier's and the segmenter's files."""
    specs = []
    for role, name in zip(("classifier", "segmenter"), names, strict=True):
        sidecar = load_sidecar(Path(folder) / name)
        where = (Path(folder) / name).with_suffix(".json")
        kind = sidecar.get("kind") or role  # sidecars record the model's role ("kind") since training wrote them
        if kind != role:
            raise InputError(where, f"describes a {kind!r} model, but {name} is the bundle's {role}")
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
    # The classifier gates on the whole tumour whatever the target; the segmenter's sidecar says which it is.
    target = load_sidecar(Path(folder) / names[1]).get("target", classifier.target)
    if target not in TARGETS:
        raise InputError(segmenter_json, f"target {target!r} is not one of {', '.join(TARGETS)}")
    classifier, segmenter = (dataclasses.replace(spec, target=target) for spec in (classifier, segmenter))
    if segmenter != classifier:
        raise InputError(segmenter_json, f"segmenter takes {_describe(segmenter)} but the classifier "
                                         f"{_describe(classifier)}")
    if expected is not None and classifier != expected:
        raise InputError(classifier_json, f"models take {_describe(classifier)} but {CASCADE_FILE} says "
                                          f"{_describe(expected)}")
    return classifier


def _describe(spec: TaskSpec) -> str:
    return f"{spec.image_size} px {','.join(spec.channels)} ({spec.intensity.get('mode')} intensities)"
