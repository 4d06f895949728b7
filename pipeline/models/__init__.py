"""Models: the networks (``nets``), their losses and metrics, the training batches and augmentation
that feed them, and the training loop's helpers (``training``)."""
