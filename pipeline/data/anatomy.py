"""Synthetic brain-MRI anatomy: ``generate_patient`` draws one patient's scan as float intensities and labels.

``pipeline.data.demo`` writes these patients in the real on-disk layouts. The anatomy:

- a head (ellipse with per-patient size, aspect, rotation and a wobbly outline) with a bright
  scalp, a dark skull and a thin CSF rim; below the widest slice the head stays wide while the
  brain shrinks (skull base: blotchy fat/muscle), above it both shrink towards the vertex;
- brain with folded cortex (grey matter and CSF-filled sulci along zero lines of a smooth
  random field), white matter, deep grey nuclei, the interhemispheric fissure and lateral
  ventricles (CSF: dark in T1 and FLAIR, bright in T2);
- at most one tumour per patient: a 3D blob (perturbed ellipsoid, largest connected component,
  so it covers a contiguous run of slices) in one hemisphere, hyperintense in FLAIR and T2,
  hypointense in T1, with an enhancing rim and necrotic centre (T1gd) in some patients;
  BraTS labels 2 (edema) ⊃ 4 (enhancing) ⊃ 1 (necrotic / non-enhancing core);
- per-patient tissue contrast, intensity gain, a smooth multiplicative bias field and
  Rician noise.

Coordinates: the in-plane frame is [-1, 1] x [-1, 1] (x = columns, left to right of the image;
y = rows, anterior at the top), z runs from -1 (skull base) to +1 (vertex). Sizes below are in
these units unless stated otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from pipeline.sequences import SEQUENCES

# Relative tissue intensities per sequence, columns in SEQUENCES order (t1, t1gd, t2, flair).
# Tumour FLAIR/T2 values are set per patient from its contrast (see draw_anatomy).
_TISSUES = ("wm", "gm", "csf", "fat", "muscle", "bone", "edema", "core", "enh")
_BASE_TABLE = np.array(
    [
        [0.80, 0.78, 0.40, 0.50],  # wm
        [0.58, 0.60, 0.60, 0.64],  # gm
        [0.15, 0.18, 1.10, 0.08],  # csf
        [1.00, 1.00, 0.80, 0.90],  # fat (scalp, skull base)
        [0.45, 0.50, 0.30, 0.38],  # muscle
        [0.05, 0.05, 0.04, 0.04],  # bone
        [0.66, 0.66, 0.00, 0.00],  # edema (label 2)
        [0.46, 0.46, 0.00, 0.00],  # necrotic / non-enhancing core (label 1)
        [0.70, 1.30, 0.00, 0.00],  # enhancing tumour (label 4)
    ],
    dtype=np.float32,
)
_T = {name: i for i, name in enumerate(_TISSUES)}


# ----------------------------------------------------------------------------------------------
# Random draws
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tumour:
    """One tumour: centre (x, y, z), semi-axes (rx, ry, rz), in-plane angle (rad), look."""

    x: float
    y: float
    z: float
    rx: float
    ry: float
    rz: float
    angle: float
    roughness: float  # amplitude of the shape noise (0: ellipsoid)
    flair_contrast: float  # tumour FLAIR / mean brain FLAIR
    enhancing: bool  # enhancing rim (label 4) around a necrotic centre (label 1)
    core_level: float  # blob-field level above which the core starts (field is 1 at the centre)
    necrosis_level: float
    keep_to_hemisphere: bool


@dataclass(frozen=True)
class Anatomy:
    """Per-patient shape and contrast parameters (units: the [-1, 1] frame)."""

    cx: float
    cy: float
    angle: float  # head rotation, rad
    a: float  # head semi-axis left-right
    b: float  # head semi-axis anterior-posterior
    egg: float  # how much narrower the head is anteriorly
    z_widest: float  # z of the widest head section
    z_top: float  # z where the head ends
    z_brain_bottom: float
    scalp: float  # thicknesses, in head-normalised radius units
    skull: float
    rim: float
    cortex: float
    sulcus_depth: float
    sulcus_width: float
    ventricle_scale: float
    table: np.ndarray  # float32 [9 tissues, 4 sequences]
    bias: np.ndarray  # float32 [4 sequences, 5]: x, y, xy, x^2, z coefficients
    noise_sigma: np.ndarray  # float32 [4]
    tumour: Tumour | None


def draw_anatomy(rng: np.random.Generator, has_tumour: bool, low_contrast: bool) -> Anatomy:
    """Draw one patient's anatomy and contrast."""
    a = rng.uniform(0.60, 0.71)
    z_widest = rng.uniform(-0.25, -0.05)
    table = _BASE_TABLE * rng.uniform(0.92, 1.08, _BASE_TABLE.shape).astype(np.float32)
    tumour = _draw_tumour(rng, low_contrast) if has_tumour else None
    if tumour is not None:
        brain_flair = 0.5 * (table[_T["wm"], 3] + table[_T["gm"], 3])
        brain_t2 = 0.5 * (table[_T["wm"], 2] + table[_T["gm"], 2])
        k = tumour.flair_contrast
        table[_T["edema"], 3] = brain_flair * k
        table[_T["core"], 3] = brain_flair * k * rng.uniform(0.85, 1.05)
        table[_T["enh"], 3] = brain_flair * k * rng.uniform(0.9, 1.0)
        table[_T["edema"], 2] = brain_t2 * (1 + 0.9 * (k - 1))
        table[_T["core"], 2] = brain_t2 * (1 + 1.2 * (k - 1))
        table[_T["enh"], 2] = brain_t2 * (1 + 0.7 * (k - 1))
    bias = rng.normal(0, 1, (4, 5)).astype(np.float32) * np.float32([0.12, 0.12, 0.08, 0.06, 0.10])
    return Anatomy(
        cx=rng.uniform(-0.05, 0.05),
        cy=rng.uniform(-0.05, 0.06),
        angle=rng.normal(0, np.deg2rad(6)),
        a=a,
        b=min(a * rng.uniform(1.17, 1.32), 0.9),
        egg=rng.uniform(0.04, 0.12),
        z_widest=z_widest,
        z_top=rng.uniform(1.0, 1.08),
        z_brain_bottom=rng.uniform(-1.02, -0.88),
        scalp=rng.uniform(0.05, 0.08),
        skull=rng.uniform(0.03, 0.045),
        rim=rng.uniform(0.012, 0.025),
        cortex=rng.uniform(0.035, 0.05),
        sulcus_depth=rng.uniform(0.10, 0.16),
        sulcus_width=rng.uniform(0.05, 0.12),
        ventricle_scale=rng.uniform(0.7, 1.4),
        table=table,
        bias=bias,
        noise_sigma=rng.uniform(0.012, 0.03, 4).astype(np.float32),
        tumour=tumour,
    )


