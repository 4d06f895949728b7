"""MRI sequence names and intensity scalings, written once: what params.yaml may name, what cases and
task specs carry.

A leaf module (imports nothing from the project), so ``pipeline.params`` and the data model
(``pipeline.data.case``, ``pipeline.data.task``) both read it without depending on each other.
"""

# Canonical MRI sequence names used throughout the project.
SEQUENCES = ("t1", "t1gd", "t2", "flair")
# LGG kaggle_3m TIFF channel order: pre-contrast, FLAIR, post-contrast.
LGG_CHANNELS = ("t1", "flair", "t1gd")
# How readers scale intensities to uint8 (data.intensity; a task spec's intensity mode): kaggle_3m TIFFs'
# stored uint8 values as they are, or rescaled per case and channel over brain pixels to the
# data.clip_percentiles range (as every NIfTI volume is).
INTENSITIES = ("as_stored", "per_volume")
# data.target: the whole tumour alone (one segmenter output; the LGG recipe), or every region of
# pipeline.data.regions.REGIONS (one segmenter output each).
TARGETS = ("whole_tumour", "regions")


def flair_channel(channels: tuple[str, ...] | list[str]) -> int | None:
    """Index of the FLAIR sequence among the input channels (1 in kaggle_3m's order), None without one."""
    return list(channels).index("flair") if "flair" in channels else None
