"""Explanations of the tumour classifier: Grad-CAM, integrated gradients, the pointing game, overlay PNGs.

Backend-neutral: gradients come from :mod:`pipeline.evaluation.gradients`, the rest is NumPy and OpenCV.
Images are float32 [B, H, W, C] in the range the model takes (uint8 range, 0..255, for the classifier,
which preprocesses inside). Heatmaps are float32 [B, H, W] in 0..1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.models.padded import fixed_batches, pad_rows
from pipeline.writing import atomic_path

if TYPE_CHECKING:  # the gradients (and keras) load with the first explanation: the overlays need neither
    import keras

    from pipeline.evaluation.gradients import Target

log = logging.getLogger(__name__)

TRUTH_BGR = (0, 255, 0)  # green outline: the true mask
PRED_BGR = (255, 0, 255)  # magenta outline: a predicted mask
HEAT_COLORMAP = cv2.COLORMAP_INFERNO  # perceptually uniform
HEAT_ALPHA = 0.45
UPSCALE_UP_TO = 128  # images this size or smaller are drawn at twice the size
TITLE_PX = 18


# -------------------------------------------------------------------------------------------------- Grad-CAM


def grad_cam_cells(model: keras.Model, images: np.ndarray, layer_name: str, batch_size: int = 16,
                   target: Target = "auto") -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) at the layer's own resolution: float32 [B, h, w], >= 0.

    images: float32 [B, H, W, C], 0..255. layer_name: a convolutional layer of ``model`` (the classifier's
    ``last_conv_layer``). Channel weights are the spatial mean of d score / d A; the map is
    relu(sum_k w_k A_k). target "auto" differentiates the logit of a sigmoid output: the same map after
    normalisation (the sigmoid's slope is a positive per-image factor) without vanishing gradients for
    confident predictions. Every gradient call gets a full batch (the last zero-padded, see
    ``pipeline.models.batches.fixed_batches``): one compiled function whatever the number of images.
    """
    from pipeline.evaluation.gradients import output_and_layer_grad

    x = _images(images)
    cells = []
    for batch, n in fixed_batches(x, _positive(batch_size, "batch_size")):
        acts, grads, _ = output_and_layer_grad(model, layer_name, batch, target=target)
        if acts.ndim != 4:
            raise ValueError(f"layer {layer_name!r} gives activations of shape {acts.shape}; Grad-CAM needs [B,h,w,k]")
        acts, grads = acts[:n], grads[:n]
        weights = grads.mean(axis=(1, 2))  # [b, k]
        cells.append(np.maximum(np.einsum("bhwk,bk->bhw", acts, weights), 0.0).astype(np.float32))
    return np.concatenate(cells) if cells else np.zeros((0, 1, 1), np.float32)


def upsample_maps(cells: np.ndarray, height: int, width: int) -> np.ndarray:
    """Native-resolution maps [B, h, w] -> bilinearly upsampled, normalised float32 [B, H, W] in 0..1."""
    out = np.zeros((len(cells), height, width), np.float32)
    for i, cam in enumerate(cells):
        out[i] = normalise_map(cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR))
    return out


def grad_cam(model: keras.Model, images: np.ndarray, layer_name: str, batch_size: int = 16,
             target: Target = "auto") -> np.ndarray:
    """Grad-CAM heatmaps upsampled to the input: float32 [B, H, W] in 0..1 (see ``grad_cam_cells``)."""
    x = _images(images)
    return upsample_maps(grad_cam_cells(model, x, layer_name, batch_size, target), x.shape[1], x.shape[2])


def peak_points(cells: np.ndarray, height: int, width: int) -> np.ndarray:
    """Where each map peaks, in input pixels: int [B, 2] (row, col) at the centre of its hottest cell.

    Taking the cell centre (not the argmax of the upsampled map) matters for coarse maps: a 2x2
    map upsampled bilinearly has a flat plateau reaching the image corner.
    """
    b, h, w = cells.shape
    flat = cells.reshape(b, -1).argmax(axis=1)
    rows, cols = np.divmod(flat, w)
    return np.stack([((rows + 0.5) * height / h).astype(int), ((cols + 0.5) * width / w).astype(int)], axis=1)


