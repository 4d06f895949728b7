"""Where the stages read and write (relative to the repository root, as dvc.yaml declares)."""

from pathlib import Path

DEMO_DIR = Path("data/demo")
SLICES_DIR = Path("data/slices")
SPLIT_CSV = Path("data/split.csv")
MODELS_DIR = Path("models")
CLASSIFIER = MODELS_DIR / "classifier.keras"
SEGMENTER = MODELS_DIR / "segmenter.keras"
REPORTS_DIR = Path("reports")
TRAIN_CLASSIFIER_DIR = REPORTS_DIR / "train_classifier"
TRAIN_SEGMENTER_DIR = REPORTS_DIR / "train_segmenter"
EVAL_DIR = REPORTS_DIR / "eval"
METRICS_JSON = REPORTS_DIR / "metrics.json"  # the headline (DVC metrics), see pipeline/evaluation/schema.py
METRICS_FULL_JSON = EVAL_DIR / "metrics_full.json"  # every metric of evaluate
REGION_METRICS_JSON = EVAL_DIR / "regions.json"  # per-region metrics (data.target: regions)
REPORT_HTML = REPORTS_DIR / "index.html"