def _draw_tumour(rng: np.random.Generator, low_contrast: bool) -> Tumour:
    side = float(rng.choice([-1.0, 1.0]))
    z = rng.uniform(-0.35, 0.55)
    rx, ry = (float(r) for r in rng.uniform(0.14, 0.32, 2))  # LGG-like: 15-30% of the brain across
    enhancing = bool(rng.random() < 0.55)
    return Tumour(
        x=side * rng.uniform(0.2, 0.5),  # fractions of the brain's half-width at z (see _blob_field)
        y=rng.uniform(-0.6, 0.6),
        z=z,
        rx=rx,
        ry=ry,
        rz=rng.uniform(0.18, 0.48),
        angle=rng.uniform(0, np.pi),
        roughness=rng.uniform(0.25, 0.5),
        flair_contrast=rng.uniform(1.15, 1.3) if low_contrast else rng.uniform(1.45, 2.0),
        enhancing=enhancing,
        core_level=rng.uniform(0.35, 0.5) if enhancing else rng.uniform(0.45, 0.7),
        necrosis_level=rng.uniform(0.5, 0.65),
        keep_to_hemisphere=bool(rng.random() < 0.8),
    )


# ----------------------------------------------------------------------------------------------
# Smooth random fields
# ----------------------------------------------------------------------------------------------


