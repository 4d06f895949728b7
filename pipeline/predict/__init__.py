"""Prediction on new scans with the trained model bundle: ``python -m pipeline predict`` (``command``)
and the ``Predictor`` it runs (``predictor``) on the cases ``find_inputs`` lists (``discovery``)."""

from pipeline.predict.discovery import InputItem, find_inputs
from pipeline.predict.predictor import OUTPUT_MARKER, Prediction, Predictor, write_run_index

__all__ = ["OUTPUT_MARKER", "InputItem", "Prediction", "Predictor", "find_inputs", "write_run_index"]
