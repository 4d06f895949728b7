"""Classifier-gated segmentation: the one code path that evaluation and inference share.

The classifier scores every slice; slices scoring at or above the threshold are segmented; the others
get an empty mask. With ``slice_score`` "cascade" the gate thresholds the classifier's probability times
the segmenter's highest pixel probability on the slice (``cascade_slice_score``; every slice is then
segmented to score it): a slice is tumour when both models find it. Optional per-patient post-processing then cleans the 3D mask.
A segmenter with one output per region (data.target "regions") gives the whole tumour in its first
channel, which the gate, the threshold choice and the whole-tumour metrics use as they are; ``combine_regions``
makes the masks of every region: gated, post-processed whole tumour, each inner region cut to its parent.

The models are Keras models (``.keras``) or ONNX models run by ONNX Runtime (``.onnx``, see
``pipeline.evaluation.onnx_model``): ``load_model_file`` picks by the file's suffix, everything else is
shared. Keras is imported only to load a ``.keras`` file, so ONNX prediction runs without it.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.context import context_of, with_context
from pipeline.data.regions import nest
from pipeline.errors import InputError
from pipeline.evaluation.bundle import check_model_file
from pipeline.evaluation.metrics import predicted_positive
from pipeline.evaluation.onnx_model import ONNX_SUFFIX, load_onnx_model
from pipeline.evaluation.postprocess import PostProcessing, remove_small_components
from pipeline.models.padded import fixed_batches
from pipeline.models.registry import PIXEL_THRESHOLD
from pipeline.params import SLICE_SCORES

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


def gate(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Slices sent to the segmenter: bool [D] = probability >= threshold, compared as the metrics compare
    (``pipeline.evaluation.metrics.predicted_positive``: float64, the threshold never rounded to float32)."""
    return predicted_positive(probabilities, threshold)


def cascade_slice_score(probabilities: np.ndarray, seg_probabilities: np.ndarray) -> np.ndarray:
    """The cascade's tumour score of each slice, float32 [D]: the classifier's probability [D] times the
    segmenter's highest whole-tumour pixel probability on the slice (seg_probabilities float [D, H, W]).
    Out of fold on the 50 shared LGG patients it ranks slices better than either alone (README)."""
    seg = np.asarray(seg_probabilities, np.float32)
    seg_max = seg.max(axis=tuple(range(1, seg.ndim)), initial=0.0)  # [D]; D = 0 (no slices) gives []
    return np.asarray(probabilities, np.float32) * seg_max


def combine(seg_probabilities: np.ndarray, gated: np.ndarray, seg_threshold: float,
            post: PostProcessing | None = None) -> np.ndarray:
    """The cascade's mask of one patient.

    seg_probabilities: float [D, H, W] segmenter output (only gated slices need be filled in);
    seg_threshold: the segmenter's pixel threshold (the bundle's: evaluate.seg_threshold, by default its sidecar's).
    gated: bool [D]. Returns bool [D, H, W]: empty on slices the classifier rejected.
    """
    return gated_mask(seg_probabilities >= seg_threshold, gated, post)


def combine_regions(seg_probabilities: np.ndarray, gated: np.ndarray, seg_threshold: float, regions: tuple[str, ...],
                    post: PostProcessing | None = None) -> np.ndarray:
    """The cascade's masks of every region of one patient, nested.

    seg_probabilities: float [D, H, W, R], the segmenter's R region outputs (``regions``, whole tumour first);
    gated bool [D]. Returns bool [D, H, W, R]: channel 0 as ``combine`` gives it (post-processing included),
    every other region thresholded, gated, without components under post.min_component_px, and cut to its
    parent region (enhancing inside core inside whole: ``pipeline.data.regions.nest``).
    """
    masks = (np.asarray(seg_probabilities) >= seg_threshold) & np.asarray(gated, bool)[:, None, None, None]
    masks[..., 0] = combine(seg_probabilities[..., 0], gated, seg_threshold, post)
    if post is not None and post.min_component_px > 0:
        for i in range(1, masks.shape[-1]):
            masks[..., i] = remove_small_components(masks[..., i], post.min_component_px)
    return nest(masks, regions)


