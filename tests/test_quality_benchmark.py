"""benchmarks/quality_lgg.py reads the figures it prints from evaluate's outputs (a fake run here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fake_outputs import write_fake_outputs

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("quality_lgg", ROOT / "benchmarks" / "quality_lgg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classifier_from_copies_the_split_and_every_folds_classifier(tmp_path):
    run, work = tmp_path / "run", tmp_path / "work"
    for name in ("data/split.csv", "models/classifier.keras", "models/classifier.json",
                 "models/folds/classifier/fold_1.keras", "models/folds/segmenter/fold_1.keras",
                 "reports/train_classifier/metrics.json", "models/segmenter.keras"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    benchmark = load_benchmark()
    benchmark.reuse_classifier(run, work)
    copied = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    assert copied == ["data/split.csv", "models/classifier.json", "models/classifier.keras",
                      "models/folds/classifier/fold_1.keras", "reports/train_classifier/metrics.json"]  # no segmenter
    (run / "models/classifier.keras").unlink()
    with pytest.raises(FileNotFoundError, match="classifier.keras: not found"):
        benchmark.reuse_classifier(run, tmp_path / "again")


def test_headline_reads_test_and_out_of_fold_figures(tmp_path):
    run = write_fake_outputs(tmp_path, n_patients=12)
    split = pd.read_csv(run.split_csv)
    split["fold"] = [i % 2 if s != "test" else None for i, s in enumerate(split.split)]  # a fold column last
    split.to_csv(run.split_csv, index=False)
    got = load_benchmark().headline(tmp_path)
    assert got["patients"] == split.split.value_counts().to_dict()  # counted by split, not by the last column
    metrics = run.metrics
    assert got["dice_patient_mean"] == metrics["test"]["cascade"]["dice_patient_mean"]
    assert got["val_dice_patient_mean"] == metrics["val"]["cascade"]["dice_patient_mean"]
    assert got["val_dice_patient_mean_per_fold"] == metrics["cross_validation"]["dice_patient_mean_per_fold"]
    assert got["folds"] == metrics["cross_validation"]["folds"]
    assert got["seg_threshold"] == metrics["postprocessing"]["seg_threshold"]
    assert got["keep_largest_component"] == metrics["postprocessing"]["keep_largest_component"]
    assert got["fill_holes"] == metrics["postprocessing"]["fill_holes"]


def test_a_failing_stage_stops_the_run_with_its_last_logged_line(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("import sys\nprint('working on', sys.argv[1])\n"
                      "if sys.argv[1] == 'split':\n    print('error: params.yaml: split: bad')\n    sys.exit(2)\n")
    benchmark = load_benchmark()
    log = tmp_path / "stages.log"
    with pytest.raises(benchmark.StageFailed, match=r"stage split failed \(exit 2\): params.yaml: split: bad$") \
            as failed:
        benchmark.run_stages(tmp_path, log, ("ingest", "split", "train_classifier"), (str(script),))
    assert failed.value.status == 2
    assert log.read_text().splitlines() == ["working on ingest", "working on split", "error: params.yaml: split: bad"]
    assert benchmark.run_stages(tmp_path, log, ("ingest",), (str(script),)).keys() == {"ingest"}


def test_keep_refuses_a_folder_that_holds_something(tmp_path):
    """A kept run's stale outputs (another fold count's models, say) must not mix with a new run's."""
    kept = tmp_path / "kept"
    (kept / "models").mkdir(parents=True)
    (kept / "models" / "cascade.json").write_text("{}")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality_lgg.py"), "--root", str(tmp_path),
                          "--keep", str(kept)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"--keep {kept}: exists and is not an empty folder" in run.stderr
    assert (kept / "models" / "cascade.json").read_text() == "{}"  # left as it was
