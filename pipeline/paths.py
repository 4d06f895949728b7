"""Where the stages read and write (relative to the repository root, as dvc.yaml declares)."""

from pathlib import Path

DEMO_DIR = Path("data/demo")
SLICES_DIR = Path("data/slices")
SPLIT_CSV = Path("data/split.csv")
MODELS_DIR = Path("models")
CLASSIFIER = MODELS_DIR / "classifier.keras"
SEGMENTER = MODELS_DIR / "segmenter.keras"
FOLDS_DIR = MODELS_DIR / "folds"  # split.folds > 1: the fold models after the first (``fold_model``)
CLASSIFIER_FOLDS = FOLDS_DIR / "classifier"
SEGMENTER_FOLDS = FOLDS_DIR / "segmenter"
REPORTS_DIR = Path("reports")
TRAIN_CLASSIFIER_DIR = REPORTS_DIR / "train_classifier"
TRAIN_SEGMENTER_DIR = REPORTS_DIR / "train_segmenter"
EVAL_DIR = REPORTS_DIR / "eval"
METRICS_JSON = REPORTS_DIR / "metrics.json"  # the headline (DVC metrics), see pipeline/evaluation/schema.py
METRICS_FULL_JSON = EVAL_DIR / "metrics_full.json"  # every metric of evaluate
REPORT_HTML = REPORTS_DIR / "index.html"


def fold_model(model: Path, fold: int) -> Path:
    """Where fold model `fold` of a kind is saved (its sidecar: the same path with .json).

    Fold 0, and the one model of a single split, is the kind's own path (``CLASSIFIER``, ``SEGMENTER``), so
    a single split's bundle is unchanged; fold f >= 1 is ``models/folds/<kind>/fold_<f>.keras``.
    """
    return model if fold == 0 else FOLDS_DIR / model.stem / f"fold_{fold}.keras"


def fold_live_dir(live_dir: Path, fold: int) -> Path:
    """The dvclive folder of fold model `fold`: the stage's own for fold 0, ``<live_dir>/folds/fold_<f>`` after."""
    return live_dir if fold == 0 else live_dir / "folds" / f"fold_{fold}"
