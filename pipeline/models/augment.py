"""On-the-fly training augmentation: geometric (image and mask together) and intensity (image only).

Every random draw comes from the ``numpy.random.Generator`` passed in, so a batch's augmentation
is reproducible from its seed. Geometric transforms are one affine matrix per slice, applied with
OpenCV to the image (bilinear) and to the mask (nearest neighbour) with the same matrix, so the two
stay aligned and the mask keeps its label values. Pixels shifted in from outside are 0 (background).

No TensorFlow here: this runs under any Keras backend.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from pipeline.params import AugmentParams


def random_affine_params(rng: np.random.Generator, n: int, aug: AugmentParams, shape: tuple[int, int]) -> np.ndarray:
    """Draw ``n`` random affine matrices, float64 [n, 2, 3], mapping source to output pixel (x, y).

    shape: (H, W) of the slices. Each matrix is, about the image centre: an optional left-right
    flip (p = 0.5 if ``aug.flip``), a zoom by a factor in [1 - zoom, 1 + zoom], a rotation by
    an angle in [-rotate_deg, +rotate_deg] degrees, then a shift of up to ``shift`` x the image
    size along each axis. With every knob at 0 the matrices are the identity.
    """
    h, w = shape
    flip = rng.random(n) < 0.5 if aug.flip else np.zeros(n, bool)
    angle = np.deg2rad(rng.uniform(-aug.rotate_deg, aug.rotate_deg, n))
    scale = rng.uniform(1 - aug.zoom, 1 + aug.zoom, n)
    tx = rng.uniform(-aug.shift, aug.shift, n) * w
    ty = rng.uniform(-aug.shift, aug.shift, n) * h

    # Linear part A = zoom * rotation @ diag(flip, 1); centre c: x' = A (x - c) + c + t.
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    fx = np.where(flip, -1.0, 1.0)
    a = np.empty((n, 2, 2))
    a[:, 0, 0], a[:, 0, 1] = cos * fx, -sin
    a[:, 1, 0], a[:, 1, 1] = sin * fx, cos
    c = np.array([(w - 1) / 2, (h - 1) / 2])  # pixel centres: a flip maps the pixel grid onto itself
    m = np.empty((n, 2, 3))
    m[:, :, :2] = a
    m[:, :, 2] = c - a @ c + np.stack([tx, ty], axis=1)
    return m


def apply_geometric(images: np.ndarray, masks: np.ndarray | None, matrices: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Warp uint8 images [B, H, W, C] (bilinear) and masks uint8 [B, H, W] (nearest) by matrices [B, 2, 3].

    Returns new arrays of the same shapes and dtypes; outside pixels are filled with 0.
    """
    out_images = np.empty_like(images)
    out_masks = None if masks is None else np.empty_like(masks)
    for i in range(len(images)):
        _warp_image(images[i], matrices[i], out_images[i])
        if masks is not None:
            _warp_mask(masks[i], matrices[i], out_masks[i])
    return out_images, out_masks


def apply_intensity(images: np.ndarray, rng: np.random.Generator, aug: AugmentParams) -> np.ndarray:
    """Random brightness and contrast on float32 images [B, H, W, C] in 0..255 (modified in place).

    Per image: x -> (x - mean) * k + mean + b, with k uniform in [1 - contrast, 1 + contrast],
    b uniform in [-brightness, +brightness] * 255 and mean over all of the image's pixels and
    channels; then clipped to 0..255. With ``aug.per_channel`` each channel draws its own k and b and
    takes its own mean (sequences from different scanners differ each in its own way). Returns the
    same float32 array.
    """
    k, b = _intensity_params(rng, len(images), aug, images.shape[-1])
    for i, x in enumerate(images):
        mean = x.mean(axis=(0, 1), dtype=np.float64).astype(np.float32) if aug.per_channel \
            else np.float32(x.mean(dtype=np.float64))
        np.multiply(x, k[i], out=x)
        np.add(x, mean * (1 - k[i]) + b[i], out=x)
        np.clip(x, 0, 255, out=x)
    return images