class SmoothNoise:
    """Smooth, roughly unit-variance 3D noise: a coarse random lattice, interpolated on demand.

    ``cells`` lattice cells span the in-plane frame [-1, 1]; z uses the same spacing, so the
    field's correlation length is the same in all three directions.
    """

    def __init__(self, rng: np.random.Generator, cells: int, z_lo: float, z_hi: float):
        self.step = 2.0 / cells
        self.z0 = z_lo - self.step
        nz = int(np.ceil((z_hi - self.z0) / self.step)) + 2
        low = ndimage.gaussian_filter(rng.standard_normal((nz, cells, cells)), 0.6, mode="wrap")
        self.low = (low / low.std()).astype(np.float32)

    def __call__(self, z: np.ndarray, size: int, box: tuple[slice, slice], cubic: bool = True) -> np.ndarray:
        """Field at slice positions z [n], cropped to ``box`` (rows, cols) of a size x size frame -> float32 [n, h, w]."""
        t = (np.asarray(z, dtype=np.float64) - self.z0) / self.step
        i0 = np.clip(np.floor(t).astype(int), 0, len(self.low) - 2)
        w = (t - i0).astype(np.float32)
        planes = (1 - w[:, None, None]) * self.low[i0] + w[:, None, None] * self.low[i0 + 1]
        how = cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR
        return np.stack([cv2.resize(p, (size, size), interpolation=how)[box] for p in planes])


@dataclass
class _Fields:
    """The smooth random fields of one patient, evaluated on the head crop: float32 [n, h, w] each."""

    fold: np.ndarray  # gyri and sulci
    texture: np.ndarray  # fine tissue texture
    outline: np.ndarray  # head and brain outline wobble
    blob: np.ndarray  # tumour shape
    blotch: np.ndarray  # tumour shape detail and heterogeneity
    base: np.ndarray  # skull-base tissue

    def slab(self, sl: slice) -> _Fields:
        return _Fields(*(getattr(self, name)[sl] for name in self.__dataclass_fields__))


_FIELD_CELLS = {"fold": 30, "texture": 56, "outline": 5, "blob": 14, "blotch": 26, "base": 26}
_FIELD_SMOOTH = {"fold", "outline", "blob"}  # bicubic; the others are fine enough for bilinear


