"""Evaluation: the classifier-gated cascade and its post-processing, the metrics, the scoring of
the validation and test splits, the explanations and gallery, the model bundle evaluate writes,
external validation for predict, and the schema of the outputs."""