def normalise_map(heatmap: np.ndarray) -> np.ndarray:
    """A non-negative map divided by its maximum: float32 in 0..1; NaN/inf and all-zero maps give zeros."""
    h = np.nan_to_num(np.asarray(heatmap, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    h = np.maximum(h, 0.0)
    peak = float(h.max()) if h.size else 0.0
    return h / peak if peak > 0.0 else np.zeros_like(h)


# ------------------------------------------------------------------------------------- integrated gradients


@dataclass(frozen=True)
class IntegratedGradients:
    """Raw integrated gradients (Sundararajan et al. 2017) and what completeness compares them with.

    attributions: float32 [B, H, W, C], (x - baseline) * mean gradient along the straight path, in score units.
    scores, baseline_scores: float32 [B], the model score f(x) and f(baseline).
    """

    attributions: np.ndarray
    scores: np.ndarray
    baseline_scores: np.ndarray

    @property
    def completeness_error(self) -> np.ndarray:
        """|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)|, float64 [B] (0 is exact)."""
        total = self.attributions.reshape(len(self.attributions), -1).sum(axis=1, dtype=np.float64)
        delta = self.scores.astype(np.float64) - self.baseline_scores.astype(np.float64)
        return np.abs(total - delta) / np.maximum(np.abs(delta), 1e-12)

    def heatmaps(self, clip_percentile: float = 99.5) -> np.ndarray:
        """|attributions summed over channels|, per image divided by its ``clip_percentile`` percentile and
        clipped to 1 (100 = divide by the maximum; a few extreme pixels otherwise wash out the map).
        float32 [B, H, W] in 0..1."""
        maps = np.abs(self.attributions.sum(axis=-1))
        out = np.zeros(maps.shape, np.float32)
        for i, m in enumerate(maps):
            scale = float(np.percentile(m, clip_percentile)) if m.size else 0.0
            if not np.isfinite(scale) or scale <= 0.0:
                scale = float(m.max()) if m.size else 0.0
            out[i] = np.clip(m / scale, 0.0, 1.0) if np.isfinite(scale) and scale > 0.0 else 0.0
        return out


def integrated_gradients_raw(model: keras.Model, images: np.ndarray, steps: int = 32,
                             baseline: np.ndarray | None = None, batch_size: int = 16,
                             target: Target = "probability") -> IntegratedGradients:
    """Integrated gradients of each image's score along the straight path from ``baseline`` to the image.

    images: float32 [B, H, W, C], 0..255; baseline: None (black, zeros), [H, W, C] or [B, H, W, C].
    The path integral is the trapezoid rule over ``steps`` (>= 2) evenly spaced points including both ends,
    evaluated ``batch_size`` model inputs at a time (the last batch zero-padded). Completeness: attributions sum to about
    f(x) - f(baseline), the gap shrinking with more steps (see ``completeness_error``).
    """
    from pipeline.evaluation.gradients import score_and_input_grad

    x = _images(images)
    if steps < 2:
        raise ValueError(f"steps must be >= 2; got {steps}")
    base = np.zeros_like(x) if baseline is None else np.broadcast_to(np.asarray(baseline, np.float32), x.shape)
    alphas = np.linspace(0.0, 1.0, steps, dtype=np.float32)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] *= 0.5  # trapezoid
    mean_grads = np.zeros(x.shape, np.float64)
    scores = np.zeros(len(x), np.float32)
    baseline_scores = np.zeros(len(x), np.float32)
    pairs = [(i, j) for i in range(len(x)) for j in range(steps)]
    for start in range(0, len(pairs), _positive(batch_size, "batch_size")):
        chunk = pairs[start:start + batch_size]
        img, step = np.array([p[0] for p in chunk]), np.array([p[1] for p in chunk])
        a = alphas[step][:, None, None, None]
        batch = base[img] + a * (x[img] - base[img])
        s, g = score_and_input_grad(model, pad_rows(batch, batch_size), target=target)  # one shape: one compile
        s, g = s[:len(chunk)], g[:len(chunk)]
        np.add.at(mean_grads, img, g * weights[step][:, None, None, None])
        scores[img[step == steps - 1]] = s[step == steps - 1]
        baseline_scores[img[step == 0]] = s[step == 0]
    attributions = ((x - base) * mean_grads).astype(np.float32)
    return IntegratedGradients(attributions, scores, baseline_scores)


def integrated_gradients(model: keras.Model, images: np.ndarray, steps: int = 32,
                         baseline: np.ndarray | None = None, batch_size: int = 16) -> np.ndarray:
    """Integrated-gradient heatmaps for display: float32 [B, H, W] in 0..1 (see ``integrated_gradients_raw``
    and ``IntegratedGradients.heatmaps``)."""
    return integrated_gradients_raw(model, images, steps=steps, baseline=baseline, batch_size=batch_size).heatmaps()


# ------------------------------------------------------------------------------------------- pointing game


def pointing_game_hits(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Whether each heatmap's maximum (the first in raster order on ties) lies inside its mask.

    heatmaps: [N, H, W]; masks: [N, H, W], non-zero = inside. An empty mask is a miss.
    Returns bool [N]. (``pipeline.evaluation.metrics.pointing_game`` gives the score over non-empty masks.)
    """
    h = np.nan_to_num(np.asarray(heatmaps, np.float64), nan=-np.inf)
    m = np.asarray(masks) != 0
    if h.shape != m.shape or h.ndim != 3:
        raise ValueError(f"heatmaps and masks must both be [N, H, W]; got {h.shape} and {m.shape}")
    flat = m.reshape(len(m), -1)
    return flat[np.arange(len(m)), h.reshape(len(h), -1).argmax(axis=1)]


# -------------------------------------------------------------------------------------------------- pictures


def overlay_png(flair: np.ndarray, heatmap: np.ndarray | None, mask: np.ndarray | None, path: str | Path,
                title: str | None = None, pred_mask: np.ndarray | None = None) -> Path:
    """Save a PNG: grayscale FLAIR, the heatmap (0..1) blended in with a perceptual colormap, the true mask
    outlined in green and ``pred_mask`` in magenta (1 px). Images of 128 px or less are drawn twice the size.

    flair: [H, W] (uint8, or any numeric: clipped to 0..255); heatmap, mask, pred_mask: [H, W] or None.
    Written atomically. Returns the path.
    """
    picture = _panel(flair, heatmap=heatmap, outlines=[(mask, TRUTH_BGR), (pred_mask, PRED_BGR)])
    return _write_png(_with_title(picture, title), path)


def triptych_png(image: np.ndarray, flair_channel: int, truth: np.ndarray, pred: np.ndarray, path: str | Path,
                 title: str | None = None) -> Path:
    """Save image | truth | prediction side by side: the slice's channels as colour (a 3-channel image, else
    the FLAIR), then the FLAIR with the true mask (green) and with the predicted mask (magenta) outlined.

    image: [H, W, C] uint8; truth, pred: [H, W] (non-zero = tumour). Written atomically. Returns the path.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be [H, W, C]; got shape {image.shape}")
    flair = image[..., flair_channel]
    colour = _to_uint8(image)[..., ::-1] if image.shape[-1] == 3 else flair  # RGB -> BGR for OpenCV
    panels = [
        _label(_panel(colour), "image"),
        _label(_panel(flair, outlines=[(truth, TRUTH_BGR)]), "truth"),
        _label(_panel(flair, outlines=[(pred, PRED_BGR)]), "prediction"),
    ]
    gap = np.full((panels[0].shape[0], 2, 3), 255, np.uint8)
    row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    return _write_png(_with_title(row, title), path)


def _panel(picture: np.ndarray, heatmap: np.ndarray | None = None,
           outlines: list[tuple[np.ndarray | None, tuple[int, int, int]]] = ()) -> np.ndarray:
    """One BGR uint8 panel from a grayscale [H, W] or BGR [H, W, 3] picture, upscaled x2 when small."""
    base = _to_uint8(picture)
    bgr = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR) if base.ndim == 2 else np.ascontiguousarray(base)
    height, width = bgr.shape[:2]
    scale = 2 if max(height, width) <= UPSCALE_UP_TO else 1
    size = (width * scale, height * scale)
    if scale != 1:
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
    if heatmap is not None:
        heat = _check_shape(heatmap, (height, width), "heatmap").astype(np.float32)
        heat = np.clip(np.nan_to_num(heat, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
        colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), HEAT_COLORMAP)
        bgr = cv2.addWeighted(bgr, 1.0 - HEAT_ALPHA, colour, HEAT_ALPHA, 0.0)
    for mask, colour_bgr in outlines:
        if mask is None:
            continue
        m = (_check_shape(mask, (height, width), "mask") != 0).astype(np.uint8)
        if scale != 1:
            m = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(bgr, contours, -1, colour_bgr, thickness=1)
    return bgr


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(panel, text, (4, panel.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return panel


def _with_title(picture: np.ndarray, title: str | None) -> np.ndarray:
    if not title:
        return picture
    strip = np.zeros((TITLE_PX, picture.shape[1], 3), np.uint8)
    cv2.putText(strip, title, (4, TITLE_PX - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, picture], axis=0)


def _write_png(picture: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), picture, [cv2.IMWRITE_PNG_COMPRESSION, 6]):
            raise OSError(f"OpenCV could not write {tmp}")
    return path


def _to_uint8(picture: np.ndarray) -> np.ndarray:
    p = np.asarray(picture)
    if p.dtype == np.uint8:
        return p
    return np.clip(np.nan_to_num(p.astype(np.float32)), 0, 255).round().astype(np.uint8)


def _check_shape(array: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    a = np.asarray(array)
    if a.shape != shape:
        raise ValueError(f"{name} must have the image's shape {shape}; got {a.shape}")
    return a


def _images(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected images [B, H, W, C]; got shape {x.shape}")
    return x


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    return value


__all__ = [
    "IntegratedGradients", "grad_cam", "integrated_gradients", "integrated_gradients_raw", "normalise_map",
    "overlay_png", "pointing_game_hits", "triptych_png",
]
