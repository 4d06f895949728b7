"""Stage `train_classifier`: transfer-learn the tumour-presence classifier -> models/classifier.keras (with
split.folds > 1, one per fold: ``pipeline.paths.fold_model``)."""

from __future__ import annotations

import logging

import keras

from pipeline.data.slices import SliceStore
from pipeline.models.batches import SliceBatches, class_weights_from
from pipeline.models.nets.classifier import (
    build_classifier,
    set_trainable_stages,
    with_localisation_loss,
    zero_init_residual_branches,
)
from pipeline.models.training import (
    TrainingRun,
    save_model,
    set_batchnorm_momentum,
    setup,
    store_intensity,
    train_folds,
    training_rows,
)
from pipeline.params import AugmentParams, ClassifierParams, Params, TrainParams
from pipeline.paths import (
    CLASSIFIER,
    CLASSIFIER_FOLDS,
    SLICES_DIR,
    SPLIT_CSV,
    TRAIN_CLASSIFIER_DIR,
    fold_live_dir,
    fold_model,
)

log = logging.getLogger(__name__)

# What the stage reads and writes besides code: dvc.yaml declares exactly these (tests/test_dvc_graph.py).
READS = (SLICES_DIR, SPLIT_CSV)
WRITES = (CLASSIFIER, CLASSIFIER.with_suffix(".json"), CLASSIFIER_FOLDS, TRAIN_CLASSIFIER_DIR / "metrics.json",
          TRAIN_CLASSIFIER_DIR / "plots" / "metrics", TRAIN_CLASSIFIER_DIR / "folds")


def run(params: Params) -> None:
    store = SliceStore(SLICES_DIR)
    train_folds(SPLIT_CSV, CLASSIFIER, CLASSIFIER_FOLDS, TRAIN_CLASSIFIER_DIR,
                lambda fold, folds: train(params.train, params.augment, params.classifier, store, fold, folds))


def train(t: TrainParams, augment: AugmentParams, p: ClassifierParams, store: SliceStore, fold: int | None,
          folds: int) -> None:
    """Train one classifier: the single split's (fold None), or fold model `fold` of `folds`."""
    channels = store.channels  # the sidecar's; a store with mixed channel orders fails here, before training
    keras.backend.clear_session()
    setup(t)
    rows = training_rows(store, SPLIT_CSV, fold)
    if fold is not None:
        log.info("fold %d of %d: %d train slices, %d val slices", fold, folds, len(rows["train"]), len(rows["val"]))
    size = store.image_shape[0]
    model, info = build_classifier(size, p.backbone, p.weights, p.dropout, p.head)
    if not info["pretrained"]:
        set_batchnorm_momentum(model)
        zeroed = zero_init_residual_branches(model, info)
        log.info("random init: residual branches start at zero (%d BatchNormalization scales)", zeroed)

    # With localisation_weight > 0 the model that trains also learns which cells of the last conv map (the
    # map Grad-CAM explains) hold tumour; `model`, which shares its weights, is the one saved.
    localising = p.localisation_weight > 0
    trainer = with_localisation_loss(model, info["last_conv_layer"], p.localisation_weight) if localising else model
    target = "label+mask" if localising else "label"
    labels = rows["train"].has_tumour.to_numpy(int)
    class_weight = class_weights_from(labels) if p.class_balance == "weights" else None
    train = SliceBatches(store, rows["train"], t.batch_size, target, augment, shuffle=True, seed=t.seed,
                         class_weight=class_weight, balanced=p.class_balance == "batches",
                         undersample=p.class_balance == "undersample")
    val = SliceBatches(store, rows["val"], t.batch_size, target, None, shuffle=False, seed=t.seed)
    log.info("classifier %s at %d px, %s%s; %d train slices (%.0f%% positive; %d an epoch), %d val slices",
             p.backbone, size, "pretrained" if info["pretrained"] else "random init",
             f", localisation loss x{p.localisation_weight:g} on {info['last_conv_layer']}" if localising else "",
             len(labels), 100 * labels.mean(), len(train) * t.batch_size, len(rows["val"]))

    def compile_at(lr: float) -> None:
        trainer.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy",
                      metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")])

    training = TrainingRun.start(fold_live_dir(TRAIN_CLASSIFIER_DIR, fold or 0), "val_auc", p.patience,
                                 len(train) * t.batch_size, t.schedule, t.epochs, t.average_last)
    warmup = min(p.warmup_epochs, t.epochs) if info["pretrained"] else 0
    if warmup:
        set_trainable_stages(model, info, 0)
        compile_at(t.lr)
        log.info("phase 1: %d warm-up epochs with the base frozen", warmup)
        training.fit(trainer, train, val, warmup)
        set_trainable_stages(model, info, p.unfreeze)
        compile_at(t.lr * p.finetune_lr_scale)
        log.info("phase 2: fine-tuning with %s stage(s) unfrozen at lr %.2g", p.unfreeze, t.lr * p.finetune_lr_scale)
    else:
        compile_at(t.lr)
    training.fit(trainer, train, val, t.epochs - warmup)
    summary = training.finish({"pretrained": info["pretrained"], "weights_source": info["weights_source"]})

    sidecar = {
        "kind": "classifier",
        "input_size": size,
        "channels": channels,
        "intensity": store_intensity(store),
        "input_range": "uint8 values 0..255 as float32, channels last; preprocessing is inside the model",
        "preprocessing": info["preprocessing"],
        "backbone": p.backbone,
        "last_conv_layer": info["last_conv_layer"],
        "head": p.head,
        "localisation_weight": p.localisation_weight,  # > 0: last_conv_layer also learnt where tumour is
        "pretrained": info["pretrained"],
        "weights_source": info["weights_source"],
        "threshold": None,  # chosen on validation patients by `evaluate` (reports/eval/threshold.json)
        "fold": fold,  # null: the single split's model; else this fold model's fold (its validation patients)
        "trained_on": sorted(rows["train"].patient_id.unique()),  # evaluate refuses to score these with it
        "folds": folds,
        "training": summary,
        "params": {"train": vars(t), "augment": vars(augment), "classifier": vars(p)},
    }
    save_model(model, fold_model(CLASSIFIER, fold or 0), sidecar)
