"""Typed, validated view of params.yaml.

``load_params(path)`` returns a ``Params`` whose sections are frozen dataclasses. An unknown
key, a missing key or a bad value raises ``ParamsError`` naming the key and what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ParamsError
from pipeline.models.registry import BACKBONES, HEADS, LOSSES, SEGMENTERS
from pipeline.sequences import INTENSITIES, SEQUENCES, TARGETS, flair_channel

SOURCES = ("demo", "lgg", "brats2021", "brats2023", "decathlon")
# evaluate.threshold rules chosen on validation patients (besides sensitivity:X and a fixed number):
# slice-level Youden J or F1, or the gate that maximises the cascade's mean per-patient Dice.
THRESHOLD_RULES = ("youden", "f1", "patient_dice")
# evaluate.slice_score: what the gate thresholds (pipeline/evaluation/cascade.py, cascade_slice_score)
SLICE_SCORES = ("classifier", "cascade")
# evaluate.seg_threshold (besides a number): the segmenter's pixel threshold is the one it was trained with, or
# chosen with the gate on the validation (out-of-fold) patients (pipeline/evaluation/scoring.py, choose_seg_threshold)
SEG_THRESHOLD_RULES = ("trained", "auto")
# train.schedule: "fixed" trains exactly train.epochs with a poly-decaying learning rate and keeps the last
# weights; "early_stop" stops when the validation metric has not improved for `patience` epochs (halving the
# learning rate on plateaus) and keeps the best epoch's weights.
SCHEDULES = ("fixed", "early_stop")
CLASS_BALANCES = ("weights", "batches", "undersample", "none")  # classifier.class_balance (stages/train_classifier.py)
SEGMENTER_SAMPLING = ("uniform", "tumour_area")  # segmenter.sampling (pipeline/models/batches.py)
# train.mixed_precision -> the Keras dtype policy (float16 is for GPUs: ~4x slower than float32 on a CPU)
PRECISION_POLICIES = {False: "float32", True: "mixed_float16", "bfloat16": "mixed_bfloat16"}
MAX_IMAGE_SIZE = 1024  # pixels a side; kaggle_3m slices are 256, BraTS 240
MAX_CONTEXT_SLICES = 3  # segmenter.context_slices: neighbours either side (7 slices, 21 channels)


@dataclass(frozen=True)
class DataParams:
    source: str
    root: str
    image_size: int
    channels: tuple[str, ...]
    clip_percentiles: tuple[float, float]
    min_brain_fraction: float
    on_error: str
    intensity: str = "as_stored"  # kaggle_3m TIFFs: as_stored | per_volume (volumes are always per_volume)
    target: str = "whole_tumour"  # whole_tumour | regions (one segmenter output per region of pipeline.data.regions)

    def validate(self) -> None:
        _one_of("data.source", self.source, SOURCES)
        _one_of("data.target", self.target, TARGETS)
        _one_of("data.on_error", self.on_error, ("fail", "skip"))
        _one_of("data.intensity", self.intensity, INTENSITIES)
        if self.image_size < 32 or self.image_size % 32:
            raise ParamsError(f"data.image_size: {self.image_size} must be a multiple of 32, at least 32")
        if self.image_size > MAX_IMAGE_SIZE:  # checked here, not after hours of ingest and an out-of-memory kill
            raise ParamsError(f"data.image_size: {self.image_size} is too large (at most {MAX_IMAGE_SIZE}: a case's "
                              f"slices, training batches and the models' activations grow with its square)")
        if len(self.channels) != 3:
            raise ParamsError(f"data.channels: need exactly 3 sequences, got {list(self.channels)}")
        for c in self.channels:
            _one_of("data.channels", c, SEQUENCES)
        lo, hi = self.clip_percentiles
        if not 0 <= lo < hi <= 100:
            raise ParamsError(f"data.clip_percentiles: need 0 <= low < high <= 100, got {[lo, hi]}")
        _in_range("data.min_brain_fraction", self.min_brain_fraction, 0, 1)


@dataclass(frozen=True)
class DemoParams:
    patients: int
    slices_per_patient: int
    image_size: int
    seed: int

    def validate(self) -> None:
        if self.patients < 3:
            raise ParamsError(f"demo.patients: {self.patients} is too few for a train/val/test split")
        _in_range("demo.slices_per_patient", self.slices_per_patient, 4, 1000)
        _in_range("demo.image_size", self.image_size, 32, 1024)


@dataclass(frozen=True)
class SplitParams:
    train: float
    val: float
    test: float
    seed: int
    file: str | None = None  # a CSV (patient_id, split) to take the split from; None or "": the seeded random split
    folds: int = 1  # > 1: cross-validation folds over the non-test patients (pipeline.data.split.assign_folds)

    def validate(self) -> None:
        _in_range("split.folds", self.folds, 1, 100)
        for name in ("train", "val", "test"):
            _in_range(f"split.{name}", getattr(self, name), 0, 1)
        if abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ParamsError(f"split: train + val + test must be 1, got {self.train + self.val + self.test}")
        for name in ("train", "val", "test"):  # training needs train and val patients, evaluate test patients
            if getattr(self, name) <= 0 and not (name == "test" and self.folds > 1):  # folds: out-of-fold only
                raise ParamsError(f"split.{name}: {getattr(self, name)} must be above 0"
                                  + (" (0 only with split.folds > 1)" if name == "test" else ""))


@dataclass(frozen=True)
class TrainParams:
    lr: float
    epochs: int
    batch_size: int
    seed: int
    mixed_precision: bool | str  # false (float32) | true (float16 layers: GPUs) | "bfloat16" (CPUs with AVX512_BF16/AMX)
    schedule: str = "fixed"  # fixed | early_stop (see SCHEDULES)
    deterministic: bool = True  # the backend's deterministic ops (pipeline.models.training.enable_deterministic_ops)
    devices: int | str = "auto"  # data-parallel devices (JAX backend): auto = every local one; see models/devices.py
    average_last: float = 0.0  # fixed schedule: keep the mean of the weights after the last fraction of the epochs (0: the last)

    @property
    def precision_policy(self) -> str:
        """The Keras dtype policy ``train.mixed_precision`` names: float32, mixed_float16 or mixed_bfloat16."""
        return PRECISION_POLICIES[self.mixed_precision]

    def validate(self) -> None:
        _one_of("train.schedule", self.schedule, SCHEDULES)
        if self.mixed_precision not in PRECISION_POLICIES:
            raise ParamsError(f"train.mixed_precision: {self.mixed_precision!r} must be true, false or bfloat16")
        _in_range("train.lr", self.lr, 1e-8, 1)
        _in_range("train.epochs", self.epochs, 1, 10_000)
        _in_range("train.batch_size", self.batch_size, 1, 4096)
        if isinstance(self.average_last, bool) or not 0 <= self.average_last < 1:
            raise ParamsError(f"train.average_last: {self.average_last!r} must be a fraction of the epochs in [0, 1)")
        if self.average_last and self.schedule != "fixed":
            raise ParamsError("train.average_last averages the fixed schedule's last epochs; "
                              f"train.schedule is {self.schedule!r}")
        if self.devices != "auto" and not (isinstance(self.devices, int) and self.devices >= 1):
            raise ParamsError(f"train.devices: {self.devices!r} must be a number of devices (>= 1) or 'auto'")


@dataclass(frozen=True)
class AugmentParams:
    enabled: bool
    flip: bool
    rotate_deg: float
    shift: float
    zoom: float
    brightness: float
    contrast: float
    per_channel: bool = False  # brightness and contrast drawn for each channel (sequence) on its own
    missing_sequences: float = 0.0  # probability a slice shows kaggle_3m's fill of missing sequences (FLAIR in their place)

    def validate(self) -> None:
        _in_range("augment.rotate_deg", self.rotate_deg, 0, 180)
        _in_range("augment.missing_sequences", self.missing_sequences, 0, 1)
        for name in ("shift", "zoom", "brightness", "contrast"):
            _in_range(f"augment.{name}", getattr(self, name), 0, 0.5)


@dataclass(frozen=True)
class ClassifierParams:
    backbone: str
    weights: str
    dropout: float
    warmup_epochs: int
    unfreeze: int | str
    finetune_lr_scale: float
    class_balance: str
    patience: int
    localisation_weight: float = 0.0  # weight of the per-cell "is this tumour?" loss on the last conv map; 0 = off
    head: str = "average"  # average (pooling + dense) | max_cell (the slice scores as its most tumorous cell)

    def validate(self) -> None:
        _in_range("classifier.localisation_weight", self.localisation_weight, 0, 100)
        _one_of("classifier.head", self.head, HEADS)
        _one_of("classifier.backbone", self.backbone, tuple(BACKBONES))
        _one_of("classifier.class_balance", self.class_balance, CLASS_BALANCES)
        _in_range("classifier.dropout", self.dropout, 0, 0.95)
        if self.unfreeze != "all" and not (isinstance(self.unfreeze, int) and self.unfreeze >= 0):
            raise ParamsError(f"classifier.unfreeze: {self.unfreeze!r} must be a number of stages or 'all'")
        _in_range("classifier.finetune_lr_scale", self.finetune_lr_scale, 1e-6, 10)


@dataclass(frozen=True)
class SegmenterParams:
    filters: tuple[int, ...]
    loss: str
    tversky_alpha: float
    tversky_beta: float
    focal_gamma: float
    negative_fraction: float
    epochs_factor: float
    patience: int
    arch: str = "resunet"  # the architecture, one of pipeline.models.registry.SEGMENTERS (resunet | unet)
    sampling: str = "uniform"  # uniform (every slice once an epoch) | tumour_area (drawn by tumour area)
    deep_supervision: int = 0  # decoder levels under the top with a training-only head of their own (nets/deep_supervision.py)
    context_slices: int = 0  # 2.5-D input: the stored slices this many either side join as channels (pipeline/data/context.py)

    def validate(self) -> None:
        _in_range("segmenter.epochs_factor", self.epochs_factor, 0.01, 100)
        _one_of("segmenter.loss", self.loss, tuple(LOSSES))
        _one_of("segmenter.arch", self.arch, tuple(SEGMENTERS))
        if len(self.filters) < 2 or any(f < 1 for f in self.filters):
            raise ParamsError(f"segmenter.filters: need at least two positive widths, got {list(self.filters)}")
        if min(self.filters) < 16 and _onednn_cpu_kernels():
            raise ParamsError(f"segmenter.filters: {list(self.filters)}: widths below 16 corrupt the heap in "
                              "TensorFlow 2.21's oneDNN CPU kernels; use 16 or more, or set TF_ENABLE_ONEDNN_OPTS=0")
        _in_range("segmenter.negative_fraction", self.negative_fraction, 0, 1)
        _one_of("segmenter.sampling", self.sampling, SEGMENTER_SAMPLING)
        _in_range("segmenter.deep_supervision", self.deep_supervision, 0, len(self.filters) - 2)  # levels under the top
        _in_range("segmenter.context_slices", self.context_slices, 0, MAX_CONTEXT_SLICES)


@dataclass(frozen=True)
class EvaluateParams:
    threshold: str | float
    min_component_px: int
    keep_largest_component: bool | str  # true | false | "auto" (whichever scores higher on validation)
    bootstrap: int
    gradcam_per_group: int
    ig_steps: int
    seed: int
    gradcam_layer: str = "last"  # "last": the backbone's last convolutional map; or a layer name
    slice_score: str = "classifier"  # a SLICE_SCORES value
    seg_threshold: str | float = "trained"  # a SEG_THRESHOLD_RULES value or a pixel probability in (0, 1)
    fill_holes: bool | str = False  # true | false | "auto" (as keep_largest_component); absent: false, as before the step

    def validate(self) -> None:
        t = self.threshold
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            _in_range("evaluate.threshold", float(t), 0, 1)
        elif t not in THRESHOLD_RULES and not (isinstance(t, str) and t.startswith("sensitivity:")):
            raise ParamsError(f"evaluate.threshold: {t!r} must be {', '.join(THRESHOLD_RULES)}, sensitivity:<0..1> "
                              "or a number")
        elif isinstance(t, str) and t.startswith("sensitivity:"):
            try:
                _in_range("evaluate.threshold", float(t.split(":", 1)[1]), 0, 1)
            except ValueError:
                raise ParamsError(f"evaluate.threshold: {t!r}: the target sensitivity is not a number") from None
        if self.slice_score not in SLICE_SCORES:
            raise ParamsError(f"evaluate.slice_score: {self.slice_score!r} must be {' or '.join(SLICE_SCORES)}")
        t = self.seg_threshold
        if isinstance(t, bool) or not (t in SEG_THRESHOLD_RULES or isinstance(t, (int, float)) and 0 < t < 1):
            raise ParamsError(f"evaluate.seg_threshold: {t!r} must be {' or '.join(SEG_THRESHOLD_RULES)} or a number "
                              "between 0 and 1 (exclusive)")
        _in_range("evaluate.min_component_px", self.min_component_px, 0, MAX_IMAGE_SIZE ** 2)
        for key in ("keep_largest_component", "fill_holes"):
            value = getattr(self, key)
            if isinstance(value, str) and value != "auto":
                raise ParamsError(f"evaluate.{key}: {value!r} must be true, false or auto")
        _in_range("evaluate.bootstrap", self.bootstrap, 0, 1_000_000)
        _in_range("evaluate.gradcam_per_group", self.gradcam_per_group, 0, 1000)
        _in_range("evaluate.ig_steps", self.ig_steps, 2, 10_000)  # the trapezoid rule needs both path ends


@dataclass(frozen=True)
class Params:
    data: DataParams
    demo: DemoParams
    split: SplitParams
    train: TrainParams
    augment: AugmentParams
    classifier: ClassifierParams
    segmenter: SegmenterParams
    evaluate: EvaluateParams

    def validate(self) -> None:
        if self.evaluate.seg_threshold == "auto" and self.data.target != "whole_tumour":
            raise ParamsError("evaluate.seg_threshold: auto chooses the pixel threshold on the whole tumour's Dice, so "
                              f"it is for data.target whole_tumour, not {self.data.target!r}: use trained or a number")
        # before ingest, so a run that cannot train fails in a second (training checks the store's channels too)
        if self.augment.missing_sequences > 0 and flair_channel(self.data.channels) is None:
            raise ParamsError(f"augment.missing_sequences: {self.augment.missing_sequences} needs flair among "
                              f"data.channels (it fills the other sequences with it); got {list(self.data.channels)}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ParamsError on anything off."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"{path}: not valid YAML ({problem}{at})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: cannot read the params file ({e})") from None
    try:
        return params_from_dict(raw, str(path))
    except ParamsError as e:
        if str(e).startswith(f"{path}:"):
            raise
        raise ParamsError(f"{path}: {e}") from None


def params_from_dict(raw: Any, where: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping of sections")
    return _build(Params, raw, "")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix.rstrip('.') or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ParamsError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    optional = {f.name for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    missing = sorted(fields - optional - set(raw))
    if missing:
        raise ParamsError(f"{prefix}{missing[0]}: missing key")
    values = {name: _coerce(hints[name], raw[name], f"{prefix}{name}") for name in fields if name in raw}
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(option, value, key)
            except ParamsError:
                continue
        raise ParamsError(f"{key}: {value!r} is not a {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ParamsError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(a, v, key) for a, v in zip(args, value))
        return tuple(_coerce(item, v, key) for v in value)
    if tp is type(None):  # an optional key written as null
        if value is not None:
            raise ParamsError(f"{key}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        if not isinstance(value, (int, float)):
            # YAML reads 1e-4 (no dot) as a string; accept it when it parses as a number.
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ParamsError(f"{key}: expected a number, got {value!r}") from None
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected text, got {value!r}")
        return value
    raise ParamsError(f"{key}: unsupported type {tp}")


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ParamsError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")


def _in_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ParamsError(f"{key}: {value!r} is outside [{lo}, {hi}]")


def _onednn_cpu_kernels() -> bool:
    """Whether convolutions run in TensorFlow's oneDNN CPU kernels (TensorFlow backend, oneDNN not turned off)."""
    import keras  # here, not at the top: only this rare check needs the backend loaded

    return keras.config.backend() == "tensorflow" and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0"


def stage_reads(entries: Iterable[str | Path], params: Params) -> list[tuple[Path, str]]:
    """A stage's READS-style entries as paths, each with where it comes from: ``"${section.key}"`` is the
    params value ("params section.key"; left out when unset or empty), anything else itself ("READS")."""
    found = []
    for entry in entries:
        key = re.fullmatch(r"\$\{(\w+)\.(\w+)\}", str(entry))
        if key is None:
            found.append((Path(entry), "READS"))
            continue
        value = getattr(getattr(params, key[1]), key[2])
        if value not in (None, ""):
            found.append((Path(value), f"params {key[1]}.{key[2]}"))
    return found
