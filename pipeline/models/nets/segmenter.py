"""The segmenter: what every segmenter architecture shares.

``PIXEL_THRESHOLD``: a pixel is tumour when the segmenter's probability is at or above it. Written here
only: training scores with it (``DiceAt``, ``IoUAt``) and records it in the segmenter's sidecar
(``models/segmenter.json`` "threshold"); evaluate reads it from that sidecar into the model bundle
(``models/cascade.json`` "seg_threshold"), which prediction reads.
"""

from __future__ import annotations

PIXEL_THRESHOLD = 0.5  # segmenter probability in [0, 1]
