"""Prediction on new scans with the trained model bundle: ``python -m pipeline predict`` (``command``)
and the ``Predictor`` it runs (``predictor``) on the cases ``find_inputs`` lists (``discovery``)."""

from pipeline.predict.discovery import InputItem, find_inputs
from pipeline.predict.outputs import OUTPUT_MARKER, write_run_index
from pipeline.predict.predictor import Prediction, Predictor

__all__ = ["OUTPUT_MARKER", "InputItem", "Prediction", "Predictor", "find_inputs", "write_run_index"]