def fill_missing_sequences(images: np.ndarray, rng: np.random.Generator, probability: float, flair: int,
                           sequences: int | None = None) -> np.ndarray:
    """kaggle_3m's fill of missing sequences, drawn as an augmentation, on uint8 images [B, H, W, C].

    The dataset writes FLAIR into the channel of a sequence a patient lacks (of the 50 shared patients, two
    have FLAIR in all three channels, two in the post-contrast one). With ``probability`` a slice gets one
    of those patterns, drawn uniformly from every non-empty set of the sequences other than ``flair`` (its
    index): those channels are replaced by its FLAIR. ``sequences``: the channels of one slice (default C); with
    neighbouring slices as channels (C a multiple of it, ``pipeline.data.context``) every slice of the stack
    gets the same pattern, as a patient lacks a sequence in all of its slices. Returns a copy when a slice is
    filled, else ``images``.
    """
    sequences = sequences or images.shape[-1]
    n, others = len(images), [c for c in range(sequences) if c != flair]
    patterns = [[c for bit, c in enumerate(others) if code >> bit & 1] for code in range(1, 2 ** len(others))]
    filled = rng.random(n) < probability
    chosen = rng.integers(0, len(patterns), n)
    if not filled.any():
        return images
    images = images.copy()
    starts = range(0, images.shape[-1], sequences)  # each slice's first channel
    for i in np.flatnonzero(filled):
        for start in starts:
            images[i][..., [start + c for c in patterns[chosen[i]]]] = images[i][..., start + flair, None]
    return images


def augment_batch(images: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator,
                  aug: AugmentParams | None, threads: int | None = None, flair: int | None = None,
                  sequences: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Augment one batch: uint8 images [B, H, W, C] and masks uint8 [B, H, W] (or None).

    Returns (float32 images [B, H, W, C] in 0..255, uint8 masks [B, H, W] or None). With
    ``aug`` None or disabled, the images are only converted to float32 and the masks returned as is.
    Same result as ``apply_geometric`` then ``apply_intensity`` on the same generator (for one slice's channels:
    ``sequences`` = C), but fused: the intensity change of a uint8 image is a 256-entry float32 lookup table.

    threads: slices of at least ``MIN_VALUES_FOR_THREADS`` values are augmented in this many
    contiguous chunks (default ``AUGMENT_THREADS``) on a shared pool of ``AUGMENT_THREADS`` threads
    (OpenCV releases the GIL). Every random draw is made before the split, so the result does not
    depend on the number of threads.

    flair: the FLAIR channel's index, which ``aug.missing_sequences`` > 0 needs (``fill_missing_sequences``,
    applied first; at 0 it draws nothing, so the other draws are as without it).

    sequences: the channels of one slice, when C holds a slice and its neighbours (``pipeline.data.context``):
    the missing-sequence pattern and, with ``aug.per_channel``, each sequence's brightness and contrast are
    drawn once and shared by all the slices of the stack. Default: C.
    """
    if aug is None or not aug.enabled:
        return images.astype(np.float32), masks
    if aug.missing_sequences > 0:
        if flair is None:
            raise ValueError("augment.missing_sequences needs the FLAIR channel's index")
        images = fill_missing_sequences(images, rng, aug.missing_sequences, flair, sequences)
    n, channels = len(images), images.shape[-1]
    sequences = sequences or channels
    matrices = random_affine_params(rng, n, aug, images.shape[1:3])
    k, b = _intensity_params(rng, n, aug, sequences)
    if aug.per_channel and sequences != channels:  # one draw per sequence, the same for every slice of the stack
        k, b = np.tile(k, channels // sequences), np.tile(b, channels // sequences)
    out = np.empty(images.shape, np.float32)
    out_masks = None if masks is None else np.empty_like(masks)

    def augment_range(start: int, stop: int) -> None:
        warped = np.empty(images.shape[1:], np.uint8)
        levels = np.arange(256, dtype=np.float32)[:, None, None]  # [256, 1, 1]: one table, or one per channel
        for i in range(start, stop):
            _warp_image(images[i], matrices[i], warped)
            if masks is not None:
                _warp_mask(masks[i], matrices[i], out_masks[i])
            means = np.float32(cv2.mean(warped)[:channels] if channels <= 4  # OpenCV's mean takes 4 at most
                               else warped.reshape(-1, channels).mean(axis=0))
            mean = means if aug.per_channel else np.float32(np.mean(means))
            lut = np.clip(levels * k[i] + (mean * (1 - k[i]) + b[i]), 0, 255)
            cv2.LUT(warped, np.ascontiguousarray(lut), dst=out[i])

    chunks = min(n, threads or AUGMENT_THREADS)
    pool = _pool() if chunks > 1 and images[0].size >= MIN_VALUES_FOR_THREADS else None
    if pool is None:
        augment_range(0, n)
    else:
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        for future in [pool.submit(augment_range, a, z) for a, z in zip(bounds[:-1], bounds[1:], strict=True)]:
            future.result()
    return out, out_masks


def default_threads() -> int:
    """Threads for augment_batch: ``PIPELINE_AUGMENT_THREADS`` if set, else one per core this process may use.

    No cap (there was one at 8, which left half of a 16-core GPU machine idle): a batch is split into at
    most batch-size chunks anyway. A 256 px slice costs ~0.4 ms on one core, of which ~6% holds the GIL
    (Python and small NumPy calls between OpenCV's, measured on the 2-core machine), so threads should
    scale well past 8; 2 cores give ~1.7x. Compare counts with
    ``PIPELINE_AUGMENT_THREADS=N python benchmarks/bench_batches.py --sizes 256``.
    """
    value = os.environ.get("PIPELINE_AUGMENT_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"PIPELINE_AUGMENT_THREADS must be a positive integer; got {value!r}")
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


AUGMENT_THREADS = default_threads()
# Smaller slices are augmented on the calling thread: their per-slice Python work, which holds the
# GIL, outweighs OpenCV's (2 threads vs 1 at batch 32: 0.86x at 128 px, 1.24x at 160, 1.66x at 256).
MIN_VALUES_FOR_THREADS = 160 * 160 * 3
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_FORKED = False  # in a forked child (PyDataset use_multiprocessing): the processes are the parallelism


def _pool() -> ThreadPoolExecutor | None:
    """The shared augmentation thread pool, created on first use; None in a forked child process.

    Creating it sets OpenCV to one thread per call (``cv2.setNumThreads(1)``, process-wide): with
    the slices already spread over the cores, OpenCV's own threads only contend (measured at 256 px
    on 2 cores: 3,900 slices/s with one OpenCV thread, 3,200-3,600 with two). Results are the same.
    A forked child must not: its parent's threads are gone, and OpenCV's thread settings hang there.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None and not _FORKED:
            cv2.setNumThreads(1)
            _POOL = ThreadPoolExecutor(max_workers=AUGMENT_THREADS, thread_name_prefix="augment")
        return _POOL


