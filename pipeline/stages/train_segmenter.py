"""Stage `train_segmenter`: train the segmenter (segmenter.arch: ResUNet, U-Net ...) on tumour-positive slices
-> models/segmenter.keras (with split.folds > 1, one per fold: ``pipeline.paths.fold_model``), one sigmoid
output per region of data.target (whole tumour; or every region)."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pandas as pd

from pipeline.data.regions import target_regions
from pipeline.data.slices import SliceStore
from pipeline.models.batches import SliceBatches
from pipeline.models.losses import get_loss
from pipeline.models.nets.deep_supervision import DeepSupervisedLoss, with_deep_supervision
from pipeline.models.nets.segmenter import PIXEL_THRESHOLD, build_segmenter
from pipeline.models.registry import SEGMENTERS
from pipeline.models.seg_metrics import DiceAt, IoUAt
from pipeline.models.training import (
    TrainingRun,
    save_model,
    set_batchnorm_momentum,
    setup,
    store_intensity,
    train_folds,
    training_rows,
)
from pipeline.params import AugmentParams, Params, SegmenterParams, TrainParams
from pipeline.paths import (
    SEGMENTER,
    SEGMENTER_FOLDS,
    SLICES_DIR,
    SPLIT_CSV,
    TRAIN_SEGMENTER_DIR,
    fold_live_dir,
    fold_model,
)

log = logging.getLogger(__name__)

# What the stage reads and writes besides code: dvc.yaml declares exactly these (tests/test_dvc_graph.py).
READS = (SLICES_DIR, SPLIT_CSV)
WRITES = (SEGMENTER, SEGMENTER.with_suffix(".json"), SEGMENTER_FOLDS, TRAIN_SEGMENTER_DIR / "metrics.json",
          TRAIN_SEGMENTER_DIR / "plots" / "metrics", TRAIN_SEGMENTER_DIR / "folds")


def segmenter_rows(rows: pd.DataFrame, negative_fraction: float, seed: int) -> pd.DataFrame:
    """The tumour-positive slices, plus `negative_fraction` x as many negatives drawn at random."""
    positive = rows[rows.has_tumour]
    negative = rows[~rows.has_tumour]
    n_neg = min(len(negative), int(round(negative_fraction * len(positive))))
    if n_neg:
        negative = negative.sample(n=n_neg, random_state=np.random.RandomState(seed))
        return pd.concat([positive, negative]).sort_index().reset_index(drop=True)
    return positive.reset_index(drop=True)


def run(params: Params) -> None:
    store = SliceStore(SLICES_DIR)
    train_folds(SPLIT_CSV, SEGMENTER, SEGMENTER_FOLDS, TRAIN_SEGMENTER_DIR,
                lambda fold, folds: train(params.train, params.augment, params.segmenter, params.data.target, store, fold, folds))


def train(t: TrainParams, augment: AugmentParams, p: SegmenterParams, target: str, store: SliceStore,
          fold: int | None, folds: int) -> None:
    """Train one segmenter for data.target ``target``: the single split's (fold None), or fold model `fold`
    of `folds`."""
    channels = store.channels  # the sidecar's; a store with mixed channel orders fails here, before training
    keras.backend.clear_session()
    setup(t)
    rows = training_rows(store, SPLIT_CSV, fold)
    if fold is not None:
        log.info("fold %d of %d", fold, folds)
    train_rows = segmenter_rows(rows["train"], p.negative_fraction, t.seed)
    val_rows = segmenter_rows(rows["val"], p.negative_fraction, t.seed)
    size = store.image_shape[0]
    regions = target_regions(target)  # one sigmoid output per region, whole tumour first
    model = build_segmenter(p.arch, size, p.filters, out_channels=len(regions),
                            in_channels=len(channels) * (2 * p.context_slices + 1))
    set_batchnorm_momentum(model)  # trained from scratch
    log.info("%s %s at %d px (%d parameters) for %s; %d train slices, %d val slices", SEGMENTERS[p.arch].description,
             list(p.filters), size, model.count_params(), ", ".join(regions), len(train_rows), len(val_rows))
    if p.context_slices:
        log.info("2.5-D input: each slice with %d neighbouring slice(s) either side, %d channels", p.context_slices,
                 model.input_shape[-1])

    train = SliceBatches(store, train_rows, t.batch_size, "mask", augment, shuffle=True, seed=t.seed,
                         regions=regions, by_tumour_area=p.sampling == "tumour_area", context=p.context_slices)
    val = SliceBatches(store, val_rows, t.batch_size, "mask", None, shuffle=False, seed=t.seed, regions=regions,
                       context=p.context_slices)
    loss = get_loss(p.loss, p.tversky_alpha, p.tversky_beta, p.focal_gamma)
    trained = with_deep_supervision(model, p.deep_supervision)  # `model` itself without deep supervision
    if p.deep_supervision:
        loss = DeepSupervisedLoss(loss, p.deep_supervision)
        log.info("deep supervision: decoder levels 2-%d with heads of their own in training", p.deep_supervision + 1)
    trained.compile(optimizer=keras.optimizers.Adam(t.lr), loss=loss,
                    metrics=[DiceAt(PIXEL_THRESHOLD), IoUAt(PIXEL_THRESHOLD)])
    epochs = max(1, round(t.epochs * p.epochs_factor))
    training = TrainingRun.start(fold_live_dir(TRAIN_SEGMENTER_DIR, fold or 0), "val_dice", p.patience,
                                 len(train) * t.batch_size, t.schedule, epochs, t.average_last)
    training.fit(trained, train, val, epochs)
    summary = training.finish({"parameters": model.count_params()})

    sidecar = {
        "kind": "segmenter",
        "input_size": size,
        "channels": channels,
        "context_slices": p.context_slices,  # its input: each slice with this many either side (pipeline.data.context)
        "intensity": store_intensity(store),
        "input_range": "uint8 values 0..255 as float32, channels last; per-image standardisation is inside the model",
        "target": target,
        "output_channels": list(regions),
        "arch": p.arch,
        "architecture": SEGMENTERS[p.arch].description,
        "filters": list(p.filters),
        "loss": p.loss,
        "threshold": PIXEL_THRESHOLD,
        "fold": fold,  # null: the single split's model; else this fold model's fold (its validation patients)
        "trained_on": sorted(rows["train"].patient_id.unique()),  # evaluate refuses to score these with it
        "folds": folds,
        "training": summary,
        "params": {"train": vars(t), "augment": vars(augment), "segmenter": vars(p)},
    }
    save_model(model, fold_model(SEGMENTER, fold or 0), sidecar)