def _draw_fields(rng: np.random.Generator, z: np.ndarray, size: int, box: tuple[slice, slice]) -> _Fields:
    z_lo, z_hi = float(z.min()), float(z.max())
    return _Fields(**{
        name: SmoothNoise(rng, cells, z_lo, z_hi)(z, size, box, cubic=name in _FIELD_SMOOTH)
        for name, cells in _FIELD_CELLS.items()
    })


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below lo, 1 above hi, linear in between (float32)."""
    return np.clip((x - np.float32(lo)) * np.float32(1 / (hi - lo)), 0, 1, dtype=np.float32)


@dataclass
class _Geometry:
    """Head-frame coordinates and depths for a stack of slices, on the crop ``box`` of the frame
    that can hold the head; arrays [n, h, w] or broadcastable to it."""

    size: int
    box: tuple[slice, slice]  # rows, cols of the frame
    xr: np.ndarray  # [1, h, w] x in the head frame (rotated, centred)
    yr: np.ndarray  # [1, h, w]
    z: np.ndarray  # [n, 1, 1]
    head_depth: np.ndarray  # [n, h, w] radius units inside the head outline (> 0 inside)
    brain_depth: np.ndarray  # [n, h, w] radius units inside the brain surface (> 0 inside)
    brain_radius: np.ndarray  # [n, 1, 1] brain outline radius at each slice (0: no brain)
    brain_dy: np.ndarray  # [n, 1, 1] posterior shift of the brain centre

    def slab(self, sl: slice) -> _Geometry:
        """The same geometry for slices ``sl`` only."""
        return _Geometry(self.size, self.box, self.xr, self.yr, self.z[sl], self.head_depth[sl],
                         self.brain_depth[sl], self.brain_radius[sl], self.brain_dy[sl])


def _head_box(an: Anatomy, size: int) -> tuple[slice, slice]:
    """Rows and columns of the frame that can contain the head (rotated ellipse plus margin)."""
    ax, by = an.a * (1 + an.egg) * 1.06, an.b * 1.06
    cos, sin = abs(np.cos(an.angle)), abs(np.sin(an.angle))
    half_x, half_y = np.hypot(ax * cos, by * sin), np.hypot(ax * sin, by * cos)

    def span(centre: float, half: float) -> slice:
        lo = int(np.floor((centre - half + 1) * size / 2)) - 2
        hi = int(np.ceil((centre + half + 1) * size / 2)) + 2
        return slice(max(lo, 0), min(hi, size))

    return span(an.cy, half_y), span(an.cx, half_x)


def _geometry(an: Anatomy, f: _Fields, z: np.ndarray, size: int) -> _Geometry:
    box = _head_box(an, size)
    c = (np.arange(size, dtype=np.float32) + 0.5) * (2 / size) - 1
    x, y = c[None, None, box[1]] - an.cx, c[None, box[0], None] - an.cy
    cos, sin = np.float32(np.cos(an.angle)), np.float32(np.sin(an.angle))
    xr, yr = cos * x + sin * y, -sin * x + cos * y
    zz = np.asarray(z, np.float32)[:, None, None]

    # Head section radius per slice: an ellipsoid cap above the widest section, slowly
    # narrowing (neck, face) below it.
    zw = an.z_widest
    above = np.clip((zz - zw) / (an.z_top - zw), 0, 1)
    below = np.clip((zw - zz) / (zw + 1.1), 0, None)
    head_r = np.where(zz >= zw, np.sqrt(1 - above**2), 1 - 0.12 * below**2).astype(np.float32)
    wobble = f.outline
    rho = np.sqrt((xr / (an.a * (1 + an.egg * yr))) ** 2 + (yr / an.b) ** 2)
    head_depth = head_r - rho * (1 + 0.025 * wobble)

    # Brain: inside the skull above the widest section; a rounded bottom below it, shifted
    # posteriorly (cerebellum, temporal lobes) and leaving room for skull-base tissue.
    inner = np.maximum(head_r - an.scalp - an.skull - an.rim, 0)
    bottom = np.clip((zw - zz) / (zw - an.z_brain_bottom), 0, 1)
    brain_r = (inner * np.sqrt(1 - bottom**2)).astype(np.float32)
    brain_dy = (0.25 * an.b * bottom**1.5).astype(np.float32)
    rho_b = np.sqrt((xr / (an.a * (1 + an.egg * yr))) ** 2 + ((yr - brain_dy) / an.b) ** 2)
    brain_depth = brain_r - rho_b * (1 + 0.02 * wobble + 0.008 * f.fold)
    return _Geometry(size, box, xr, yr, zz, head_depth, brain_depth, brain_r, brain_dy)


# ----------------------------------------------------------------------------------------------
# Tumour
# ----------------------------------------------------------------------------------------------


def _blob_field(an: Anatomy, f: _Fields, g: _Geometry) -> np.ndarray:
    """Tumour blob field [n, h, w]: about 1 at the centre, > 0 inside the tumour (before masking)."""
    t = an.tumour
    assert t is not None
    # The centre is placed relative to the brain's size and position at the tumour's z.
    zs = g.z[:, 0, 0]
    r_at = float(np.interp(t.z, zs, g.brain_radius[:, 0, 0])) if len(zs) > 1 else float(g.brain_radius.max())
    r_at = max(r_at, 0.6 * (1 - an.scalp - an.skull))
    dy_at = float(np.interp(t.z, zs, g.brain_dy[:, 0, 0])) if len(zs) > 1 else 0.0
    cx, cy = t.x * r_at * an.a, t.y * r_at * an.b + dy_at
    cos, sin = np.float32(np.cos(t.angle)), np.float32(np.sin(t.angle))
    u, v = g.xr - cx, g.yr - cy
    u, v = cos * u + sin * v, -sin * u + cos * v
    # z enters to the 4th power: flat-ended, so the end slices of the run are not pin-pricks
    e = np.sqrt((u / t.rx) ** 2 + (v / t.ry) ** 2 + ((g.z - t.z) / t.rz) ** 4)
    return 1 - e + t.roughness * (f.blob + 0.35 * f.blotch)


def tumour_labels(an: Anatomy, f: _Fields, g: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """BraTS label map uint8 [n, h, w] (0, 1, 2, 4) and the blob field float32 [n, h, w] (zeros if no tumour).

    The tumour is the largest 3D connected part of the blob inside the brain, so the slices
    that show it form one contiguous run.
    """
    shape = g.brain_depth.shape
    if an.tumour is None:
        return np.zeros(shape, np.uint8), np.zeros(shape, np.float32)
    t = an.tumour
    field = _blob_field(an, f, g)
    inside = (field > 0) & (g.brain_depth > 0.02)
    if t.keep_to_hemisphere:  # the falx stops it at the midline
        inside &= np.sign(t.x) * g.xr > -0.01
    components, count = ndimage.label(inside)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        inside = components == int(np.argmax(sizes))
    labels = np.where(inside, np.uint8(2), np.uint8(0))
    inner = field + 0.2 * f.blotch  # irregular inner borders
    if t.enhancing:
        labels[inside & (inner > t.core_level)] = 4
        labels[inside & (inner > t.necrosis_level)] = 1
    else:
        labels[inside & (inner > t.core_level)] = 1
    return labels, field


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def tissue_weights(an: Anatomy, f: _Fields, g: _Geometry, labels: np.ndarray, field: np.ndarray) -> np.ndarray:
    """How much of each tissue (``_TISSUES`` order) each pixel shows, texture included: float32 [9, n, h, w].

    The image of a sequence is the weighted sum of the tissues' intensities for it (partial
    volume at the edges); the weights do not depend on the sequence.
    """
    fold = np.abs(f.fold)
    texture = f.texture
    d_b = g.brain_depth
    zc = g.z - an.z_widest

    # Inside the brain: cortex along the surface and lining the sulci, CSF in the sulci.
    gm = np.maximum(
        _ramp(an.cortex + 0.012 - d_b, 0, 0.012),
        _ramp(0.5 - fold, 0, 0.2) * _ramp(an.sulcus_depth + an.cortex - d_b, 0, 0.03),
    )
    csf = _ramp(an.sulcus_width - fold, 0, 0.06) * _ramp(an.sulcus_depth - d_b, 0, 0.04)
    # Interhemispheric fissure, interrupted by the corpus callosum in the middle slices.
    cc_half = np.float32(0.3 * an.b) * np.clip(1 - ((zc - 0.3) / 0.35) ** 2, 0, 1) ** 0.3
    along = _ramp(np.abs(g.yr - g.brain_dy) - cc_half, 0, 0.04)
    ax = np.abs(g.xr)
    csf = np.maximum(csf, 0.8 * _ramp(0.009 - ax, 0, 0.005) * along)
    gm = np.maximum(gm, _ramp(0.035 - ax, 0, 0.015) * along)
    # Deep grey nuclei (basal ganglia, thalami) and lateral ventricles, near the centre of the
    # middle slices (computed on that window only).
    win = np.s_[:, *_centre_window(an, g, 0.5)]
    xr, yr, dy = g.xr[win], g.yr[win], g.brain_dy
    deep_q = np.clip(1 - ((zc - 0.15) / 0.25) ** 2, 0, 1)
    if deep_q.any():
        for side in (-1, 1):
            e = ((xr - side * 0.19 * an.a) / (0.08 * an.a)) ** 2 + ((yr - 0.03 - dy) / (0.2 * an.b)) ** 2
            gm[win] = np.maximum(gm[win], 0.6 * _ramp(deep_q - e, 0, 0.3))
    vent_q = np.clip(1 - ((zc - 0.3) / 0.3) ** 2, 0, 1)
    if vent_q.any():
        csf[win] = np.maximum(csf[win], _ventricles(an, vent_q, xr, yr - dy, fold[win]))
    tex_b = 1 + 0.035 * texture

    # Tumour: edema with a core (necrotic or non-enhancing) and an enhancing rim.
    tumour = labels > 0
    has_tumour = bool(tumour.any())
    if has_tumour:
        tw = np.where(tumour, 0.55 + 0.45 * _ramp(field, 0, 0.15), 0).astype(np.float32)
        core, enh = (labels == 1).astype(np.float32), (labels == 4).astype(np.float32)
        rows, cols = np.flatnonzero(tumour.any((0, 2))), np.flatnonzero(tumour.any((0, 1)))
        sub = np.s_[:, max(rows[0] - 2, 0) : rows[-1] + 3, max(cols[0] - 2, 0) : cols[-1] + 3]
        core[sub] = ndimage.uniform_filter(core[sub], (1, 3, 3))  # soften the inner borders a little
        enh[sub] = ndimage.uniform_filter(enh[sub], (1, 3, 3))
        heterogeneity = 1 + 0.12 * f.blotch
    else:
        tw = np.float32(0)

    # Layers from the outside in: scalp (fat, inner muscle), skull, CSF rim or skull-base
    # tissue, brain.
    edge = 2.0 / g.size
    hd = g.head_depth
    head = _ramp(hd, 0, edge) * (1 + 0.03 * texture)
    skull = _ramp(hd, an.scalp, an.scalp + edge)
    cranial = _ramp(hd, an.scalp + an.skull, an.scalp + an.skull + edge)
    in_brain = head * _ramp(d_b, 0, edge)
    out_brain = head - in_brain
    in_cranium = out_brain * cranial
    in_scalp = (out_brain - in_cranium) * (1 - skull)
    scalp_muscle = _ramp(hd, 0.55 * an.scalp, an.scalp)
    base = f.base
    base_tissue = in_cranium * _ramp(-d_b, an.rim, 2.5 * an.rim)  # away from the brain: skull base, not CSF
    base_fat, base_dark = _ramp(base, -0.8, 0.9), _ramp(-base, 1.6, 2.0)

    w = np.zeros((len(_TISSUES), *hd.shape), np.float32)
    brain = in_brain * (1 - tw) * tex_b
    w[_T["wm"]] = brain * (1 - gm) * (1 - csf)
    w[_T["gm"]] = brain * gm * (1 - csf)
    w[_T["csf"]] = brain * csf + in_cranium - base_tissue
    w[_T["fat"]] = in_scalp * (1 - scalp_muscle) + base_tissue * (1 - base_dark) * base_fat
    w[_T["muscle"]] = in_scalp * scalp_muscle + base_tissue * (1 - base_dark) * (1 - base_fat)
    w[_T["bone"]] = (out_brain - in_cranium) * skull + base_tissue * base_dark
    if has_tumour:
        t = in_brain * tw * heterogeneity
        w[_T["core"]], w[_T["enh"]] = t * core, t * enh
        w[_T["edema"]] = t * np.maximum(1 - core - enh, 0)
    return w


def _ventricles(an: Anatomy, q: np.ndarray, x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """CSF fraction of the lateral ventricles [n, h, w] at brain-centred x, y [1, h, w] with extent q [n, 1, 1]
    (0..1): two bodies close to the midline in the middle, diverging at both ends (frontal horns,
    atria); larger for larger ``ventricle_scale``."""
    sc = an.ventricle_scale
    v = (y + 0.02) / (0.3 * an.b * sc**0.3)
    half_w = 0.05 * an.a * sc * (1 + 0.6 * _ramp(v, 0.2, 0.9) + 0.3 * _ramp(-v, 0.5, 1.0))
    out = np.zeros(fold.shape, np.float32)
    for side in (-1, 1):
        centre = side * an.a * (0.022 + 0.05 * sc + 0.05 * v**2 + 0.04 * _ramp(v, 0, 1))
        e = ((x - centre) / half_w) ** 2 + v**2
        out = np.maximum(out, _ramp(q - e + 0.15 * (fold - 0.8), 0, 0.12))
    return out


def _centre_window(an: Anatomy, g: _Geometry, half: float) -> tuple[slice, slice]:
    """Rows and columns of the crop within ``half`` (frame units, plus a rotation margin) of the head centre."""
    r = half * 1.15 * g.size / 2 + 2

    def span(centre: float, box: slice, length: int) -> slice:
        mid = (centre + 1) * g.size / 2 - box.start
        return slice(int(np.clip(mid - r, 0, length)), int(np.clip(mid + r + 1, 0, length)))

    return span(an.cy, g.box[0], g.xr.shape[1]), span(an.cx, g.box[1], g.xr.shape[2])


def render(
    an: Anatomy, f: _Fields, g: _Geometry, labels: np.ndarray, field: np.ndarray,
    sequences: Sequence[str], rng: np.random.Generator,
) -> np.ndarray:
    """Relative intensities float32 [n, S, S, len(sequences)] (brain ~0.4-0.8, background ~0) of the whole frame.

    Works through a few slices at a time: small temporaries stay in cache and skip the page
    faults of fresh whole-volume arrays, which makes it about twice as fast.
    """
    cols = [SEQUENCES.index(s) for s in sequences]
    size, (rows_box, cols_box) = g.size, g.box
    n, h, wd = g.brain_depth.shape
    c = (np.arange(size, dtype=np.float32) + 0.5) * (2 / size) - 1
    biases = []
    for s in cols:
        bx, by, bxy, bxx, _ = an.bias[s]
        biases.append(np.exp(bx * c[None, :] + by * c[:, None] + bxy * c[None, :] * c[:, None] + bxx * c[None, :] ** 2))
    # Rician noise: the magnitude of signal plus complex Gaussian noise. The noise of each slice
    # and channel is a random window of one bank per patient (fresh normals for every pixel
    # would add about a quarter to the generation time).
    pad = 32
    bank = rng.standard_normal((2, size + pad, size + pad), dtype=np.float32)
    offsets = rng.integers(0, pad + 1, (n, len(cols), 2))
    out = np.empty((n, size, size, len(cols)), np.float32)
    step = max(1, 200_000 // (h * wd))
    for s0 in range(0, n, step):
        sl = slice(s0, min(s0 + step, n))
        gs = g.slab(sl)
        w = tissue_weights(an, f.slab(sl), gs, labels[sl], field[sl])
        used = [t for t in range(len(w)) if w[t].any()]
        signal = np.zeros((sl.stop - s0, size, size), np.float32)
        for k, s in enumerate(cols):
            crop = signal[:, rows_box, cols_box]  # a view
            crop[:] = 0
            for t in used:  # (not a matmul: a multi-threaded BLAS spins on these skinny products)
                crop += an.table[t, s] * w[t]
            crop *= biases[k][rows_box, cols_box] * np.exp(an.bias[s, 4] * gs.z)
            sigma = an.noise_sigma[s]
            for j in range(sl.stop - s0):
                (oy, ox) = offsets[s0 + j, k]
                re = signal[j] + sigma * bank[0, oy : oy + size, ox : ox + size]
                im = sigma * bank[1, ox : ox + size, oy : oy + size]
                re *= re
                im *= im
                re += im
                out[s0 + j, ..., k] = np.sqrt(re)
    return out


def _to_frame(a: np.ndarray, g: _Geometry) -> np.ndarray:
    """A crop [n, h, w] placed in the full frame [n, S, S] (zeros outside)."""
    out = np.zeros((a.shape[0], g.size, g.size), a.dtype)
    out[:, g.box[0], g.box[1]] = a
    return out


# ----------------------------------------------------------------------------------------------
# One patient
# ----------------------------------------------------------------------------------------------


@dataclass
class SyntheticPatient:
    """A generated scan, slices inferior to superior.

    image: float32 [n, S, S, C] relative intensities (brain ~0.4-0.8), channels named ``sequences``;
    labels: uint8 [n, S, S], 0 background, 1 necrotic/non-enhancing core, 2 edema, 4 enhancing;
    brain: bool [n, S, S], the brain (for skull stripping); z: float [n], slice positions (head frame).
    """

    image: np.ndarray
    labels: np.ndarray
    brain: np.ndarray
    sequences: tuple[str, ...]
    z: np.ndarray
    anatomy: Anatomy


def generate_patient(
    rng: np.random.Generator, n_slices: int, size: int, *, has_tumour: bool = True, low_contrast: bool = False,
    sequences: Sequence[str] = SEQUENCES, z_range: tuple[float, float] | None = None,
) -> SyntheticPatient:
    """One synthetic patient of ``n_slices`` axial slices of ``size`` x ``size`` pixels.

    ``z_range`` (head frame, -1 skull base .. +1 vertex) defaults to a per-patient draw that
    covers the head from the skull base to the vertex, like a kaggle_3m scan.
    """
    an = draw_anatomy(rng, has_tumour, low_contrast)
    if z_range is None:
        z_range = (rng.uniform(-1.0, -0.88), rng.uniform(0.9, 1.0))
    z = np.linspace(*z_range, n_slices, dtype=np.float64)
    fields = _draw_fields(rng, z, size, _head_box(an, size))
    g = _geometry(an, fields, z, size)
    labels, field = tumour_labels(an, fields, g)
    image = render(an, fields, g, labels, field, tuple(sequences), rng)
    return SyntheticPatient(image, _to_frame(labels, g), _to_frame(g.brain_depth > 0, g), tuple(sequences), z, an)
