"""Brain-tumour MRI pipeline: ingest, split, classify, segment, evaluate, report."""

__version__ = "0.1.0"