def _after_fork_in_child() -> None:
    global _POOL, _POOL_LOCK, _FORKED
    _POOL, _POOL_LOCK, _FORKED = None, threading.Lock(), True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _intensity_params(rng: np.random.Generator, n: int, aug: AugmentParams, channels: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Contrast factors k and brightness offsets b (grey levels), float32 [n] each, or [n, channels] each
    with ``aug.per_channel``."""
    shape = (n, channels) if aug.per_channel else n
    k = rng.uniform(1 - aug.contrast, 1 + aug.contrast, shape).astype(np.float32)
    b = (rng.uniform(-aug.brightness, aug.brightness, shape) * 255).astype(np.float32)
    return k, b


def _warp_image(image: np.ndarray, matrix: np.ndarray, out: np.ndarray) -> None:
    """Bilinear warp of one uint8 [H, W, C] image into ``out``.

    OpenCV has vectorised paths for 1 and 4 channels only: a 3-channel image is padded to 4
    (2.3x faster at 256 px, bit-identical result). A stack of 3-channel slices (2.5-D input,
    ``pipeline.data.context``) is warped slice by slice the same way: OpenCV's path for more than 4 channels
    rounds differently (up to 6 grey levels off), and each slice of a stack must come out as it would alone.
    """
    h, w = image.shape[:2]
    if image.ndim == 3 and image.shape[2] > 4 and image.shape[2] % 3 == 0:
        slice_out = np.empty((h, w, 3), np.uint8)
        for start in range(0, image.shape[2], 3):
            _warp_image(np.ascontiguousarray(image[..., start:start + 3]), matrix, slice_out)
            out[..., start:start + 3] = slice_out
        return
    if image.ndim == 3 and image.shape[2] == 3:
        rgba = cv2.warpAffine(cv2.cvtColor(image, cv2.COLOR_RGB2RGBA), matrix, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB, dst=out)
    else:
        out[...] = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(out.shape)


def _warp_mask(mask: np.ndarray, matrix: np.ndarray, out: np.ndarray) -> None:
    """Nearest-neighbour warp of one uint8 [H, W] label map into ``out`` (values are kept)."""
    h, w = mask.shape
    cv2.warpAffine(mask, matrix, (w, h), dst=out, flags=cv2.INTER_NEAREST,
                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