def gated_mask(seg_mask: np.ndarray, gated: np.ndarray, post: PostProcessing | None = None) -> np.ndarray:
    """``combine`` for a segmenter mask already thresholded: bool [D, H, W], gated bool [D] -> bool [D, H, W]."""
    mask = np.asarray(seg_mask, bool) & np.asarray(gated, bool)[:, None, None]
    return post.apply(mask) if post is not None else mask


def predict_in_batches(model: Any, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Run `model` (a keras.Model or an ``OnnxModel``) on uint8 [N, H, W, 3] images in float32 batches; returns
    the stacked outputs [N, ...].

    Every call to the model gets a full [batch_size, H, W, 3] batch (the last one zero-padded, the padding
    dropped from the output), so after the first batch no volume length triggers a new compilation.
    ``predict_on_batch`` rather than ``model(x)``: under JAX it runs Keras' one jitted predict step
    (cached per input shape), where a plain call dispatches op by op.
    """
    outputs = [np.asarray(model.predict_on_batch(batch))[:n] for batch, n in fixed_batches(images, batch_size)]
    if not outputs:
        shape = tuple(d for d in model.output_shape[1:])
        return np.zeros((0, *shape), np.float32)
    return np.concatenate(outputs).astype(np.float32)


def load_model_file(path: str | Path) -> Any:
    """A .keras model loaded in safe mode, or an ``.onnx`` one as an ``OnnxModel``; InputError naming the file
    when it is missing, empty, cut short or no model file at all (Keras itself calls all of these "file not found")."""
    path = Path(path)
    if path.suffix == ONNX_SUFFIX:
        return load_onnx_model(path)
    import keras

    import pipeline.models.nets  # noqa: F401  (registers the custom layers, losses and metrics)

    if not path.exists():
        raise InputError(path, "model file not found; train it with `dvc repro` first")
    if path.is_file():
        check_model_file(path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:  # a damaged archive, a foreign file
        raise InputError(path, f"not a readable .keras model ({type(e).__name__}: {e})") from None


def check_role(model: Any, role: str, path: str | Path) -> None:
    """InputError naming ``path`` unless ``model``'s output fits ``role``: a classifier gives one tumour
    probability per slice, [N, 1]; a segmenter a map of its input's size, one channel per region, [N, S, S, R]."""
    inputs, outputs = _shape(model.input_shape), _shape(model.output_shape)
    size = inputs[1:3] if inputs is not None and len(inputs) == 4 else ["S", "S"]
    channels = outputs[-1] if outputs is not None and len(outputs) == 4 and isinstance(outputs[-1], int) else 1
    expected = {"classifier": ["N", 1], "segmenter": ["N", *size, max(channels, 1)]}
    if outputs == expected[role]:
        return
    other = next(r for r in expected if r != role)
    swapped = f" (a {other}'s output: are the two model files swapped?)" if outputs == expected[other] else ""
    raise InputError(path, f"is not a {role}: it outputs {_describe(outputs)} for input {_describe(inputs)}, a "
                           f"{role} gives {_describe(expected[role])}{swapped}")


def check_segmenter_input(segmenter: Any, path: str | Path, channels: int) -> None:
    """InputError naming ``path`` unless the segmenter takes slices of ``channels`` channels (the classifier's), or
    a 2.5-D stack of 2n + 1 of them (``pipeline.data.context``)."""
    try:
        context_of(segmenter.input_shape[-1], channels)
    except (ValueError, TypeError) as e:
        raise InputError(path, f"{e} (the classifier's slices have {channels})") from None


def _shape(shape: object) -> list | None:
    """A Keras shape tuple as a list with "N" for the batch axis; None for several inputs or outputs."""
    if not isinstance(shape, tuple) or any(isinstance(d, (tuple, list)) for d in shape):
        return None
    return ["N", *shape[1:]]


def _describe(shape: list | None) -> str:
    return "several tensors" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


class MeanOfModels:
    """Fold models of one kind as one: ``predict_on_batch`` returns the mean of the members' outputs (the
    ensemble of cross-validation folds); ``members`` lists them, in fold order. Stands in for a
    keras.Model wherever the cascade only predicts (``predict_in_batches``); the first member stands
    for the others where a single network is needed (its input shape, its layers)."""

    def __init__(self, members: list[keras.Model]):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = list(members)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.mean([np.asarray(m.predict_on_batch(x), np.float32) for m in self.members], axis=0)

    def __getattr__(self, name: str):  # input_shape, output, layers, ...: the first member's
        if name == "members":  # not set yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(self.members[0], name)


def members(model: keras.Model | MeanOfModels) -> list[keras.Model]:
    """The networks behind a cascade's classifier or segmenter: its fold models, or the one model."""
    return list(model.members) if isinstance(model, MeanOfModels) else [model]


@dataclass
class Cascade:
    """A loaded classifier + segmenter pair with its operating point. Either may be a ``MeanOfModels``
    (cross-validation folds: their probabilities averaged)."""

    classifier: keras.Model  # or an OnnxModel (pipeline.evaluation.onnx_model): whatever load_model_file gave
    segmenter: keras.Model
    threshold: float
    seg_threshold: float = PIXEL_THRESHOLD  # evaluate sets evaluate.seg_threshold's, predict the bundle's
    post: PostProcessing = PostProcessing()
    batch_size: int = 16
    slice_score: str = "classifier"  # a SLICE_SCORES value: what the gate thresholds (evaluate chooses, the bundle says)

    def __post_init__(self) -> None:
        if self.slice_score not in SLICE_SCORES:
            raise ValueError(f"slice_score {self.slice_score!r} is not one of {', '.join(SLICE_SCORES)}")

    def gate_score(self, probabilities: np.ndarray, seg_probabilities: np.ndarray) -> np.ndarray:
        """What the gate thresholds, float32 [D]: the classifier's probabilities [D], or with ``slice_score``
        "cascade" those times the segmenter's highest pixel probability (seg_probabilities [D, H, W])."""
        if self.slice_score == "cascade":
            return cascade_slice_score(probabilities, seg_probabilities)
        return np.asarray(probabilities, np.float32)

    def score_and_segment(self, images: np.ndarray, regions: int | None = None, index: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Each slice's gate score float32 [D] (``slice_score``) and the segmenter's output on the slices that
        need it: float32 [D, H, W] (regions None: the whole tumour) or [D, H, W, R], zero where not gated.
        The segmenter runs on every slice for the "cascade" score, else on the gated ones only.
        images: one case's slices uint8 [D, H, W, 3]; index: int [N], only these slices are scored (D = N in
        what is returned), the others still being their neighbours for a 2.5-D segmenter (``segmenter_input``)."""
        images = np.asarray(images)
        rows = np.arange(len(images)) if index is None else np.asarray(index, np.int64)
        probabilities = self.classify(images if index is None else images[rows])
        run = np.ones(len(rows), bool) if self.slice_score == "cascade" else gate(probabilities, self.threshold)
        seg = np.zeros((len(rows), *images.shape[1:3], *(() if regions is None else (regions,))), np.float32)
        if run.any():
            seg[run] = self.segment(images, rows[run]) if regions is None else self.segment_regions(images, rows[run])
        if self.slice_score == "cascade":
            probabilities = self.gate_score(probabilities, seg if regions is None else seg[..., 0])
            seg[~gate(probabilities, self.threshold)] = 0.0
        return probabilities, seg

    @classmethod
    def load(cls, classifier_path: str | Path | Sequence[str | Path], segmenter_path: str | Path | Sequence[str | Path],
             threshold: float, **kwargs) -> Cascade:
        """Load both models (safe_mode) with the gate ``threshold``; ``kwargs`` set the other fields.
        A list of paths for a kind (fold models) loads them all as one ``MeanOfModels``. InputError naming
        the file for a missing, empty or truncated file, a model of the wrong role (``check_role``), or models
        of a kind that take different inputs (a segmenter's: the slice's channels, or a 2.5-D stack of them,
        ``check_segmenter_input``)."""
        models = []
        for role, paths in (("classifier", classifier_path), ("segmenter", segmenter_path)):
            loaded = []
            for path in [paths] if isinstance(paths, (str, Path)) else paths:
                model = load_model_file(path)
                check_role(model, role, path)
                if role == "segmenter":
                    check_segmenter_input(model, path, models[0].input_shape[-1])
                if loaded and model.input_shape != loaded[0].input_shape:
                    raise InputError(path, f"takes input {_describe(_shape(model.input_shape))}, the first {role} of "
                                           f"the ensemble {_describe(_shape(loaded[0].input_shape))}: fold models "
                                           "of one kind must be trained alike")
                loaded.append(model)
            models.append(loaded[0] if len(loaded) == 1 else MeanOfModels(loaded))
        return cls(models[0], models[1], float(threshold), **kwargs)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Tumour probability per slice: float32 [N] for uint8 [N, H, W, 3]."""
        return predict_in_batches(self.classifier, images, self.batch_size).reshape(len(images))

    def segment(self, images: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """Tumour probability per pixel: float32 [N, H, W] (first output channel: the whole tumour) of the slices
        ``index`` (int [N]; None: all) of one case's slices uint8 [D, H, W, 3] (``segmenter_input``)."""
        return self.segment_regions(images, index)[..., 0]

    def segment_regions(self, images: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """Every region's probability per pixel: float32 [N, H, W, R] (R: the segmenter's output channels), of the
        slices ``index`` as ``segment``."""
        return predict_in_batches(self.segmenter, self.segmenter_input(images, index), self.batch_size)

    def segmenter_input(self, images: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """What the segmenter takes for the slices ``index`` (None: all) of one case's slices uint8 [D, H, W, C]:
        those slices, or for a 2.5-D segmenter (input C x (2n + 1) channels) each with its n neighbours either
        side in ``images`` as channels (``pipeline.data.context``). So the neighbours come from the whole case,
        ``images`` must hold all of its slices, in slice order."""
        images = np.asarray(images)
        try:
            context = context_of(self.segmenter.input_shape[-1], images.shape[-1])
        except ValueError as e:
            raise ValueError(f"{e}: not this case's slices, [D, H, W, {images.shape[-1]}]") from None
        return with_context(images, context, index)

    @property
    def n_regions(self) -> int:
        """The segmenter's output channels: 1 (whole tumour) or one per region."""
        return int(self.segmenter.output_shape[-1])

    def predict_regions(self, images: np.ndarray, regions: tuple[str, ...], index: np.ndarray | None = None
                        ) -> dict[str, np.ndarray]:
        """``predict_volume`` for a segmenter with one output per region of ``regions``: probabilities float32 [D],
        gated bool [D], seg_probabilities float32 [D, H, W, R] (zero where not gated), region_masks bool
        [D, H, W, R] (``combine_regions``) and mask bool [D, H, W], the whole tumour."""
        probabilities, seg = self.score_and_segment(images, regions=len(regions), index=index)
        gated = gate(probabilities, self.threshold)
        masks = combine_regions(seg, gated, self.seg_threshold, regions, self.post)
        return {"probabilities": probabilities, "gated": gated, "seg_probabilities": seg, "region_masks": masks,
                "mask": masks[..., 0]}

    def predict_volume(self, images: np.ndarray, index: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Run the cascade on one patient's slices uint8 [D, H, W, 3] (index: int [N], these slices only, D = N
        below; ``score_and_segment``).

        Returns probabilities float32 [D] (the gate score, ``slice_score``), gated bool [D], seg_probabilities
        float32 [D, H, W] (zero where not gated) and mask bool [D, H, W] after post-processing.
        """
        probabilities, seg = self.score_and_segment(images, index=index)
        gated = gate(probabilities, self.threshold)
        mask = combine(seg, gated, self.seg_threshold, self.post)
        return {"probabilities": probabilities, "gated": gated, "seg_probabilities": seg, "mask": mask}
