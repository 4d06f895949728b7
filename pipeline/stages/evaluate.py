"""Stage `evaluate`: threshold on validation patients, cascade metrics on val and test, explanations.

With split.folds > 1 the validation patients are every non-test patient, scored out of fold (by its own
fold's models), and the test patients are scored by the ensemble of the folds. With folds there may be no test
split (split.test 0: every patient trains a final ensemble): the test metrics are then null and the pictures are
of fold 0's out-of-fold patients."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import pandas as pd

from pipeline.data.slices import SliceStore
from pipeline.data.split import fold_count, read_split
from pipeline.errors import InputError, ParamsError
from pipeline.evaluation.bundle import CASCADE_FILE, Bundle, bundle_files, file_hashes, task_from_sidecars
from pipeline.evaluation.cascade import Cascade, members
from pipeline.evaluation.gallery import explain_test_slices, patient_triptychs
from pipeline.evaluation.postprocess import post_processing_options
from pipeline.evaluation.region_scores import write_region_outputs
from pipeline.evaluation.schema import METRICS, blank, check, headline
from pipeline.evaluation.scoring import (
    EVAL_SPLITS,
    SEG_THRESHOLD_CANDIDATES,
    at_seg_threshold,
    check_models_never_saw,
    choose_postprocessing,
    choose_seg_threshold,
    choose_threshold,
    evaluate_split,
    fold_spread,
    of_fold,
    out_of_fold_split,
    plot_tables,
    score_patients,
)
from pipeline.models.sidecar import load_sidecar
from pipeline.params import SEG_THRESHOLD_RULES, Params
from pipeline.paths import (
    CLASSIFIER,
    CLASSIFIER_FOLDS,
    EVAL_DIR,
    METRICS_FULL_JSON,
    METRICS_JSON,
    MODELS_DIR,
    SEGMENTER,
    SEGMENTER_FOLDS,
    SLICES_DIR,
    SPLIT_CSV,
    fold_model,
)
from pipeline.writing import atomic_dir, atomic_path, json_text

log = logging.getLogger(__name__)

# What the stage reads and writes besides code: dvc.yaml declares exactly these (tests/test_dvc_graph.py).
READS = (SLICES_DIR, SPLIT_CSV, CLASSIFIER, CLASSIFIER.with_suffix(".json"), SEGMENTER, SEGMENTER.with_suffix(".json"),
         CLASSIFIER_FOLDS, SEGMENTER_FOLDS)
WRITES = (EVAL_DIR, METRICS_JSON, MODELS_DIR / CASCADE_FILE)


def run(params: Params) -> None:
    e = params.evaluate
    start = time.perf_counter()
    store = SliceStore(SLICES_DIR)
    split = read_split(str(SPLIT_CSV))
    folds = fold_count(split)
    if folds == 1 and not (split.split == "test").any():  # split.test 0 is for folds only (params, split.file)
        raise InputError(SPLIT_CSV, "no patient in test and no folds: evaluate needs test patients or split.folds > 1")
    classifiers = [fold_model(CLASSIFIER, f) for f in range(folds)]
    segmenters = [fold_model(SEGMENTER, f) for f in range(folds)]
    listed = {"classifier": [str(p.relative_to(MODELS_DIR)) for p in classifiers],
              "segmenter": [str(p.relative_to(MODELS_DIR)) for p in segmenters]}
    check_models_never_saw(split, list(zip(classifiers, segmenters, strict=True)))  # not trained for another split
    chosen_for = file_hashes(MODELS_DIR, bundle_files(listed))  # the files the gate is chosen for, as loaded now
    # The gate threshold is chosen below; the segmenter's pixel threshold is the one it was trained with, the
    # one params give, or (auto) chosen below with the gate. With folds: their ensemble (test patients).
    trained = float(load_sidecar(SEGMENTER)["threshold"])
    choose_pixels = e.seg_threshold == "auto"
    cascade = Cascade.load(classifiers, segmenters, threshold=0.5, slice_score=e.slice_score,
                           seg_threshold=trained if e.seg_threshold in SEG_THRESHOLD_RULES else float(e.seg_threshold))
    # With folds each non-test patient is scored by its own fold's models only (out of fold).
    fold_cascades = [Cascade(c, s, 0.5, seg_threshold=cascade.seg_threshold, slice_score=cascade.slice_score)
                     for c, s in zip(members(cascade.classifier), members(cascade.segmenter), strict=True)] \
        if folds > 1 else None
    chosen_on = "oof" if folds > 1 else "val"
    sidecar = load_sidecar(CLASSIFIER)

    layer = sidecar["last_conv_layer"] if e.gradcam_layer == "last" else e.gradcam_layer
    if not any(one.name == layer for one in cascade.classifier.layers):  # checked before minutes of scoring
        raise ParamsError(f"evaluate.gradcam_layer: the classifier has no layer {layer!r} (the backbone's "
                          f"last one is {sidecar['last_conv_layer']!r})")

    scored = score_patients(store, out_of_fold_split(split), cascade, fold_cascades,
                            seg_thresholds=(*SEG_THRESHOLD_CANDIDATES, trained) if choose_pixels else ())
    post_options = post_processing_options(e.min_component_px, e.keep_largest_component, e.fill_holes)
    if choose_pixels:
        seg_threshold = choose_seg_threshold(scored, e.threshold, post_options, trained)
        scored = replace(at_seg_threshold(scored, seg_threshold), seg_levels=None)  # the levels' memory goes
        for one in (cascade, *(fold_cascades or ())):
            one.seg_threshold = seg_threshold
    cascade.threshold = threshold = choose_threshold(scored.slices, e.threshold)
    log.info("threshold %.4f chosen on %s by rule %r", threshold,
             f"the out-of-fold predictions of {folds} folds" if folds > 1 else "validation patients", e.threshold)
    cascade.post = post = choose_postprocessing(scored, threshold, post_options)[0]

    metrics: dict = {
        "classifier": {"pretrained": bool(sidecar["pretrained"]), "backbone": sidecar["backbone"],
                       "localisation_weight": float(sidecar.get("localisation_weight", 0.0))},
        "threshold": {"rule": str(e.threshold), "value": threshold, "chosen_on": chosen_on,
                      "slice_score": e.slice_score},
        "postprocessing": {"min_component_px": post.min_component_px,
                           "keep_largest_component": post.keep_largest_component,
                           "fill_holes": post.fill_holes,
                           "seg_threshold": cascade.seg_threshold, "seg_threshold_rule": str(e.seg_threshold),
                           "chosen_on": chosen_on if len(post_options) > 1 or choose_pixels else "params"},
    }
    with atomic_dir(EVAL_DIR) as out:
        (out / "plots").mkdir()
        (out / "images").mkdir()
        tables = {}
        for name in EVAL_SPLITS:
            if not (scored.slices.split == name).any():  # no test split (split.test 0 with folds): nulls
                metrics[name] = blank(METRICS.keys[name])  # type: ignore[arg-type]
                continue
            metrics[name], slices, patients = evaluate_split(scored, store, name, threshold, post, e.bootstrap, e.seed)
            tables[name] = (slices, patients)
            for kind, table in plot_tables(slices).items():
                table.to_csv(out / "plots" / f"{kind}_{name}.csv", index=False)
        metrics["cross_validation"] = fold_spread(tables["val"][1], tables["val"][0], split)
        slices = pd.concat([t[0] for t in tables.values()], ignore_index=True)
        patients = pd.concat([t[1] for t in tables.values()], ignore_index=True)
        slices.to_csv(out / "slices.csv", index=False)
        patients.to_csv(out / "patients.csv", index=False)
        val = metrics["val"]["classifier"]
        (out / "threshold.json").write_text(json_text({
            "rule": str(e.threshold), "threshold": threshold, "chosen_on": chosen_on, "slice_score": e.slice_score,
            "val_sensitivity": val["sensitivity"], "val_specificity": val["specificity"]}))

        shown = "test" if "test" in tables else "val"  # the split the pictures are of
        # without a test split, fold 0's out-of-fold patients: fold 0's classifier (Grad-CAM's) never saw them
        shown_slices, shown_patients = tables["test"] if shown == "test" else of_fold(tables["val"], split, 0)
        # Grad-CAM explains one network: the single split's classifier, or with folds fold 0's.
        gallery, pointing = explain_test_slices(members(cascade.classifier)[0], layer, store, shown_slices,
                                                e, out / "images")
        if shown == "test":
            metrics["test"]["explain"] = pointing
        (out / "gallery.json").write_text(json_text(gallery))
        (out / "cases.json").write_text(json_text(
            patient_triptychs(store, shown_patients, shown_slices, scored.seg_masks, out / "images", post)))
        task = task_from_sidecars(MODELS_DIR)
        if len(task.regions) > 1:  # data.target "regions": every region scored, tabled and drawn
            write_region_outputs(scored, store, cascade, task.regions, out, fold_cascades)
        bundle = Bundle(task, threshold, str(e.threshold), cascade.seg_threshold, post,
                        classifiers=tuple(listed["classifier"]), segmenters=tuple(listed["segmenter"]),
                        chosen_on=chosen_on, sha256=chosen_for, slice_score=cascade.slice_score)
        check(metrics, name="evaluate's metrics")
        (out / METRICS_FULL_JSON.relative_to(EVAL_DIR)).write_text(json_text(metrics))
        # models/ now holds all that predict needs (pipeline.evaluation.bundle); refused, and reports/eval left as
        # it was, when a model file changed while this ran
        bundle.write(MODELS_DIR)
    with atomic_path(METRICS_JSON) as tmp:
        tmp.write_text(json_text(headline(metrics)))
    t = metrics[shown]
    log.info("%s: AUC %.3f [%.3f, %.3f]; gate sensitivity %.3f, specificity %.3f; final masks' slice calls "
             "sensitivity %.3f, specificity %.3f; segmenter slice Dice %.3f; "
             "cascade patient Dice mean %.3f median %.3f; pointing game %.2f (%.0f s)",
             "test" if shown == "test" else "out of fold (no test split)",
             t["classifier"]["auc"], t["classifier"]["auc_ci_low"], t["classifier"]["auc_ci_high"],
             t["classifier"]["sensitivity"], t["classifier"]["specificity"],
             t["cascade_slices"]["sensitivity"], t["cascade_slices"]["specificity"], t["segmenter"]["dice_slice_mean"],
             t["cascade"]["dice_patient_mean"], t["cascade"]["dice_patient_median"],
             pointing["pointing_game"], time.perf_counter() - start)
