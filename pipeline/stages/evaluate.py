"""Stage `evaluate`: threshold on validation patients, cascade metrics on val and test, explanations."""

from __future__ import annotations

import logging
import time

import pandas as pd

from pipeline.data.slices import SliceStore
from pipeline.data.split import read_split
from pipeline.errors import ParamsError
from pipeline.evaluation.bundle import CASCADE_FILE, MODELS, Bundle, bundle_files, file_hashes, task_from_sidecars
from pipeline.evaluation.cascade import Cascade
from pipeline.evaluation.gallery import explain_test_slices, patient_triptychs
from pipeline.evaluation.postprocess import PostProcessing
from pipeline.evaluation.schema import check, headline
from pipeline.evaluation.scoring import (
    EVAL_SPLITS,
    choose_postprocessing,
    choose_threshold,
    evaluate_split,
    plot_tables,
    score_patients,
)
from pipeline.models.sidecar import load_sidecar
from pipeline.params import Params
from pipeline.paths import (
    CLASSIFIER,
    EVAL_DIR,
    METRICS_FULL_JSON,
    METRICS_JSON,
    MODELS_DIR,
    SEGMENTER,
    SLICES_DIR,
    SPLIT_CSV,
)
from pipeline.writing import atomic_dir, atomic_path, json_text

log = logging.getLogger(__name__)

# What the stage reads and writes besides code: dvc.yaml declares exactly these (tests/test_dvc_graph.py).
READS = (SLICES_DIR, SPLIT_CSV, CLASSIFIER, CLASSIFIER.with_suffix(".json"), SEGMENTER, SEGMENTER.with_suffix(".json"))
WRITES = (EVAL_DIR, METRICS_JSON, MODELS_DIR / CASCADE_FILE)


def run(params: Params) -> None:
    e = params.evaluate
    start = time.perf_counter()
    store = SliceStore(SLICES_DIR)
    split = read_split(str(SPLIT_CSV))
    chosen_for = file_hashes(MODELS_DIR, bundle_files(MODELS))  # the files the gate is chosen for, as loaded now
    # The gate threshold is chosen below; the segmenter's pixel threshold is the one it was trained with.
    cascade = Cascade.load(CLASSIFIER, SEGMENTER, threshold=0.5,
                           seg_threshold=float(load_sidecar(SEGMENTER)["threshold"]))
    sidecar = load_sidecar(CLASSIFIER)

    layer = sidecar["last_conv_layer"] if e.gradcam_layer == "last" else e.gradcam_layer
    if not any(one.name == layer for one in cascade.classifier.layers):  # checked before minutes of scoring
        raise ParamsError(f"evaluate.gradcam_layer: the classifier has no layer {layer!r} (the backbone's "
                          f"last one is {sidecar['last_conv_layer']!r})")

    scored = score_patients(store, split, cascade)
    cascade.threshold = threshold = choose_threshold(scored.slices, e.threshold)
    log.info("threshold %.4f chosen on validation patients by rule %r", threshold, e.threshold)
    keep_largest = (False, True) if e.keep_largest_component == "auto" else (e.keep_largest_component,)
    cascade.post = post = choose_postprocessing(
        scored, threshold, [PostProcessing(e.min_component_px, keep) for keep in keep_largest])[0]

    metrics: dict = {
        "classifier": {"pretrained": bool(sidecar["pretrained"]), "backbone": sidecar["backbone"],
                       "localisation_weight": float(sidecar.get("localisation_weight", 0.0))},
        "threshold": {"rule": str(e.threshold), "value": threshold, "chosen_on": "val"},
        "postprocessing": {"min_component_px": post.min_component_px,
                           "keep_largest_component": post.keep_largest_component,
                           "chosen_on": "val" if len(keep_largest) > 1 else "params"},
    }
    with atomic_dir(EVAL_DIR) as out:
        (out / "plots").mkdir()
        (out / "images").mkdir()
        tables = {}
        for name in EVAL_SPLITS:
            metrics[name], slices, patients = evaluate_split(scored, store, name, threshold, post, e.bootstrap, e.seed)
            tables[name] = (slices, patients)
            for kind, table in plot_tables(slices).items():
                table.to_csv(out / "plots" / f"{kind}_{name}.csv", index=False)
        slices = pd.concat([t[0] for t in tables.values()], ignore_index=True)
        patients = pd.concat([t[1] for t in tables.values()], ignore_index=True)
        slices.to_csv(out / "slices.csv", index=False)
        patients.to_csv(out / "patients.csv", index=False)
        val = metrics["val"]["classifier"]
        (out / "threshold.json").write_text(json_text({
            "rule": str(e.threshold), "threshold": threshold, "chosen_on": "val",
            "val_sensitivity": val["sensitivity"], "val_specificity": val["specificity"]}))

        test_slices, test_patients = tables["test"]
        gallery, pointing = explain_test_slices(cascade.classifier, layer, store, test_slices,
                                                e, out / "images")
        metrics["test"]["explain"] = pointing
        (out / "gallery.json").write_text(json_text(gallery))
        (out / "cases.json").write_text(json_text(
            patient_triptychs(store, test_patients, test_slices, scored.seg_masks, out / "images", post)))
        bundle = Bundle(task_from_sidecars(MODELS_DIR), threshold, str(e.threshold), cascade.seg_threshold, post,
                        chosen_for)
        check(metrics, name="evaluate's metrics")
        (out / METRICS_FULL_JSON.relative_to(EVAL_DIR)).write_text(json_text(metrics))
        # models/ now holds all that predict needs (pipeline.evaluation.bundle); refused, and reports/eval left as
        # it was, when a model file changed while this ran
        bundle.write(MODELS_DIR)
    with atomic_path(METRICS_JSON) as tmp:
        tmp.write_text(json_text(headline(metrics)))
    t = metrics["test"]
    log.info("test: AUC %.3f [%.3f, %.3f], sensitivity %.3f, specificity %.3f; segmenter slice Dice %.3f; "
             "cascade patient Dice mean %.3f median %.3f; pointing game %.2f (%.0f s)",
             t["classifier"]["auc"], t["classifier"]["auc_ci_low"], t["classifier"]["auc_ci_high"],
             t["classifier"]["sensitivity"], t["classifier"]["specificity"], t["segmenter"]["dice_slice_mean"],
             t["cascade"]["dice_patient_mean"], t["cascade"]["dice_patient_median"],
             t["explain"]["pointing_game"], time.perf_counter() - start)
