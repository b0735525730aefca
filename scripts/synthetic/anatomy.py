"""Synthetic frontal chest radiographs with pneumothorax annotations, for demos and tests of the bundle.

``render_case`` draws one PA chest radiograph in numpy and returns it with one boolean mask per pneumothorax
annotation. The pictures are meant to be hard enough that a segmentation model has to learn something: a
pneumothorax is only a few grey levels darker than the lung, its one sharp sign is a faint visceral pleural line,
and the absence of lung markings is the main cue, as on real films.

Geometry. The patient sits in a frame rotated by a small random angle about the image centre. Anatomy is laid
out in normalised frame coordinates: ``x`` is the fraction of the image width from the centre (growing to the image
right, the patient's left) and ``y`` the fraction of the height from the top row. Both scale with the image, so a
non-square image shows a stretched chest, as annotation areas scale with the pixel count ``rows * cols``. Whatever
must stay round whatever the aspect (lung polar geometry, line widths) is measured in pixels of the rotated frame.

Lungs are star-shaped about an interior point, so each is kept as a table ``rho(phi)`` of boundary radii in a local
polar frame whose angle 0 points laterally, -90 degrees towards the apex and +90 degrees towards the diaphragm. A
pneumothorax is where the lung has fallen away from the chest wall: the lung pixels whose relative radius
``r / rho(phi)`` exceeds ``1 - h(phi)`` for a depth profile ``h``, a crescent around some angle of the outer
(apical, lateral or basal) pleura. Pixels are in or out of a region by that exact test, and every change made for
a pneumothorax is masked by the union of the returned regions, so the masks are the truth of what was drawn; only
the detector blur applied to the whole image afterwards spreads it, by about a pixel.

Intensity. The picture is built as a map of relative attenuation (0 for air, about 1 for the thick mediastinum),
then passed through a random exposure curve, quantum noise, detector blur and 8-bit quantisation (MONOCHROME2).
Local structures are computed only over their bounding boxes, and on images of 512 pixels and more bone and soft
tissue at half resolution, which keeps a 1024 x 1024 case quick to draw.

Randomness. The caller's generator gives four seeds in one draw, for the anatomy, the lung texture, the
pneumothoraces and the acquisition. The anatomy, texture and noise of a case therefore do not depend on
``n_regions``: the same generator state with ``n_regions=0`` renders the same chest without its pneumothoraces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from scripts.synthetic.devices import ChestLandmarks, DeviceOptions, DevicesDrawn, LungBox, burn_in, draw_devices

__all__ = [
    "AREA_MAX_1024",
    "AREA_MEDIAN_1024",
    "AREA_MIN_1024",
    "SyntheticChest",
    "render_case",
    "render_chest",
]

AREA_MIN_1024 = 50.0
"""Smallest annotation area drawn, in pixels of a 1024 x 1024 image (scaled by ``rows * cols / 1024**2``)."""
AREA_MEDIAN_1024 = 6_500.0
"""Median of the log-normal annotation area, in pixels of a 1024 x 1024 image."""
AREA_MAX_1024 = 160_000.0
"""Largest annotation area drawn, in pixels of a 1024 x 1024 image; a smaller lung caps it lower."""

_AREA_LOG_SIGMA = 1.25
_MAX_LUNG_FRACTION = 0.8  # a pneumothorax never takes more of its lung than this: the collapsed lung stays visible
_MAX_DEPTH = 0.9  # the collapsed lung keeps at least a tenth of its radius
_MIN_THICKNESS_PX = 1.3  # thinnest a crescent gets, at its ends

_N_ANGLES = 1440
_ANGLES = np.linspace(-np.pi, np.pi, _N_ANGLES, endpoint=False)
_DPHI = 2.0 * np.pi / _N_ANGLES

# Local lung angles (0 lateral, -90 apex, +90 diaphragm) a pneumothorax may cover at most; each lung narrows
# this to the arc of its outer pleura (chest wall, apex and dome), away from the mediastinum and heart.
_PLEURA_SPAN = (np.deg2rad(-140.0), np.deg2rad(130.0))
# Where a pneumothorax is centred: (first angle, last angle) in degrees, and how often; apical, lateral, basal.
_SITES = ((-120.0, -70.0, 0.35), (-70.0, 35.0, 0.45), (35.0, 95.0, 0.20))
_OVERLAP_PROBABILITY = 0.3
_BILATERAL_PROBABILITY = 0.1
_SEPARATION = np.deg2rad(2.0)  # angular gap kept between annotations that must not overlap

_RIGHT, _LEFT = -1, 1  # the patient's right lung is on the image left, towards smaller x
_HALF_RESOLUTION_FROM = 512  # images at least this large in both directions get bone and soft tissue at half size


@dataclass(frozen=True)
class SyntheticChest:
    """One rendered case.

    Attributes:
        image: uint8 ``(rows, cols)`` MONOCHROME2 radiograph.
        regions: one bool ``(rows, cols)`` mask per pneumothorax annotation, each non-empty.
        lungs: bool ``(rows, cols)`` mask of both lung fields, pneumothoraces included.
        devices: what ``scripts.synthetic.devices`` drew (None when no device options were given).
    """

    image: np.ndarray
    regions: list[np.ndarray]
    lungs: np.ndarray
    devices: DevicesDrawn | None = None


def render_case(
    rng: np.random.Generator,
    rows: int = 1024,
    cols: int = 1024,
    n_regions: int = 0,
    lesion_contrast: float = 1.0,
    lesion_scale: float = 1.0,
    devices: DeviceOptions | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render one synthetic frontal chest radiograph with ``n_regions`` pneumothorax annotations.

    Args:
        rng: source of all randomness; the same state gives byte-identical output.
        rows: image height in pixels (row 0 is the top of the chest).
        cols: image width in pixels (the patient's right lung is on the image left).
        n_regions: number of pneumothorax annotations to draw; 0 draws a normal chest.
        lesion_contrast: multiplies the pneumothorax's lucency and pleural line (1: subtle, as on real films;
            larger values make an easier data set, e.g. for a demo that must learn in minutes on a CPU).
        lesion_scale: multiplies the drawn annotation areas (1: the SIIM-like size distribution; larger values
            give larger, deeper pneumothoraces, still capped at part of the lung).
        devices: tubes, lines, leads, markers, text, collimation and blur to add (``scripts.synthetic.devices``);
            None (the default) draws none and leaves the output exactly what it was before devices existed.

    Returns:
        ``(image, regions)``: image uint8 ``(rows, cols)``, MONOCHROME2 (bone and soft tissue bright, air and
        lungs dark); regions a list of ``n_regions`` bool ``(rows, cols)`` masks, one per annotation. Masks are
        non-empty, lie in a lung along its outer pleura, and some partly overlap (parts of one pneumothorax
        annotated separately).
    """
    chest = render_chest(rng, rows, cols, n_regions, lesion_contrast, lesion_scale, devices)
    return chest.image, chest.regions


def render_chest(
    rng: np.random.Generator,
    rows: int = 1024,
    cols: int = 1024,
    n_regions: int = 0,
    lesion_contrast: float = 1.0,
    lesion_scale: float = 1.0,
    devices: DeviceOptions | None = None,
) -> SyntheticChest:
    """Render a case as :func:`render_case` does, also returning the lung fields (see :class:`SyntheticChest`)."""
    if rows < 64 or cols < 64:
        raise ValueError(f"synthetic chests need at least 64 x 64 pixels, got {rows} x {cols}")
    if n_regions < 0:
        raise ValueError(f"n_regions must be >= 0, got {n_regions}")
    if lesion_contrast <= 0:
        raise ValueError(f"lesion_contrast must be > 0, got {lesion_contrast}")
    if lesion_scale <= 0:
        raise ValueError(f"lesion_scale must be > 0, got {lesion_scale}")
    anatomy_rng, texture_rng, region_rng, acquisition_rng = (
        np.random.default_rng(seed) for seed in rng.integers(0, 2**63 - 1, size=4)
    )
    # drawn after the four, and only with devices: the same chest, pneumothoraces and noise either way
    device_rng = None if devices is None else np.random.default_rng(rng.integers(0, 2**63 - 1))

    angle = _sample_rotation(anatomy_rng)
    frame = _patient_frame(rows, cols, angle)
    # bone and soft tissue have no detail finer than a couple of pixels of a large image: render them at half
    # resolution, which is four times cheaper; lungs, markings and pneumothoraces stay at full resolution
    coarse = frame
    if min(rows, cols) >= _HALF_RESOLUTION_FROM:
        coarse = _patient_frame((rows + 1) // 2, (cols + 1) // 2, angle)
    body = _sample_body(anatomy_rng)
    heart = _sample_heart(anatomy_rng, body)
    shapes = _sample_lung_shapes(anatomy_rng, body, heart)
    lungs = [_lung_field(anatomy_rng, frame, shape) for shape in shapes]

    attenuation = _resample(_trunk(coarse, body), rows, cols)
    lung_soft = np.zeros((rows, cols), np.float32)
    for lung in lungs:
        _aerate(anatomy_rng, frame, lung, attenuation[lung.bbox])
        np.maximum(lung_soft[lung.bbox], lung.soft, out=lung_soft[lung.bbox])
    overlay = 0.03 * _smooth_field(anatomy_rng, coarse.rows, coarse.cols, 4, 4)  # uneven exposure and scatter
    _add_soft_tissues(anatomy_rng, coarse, body, heart, shapes, overlay)
    _add_skeleton(anatomy_rng, coarse, body, shapes, overlay)
    attenuation += _resample(overlay, rows, cols)
    markings = _lung_markings(texture_rng, frame, lungs)
    markings *= lung_soft

    plans = _plan_pneumothoraces(region_rng, lungs, n_regions, lesion_scale * rows * cols / 1024.0**2)
    plans, regions = _rasterize_regions(frame, lungs, plans)
    union = np.zeros((rows, cols), bool)
    for region in regions:
        union |= region
    markings[union] = 0.0  # no lung markings beyond the collapsed lung edge
    attenuation += markings
    attenuation += lesion_contrast * _pneumothorax_lucency(region_rng, frame, lungs, plans, union)

    lung_mask = np.zeros((rows, cols), bool)
    for lung in lungs:
        lung_mask[lung.bbox] |= lung.inside
    drawn = None
    if devices is not None:
        landmarks = _landmarks(frame, body, shapes, lung_mask, shapes[plans[0].lung].side if plans else None)
        added, drawn = draw_devices(device_rng, landmarks, devices)
        attenuation += added
    image = _expose(acquisition_rng, frame, attenuation, extra_blur=drawn.blur if drawn else 0.0)
    if drawn is not None:
        burn_in(image, drawn)
    return SyntheticChest(image=image, regions=regions, lungs=lung_mask, devices=drawn)


def _landmarks(
    frame: _Frame, body: _Body, shapes: list[_LungShape], lung_mask: np.ndarray, lesion_side: int | None
) -> ChestLandmarks:
    """Where the devices of ``scripts.synthetic.devices`` go on this chest."""
    lung_rows, lung_cols = np.flatnonzero(lung_mask.any(axis=1)), np.flatnonzero(lung_mask.any(axis=0))
    boxes = tuple(
        LungBox(
            side=shape.side,
            x_medial=shape.x_med,
            x_lateral=shape.x_med + shape.side * shape.width,
            y_apex=shape.y_apex,
            y_base=shape.y_cp,
        )
        for shape in shapes
    )
    return ChestLandmarks(
        rows=frame.rows,
        cols=frame.cols,
        scale=frame.scale,
        to_pixels=frame.to_pixels,
        mid=body.mid,
        half_width=lambda y: float(_trunk_half_width(np.float32(y), body)),
        lungs=boxes,
        lung_box=(int(lung_rows[0]), int(lung_rows[-1]) + 1, int(lung_cols[0]), int(lung_cols[-1]) + 1),
        lesion_side=lesion_side,
    )


# ----------------------------------------------------------------------------------------------------------------
# Frame and small helpers


@dataclass(frozen=True)
class _Frame:
    """Pixels of an image, or of a box of it, seen in the patient's (slightly rotated) frame.

    ``u``, ``v``: frame coordinates of every pixel, in pixels from the image centre; ``x = u / cols`` and
    ``y = v / rows + 0.5`` are the normalised coordinates the anatomy is laid out in. ``bbox`` locates the box
    in the image; ``rows`` and ``cols`` are always those of the whole image.
    """

    rows: int
    cols: int
    scale: float  # linear size relative to a 1024 x 1024 image
    cos: float
    sin: float
    u: np.ndarray
    v: np.ndarray
    x: np.ndarray
    y: np.ndarray
    bbox: tuple[slice, slice]

    @property
    def edge(self) -> float:
        """Width of anatomical edges in pixels: about a pixel and a half on a 1024 image, never below a pixel."""
        return max(1.0, 1.5 * self.scale)

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image (row, column) of frame points ``(u, v)`` given in pixels."""
        row = (self.rows - 1) / 2.0 + self.sin * u + self.cos * v
        col = (self.cols - 1) / 2.0 + self.cos * u - self.sin * v
        return row, col

    def box(self, rows: np.ndarray, cols: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
        """Image box holding the given pixel positions, with a margin, clipped to the image (maybe empty)."""
        r0 = min(max(math.floor(float(np.min(rows))) - margin, 0), self.rows)
        r1 = min(max(math.ceil(float(np.max(rows))) + margin + 1, r0), self.rows)
        c0 = min(max(math.floor(float(np.min(cols))) - margin, 0), self.cols)
        c1 = min(max(math.ceil(float(np.max(cols))) + margin + 1, c0), self.cols)
        return slice(r0, r1), slice(c0, c1)

    def crop(self, x0: float, x1: float, y0: float, y1: float) -> _Frame:
        """The part of the image covering a normalised rectangle, for structures that are local."""
        corners_x = np.array([x0, x1, x0, x1])
        corners_y = np.array([y0, y0, y1, y1])
        bbox = self.box(*self.to_pixels(corners_x * self.cols, (corners_y - 0.5) * self.rows))
        return replace(self, u=self.u[bbox], v=self.v[bbox], x=self.x[bbox], y=self.y[bbox], bbox=bbox)


def _sample_rotation(rng: np.random.Generator) -> float:
    """Rotation of the patient in radians, a few degrees: real films are rarely perfectly straight."""
    return float(np.deg2rad(np.clip(rng.normal(0.0, 1.5), -4.0, 4.0)))


def _patient_frame(rows: int, cols: int, angle: float) -> _Frame:
    """The pixel grid of a ``rows x cols`` image of a patient rotated by ``angle``."""
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    i = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2.0)[:, None]
    j = (np.arange(cols, dtype=np.float32) - (cols - 1) / 2.0)[None, :]
    u = np.float32(cos) * j + np.float32(sin) * i
    v = np.float32(cos) * i - np.float32(sin) * j
    return _Frame(
        rows=rows,
        cols=cols,
        scale=float(np.sqrt(rows * cols) / 1024.0),
        cos=cos,
        sin=sin,
        u=u,
        v=v,
        x=u / np.float32(cols),
        y=v / np.float32(rows) + np.float32(0.5),
        bbox=(slice(0, rows), slice(0, cols)),
    )


def _resample(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear resampling of a rendering of the same patient frame on another grid to ``rows x cols``."""
    if image.shape == (rows, cols):
        return image
    if image.shape == (rows // 2, cols // 2) and rows % 2 == 0 and cols % 2 == 0:
        return _double_columns(_double_rows(image))

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        # pixel centres of both grids share the image centre and the normalised coordinates
        position = np.clip((np.arange(n_out) - (n_out - 1) / 2.0) * (n_in / n_out) + (n_in - 1) / 2.0, 0, n_in - 1)
        low = np.minimum(position.astype(np.intp), n_in - 2)
        return low, (position - low).astype(np.float32)

    low, frac = taps(rows, image.shape[0])
    image = image[low] + (image[low + 1] - image[low]) * frac[:, None]
    low, frac = taps(cols, image.shape[1])
    return image[:, low] + (image[:, low + 1] - image[:, low]) * frac


def _double_rows(image: np.ndarray) -> np.ndarray:
    """Bilinear doubling of the rows: new rows sit a quarter of an old row either side of each old one."""
    out = np.empty((2 * image.shape[0], image.shape[1]), np.float32)
    out[0::2] = 0.75 * image
    out[2::2] += 0.25 * image[:-1]
    out[0] += 0.25 * image[0]
    out[1::2] = 0.75 * image
    out[1:-1:2] += 0.25 * image[1:]
    out[-1] += 0.25 * image[-1]
    return out


def _double_columns(image: np.ndarray) -> np.ndarray:
    """Bilinear doubling of the columns, as :func:`_double_rows` does for rows."""
    out = np.empty((image.shape[0], 2 * image.shape[1]), np.float32)
    out[:, 0::2] = 0.75 * image
    out[:, 2::2] += 0.25 * image[:, :-1]
    out[:, 0] += 0.25 * image[:, 0]
    out[:, 1::2] = 0.75 * image
    out[:, 1:-1:2] += 0.25 * image[:, 1:]
    out[:, -1] += 0.25 * image[:, -1]
    return out


def _ramp(signed_px: np.ndarray, width_px: float) -> np.ndarray:
    """Anti-aliased inside indicator: 0 outside, 1 inside, linear over ``width_px`` across the edge at 0."""
    out = signed_px * np.float32(1.0 / width_px)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 transition over ``t`` in [0, 1]."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_field(rng: np.random.Generator, rows: int, cols: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth random field of unit-order amplitude, varying over about ``1 / cells`` of the image.

    A coarse grid of normal values is interpolated with cubic B-spline weights (smooth, without the blocky look
    of lower orders), first along the small grid's rows, then by gathering whole rows: far cheaper than filtering
    a full-size array, and free of BLAS (whose threading costs more than it saves on such shapes).
    """
    grid = rng.standard_normal((cells_y + 3, cells_x + 3)).astype(np.float32)
    low, basis = _bspline_taps(cols, cells_x)
    across = grid[:, low] * basis[0]
    for k in range(1, 4):
        across += grid[:, low + k] * basis[k]
    low, basis = _bspline_taps(rows, cells_y)
    field = across[low] * basis[0][:, None]
    for k in range(1, 4):
        field += across[low + k] * basis[k][:, None]
    # a B-spline averages neighbouring nodes, which shrinks the amplitude to under half: restore it
    field *= np.float32(2.2)
    return field


def _bspline_taps(n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """First of the four grid nodes under each of ``n`` samples spanning ``cells`` cells, and the four weights."""
    position = np.linspace(0.0, cells, n, dtype=np.float32)
    low = np.minimum(position.astype(np.intp), cells - 1)
    t = position - low
    basis = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]) / 6.0
    return low, basis.astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; small ones as repeated 3-tap passes, much faster than a general filter below a pixel or so."""
    if sigma > 1.2:
        return ndimage.gaussian_filter(image, sigma, truncate=3.0)
    passes = max(1, math.ceil(sigma * sigma / 0.5))
    w = np.float32(sigma * sigma / (2.0 * passes))
    for _ in range(passes):
        # down the rows, then along them; edges replicate the border pixel
        blurred = image * (1 - 2 * w)
        blurred[1:] += w * image[:-1]
        blurred[:-1] += w * image[1:]
        blurred[0] += w * image[0]
        blurred[-1] += w * image[-1]
        image = blurred * (1 - 2 * w)
        image[:, 1:] += w * blurred[:, :-1]
        image[:, :-1] += w * blurred[:, 1:]
        image[:, 0] += w * blurred[:, 0]
        image[:, -1] += w * blurred[:, -1]
    return image


def _periodic_ripple(rng: np.random.Generator, amplitude: float, harmonics: range) -> np.ndarray:
    """Smooth periodic function over the angle table: sinusoids with amplitudes falling with frequency."""
    ripple = np.zeros(_N_ANGLES)
    for k in harmonics:
        ripple += rng.normal(0.0, amplitude / np.sqrt(k)) * np.sin(k * _ANGLES + rng.uniform(0.0, 2.0 * np.pi))
    return ripple


# ----------------------------------------------------------------------------------------------------------------
# Body and heart


@dataclass(frozen=True)
class _Body:
    """Soft-tissue silhouette and the midline, in normalised frame coordinates."""

    mid: float  # x of the spine
    chest_hw: float  # half-width of the thorax at the level of the lungs
    neck_hw: float
    neck_y: float  # where the neck starts widening into the shoulders
    shoulder_y: float  # where the shoulders reach the full chest width
    waist: float  # narrowing of the trunk below the chest
    skin: float  # attenuation of the thin soft tissue at the body edge
    depth: float  # extra attenuation at the thick centre of the body
    arms: bool


def _sample_body(rng: np.random.Generator) -> _Body:
    """Vary body width and position per case; wide patients run off the image sides, as on many films."""
    neck_y = rng.uniform(-0.04, 0.04)
    return _Body(
        mid=rng.normal(0.0, 0.02),
        chest_hw=rng.uniform(0.39, 0.5),
        neck_hw=rng.uniform(0.08, 0.12),
        neck_y=neck_y,
        shoulder_y=neck_y + rng.uniform(0.12, 0.2),
        waist=rng.uniform(0.0, 0.25),
        skin=rng.uniform(0.35, 0.45),
        depth=rng.uniform(0.5, 0.6),
        arms=bool(rng.random() < 0.6),
    )


@dataclass(frozen=True)
class _Heart:
    """Cardiac silhouette: an ellipse tilted down towards the patient's left, resting on the left hemidiaphragm."""

    x: float
    y: float
    major: float  # semi-axis along the tilt
    minor: float
    tilt: float  # radians, downwards to the image right
    density: float

    def level_squared(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Squared elliptic radius: below 1 inside the heart."""
        dx, dy = x - self.x, y - self.y
        cos, sin = np.float32(math.cos(self.tilt)), np.float32(math.sin(self.tilt))
        along = (dx * cos + dy * sin) * np.float32(1.0 / self.major)
        across = (dy * cos - dx * sin) * np.float32(1.0 / self.minor)
        return along * along + across * across


def _sample_heart(rng: np.random.Generator, body: _Body) -> _Heart:
    """Cardiothoracic ratio around 0.4-0.5, the bulk of the heart left of the midline (image right)."""
    return _Heart(
        x=body.mid + rng.uniform(0.045, 0.08),
        y=rng.uniform(0.57, 0.64),
        major=rng.uniform(0.15, 0.19),
        minor=rng.uniform(0.11, 0.135),
        tilt=rng.uniform(0.35, 0.7),
        density=rng.uniform(0.04, 0.08),
    )


def _trunk_half_width(y: np.ndarray, body: _Body) -> np.ndarray:
    """Half-width of the body at height ``y``: neck, sloping shoulders, chest, then a slight waist."""
    rise = _smoothstep((y - body.neck_y) * np.float32(1.0 / (body.shoulder_y - body.neck_y)))
    half_width = body.neck_hw + (body.chest_hw - body.neck_hw) * rise * (2.0 - rise)  # rounded shoulders
    half_width *= 1.0 - body.waist * np.clip(y - 0.7, 0.0, None)
    return half_width


def _trunk(frame: _Frame, body: _Body) -> np.ndarray:
    """Neck, shoulders and trunk, with an elliptic cross-section: the path through the body is longest mid-line."""
    half_width = _trunk_half_width(frame.y, body)
    dx = np.abs(frame.x - body.mid)
    relative = dx / half_width
    thickness = np.sqrt(np.clip(1.0 - relative * relative, 0.0, 1.0))
    return _ramp((half_width - dx) * frame.cols, frame.edge) * (body.skin + body.depth * thickness)


def _add_soft_tissues(
    rng: np.random.Generator, frame: _Frame, body: _Body, heart: _Heart, shapes: list[_LungShape], out: np.ndarray
) -> None:
    """Soft tissue over or beside the lungs: arms, heart, breasts, stomach gas and the airways."""
    if body.arms:
        _add_arms(rng, frame, body, out)
    part = frame.crop(heart.x - 0.25, heart.x + 0.25, heart.y - 0.25, heart.y + 0.25)
    level = np.clip(1.0 - heart.level_squared(part.x, part.y), 0.0, 1.0)
    out[part.bbox] += heart.density * level * level  # no edge of its own
    _add_breasts(rng, frame, shapes, out)
    _add_stomach_bubble(rng, frame, body, shapes[1], out)
    _add_airways(rng, frame, body, out)


def _add_arms(rng: np.random.Generator, frame: _Frame, body: _Body, out: np.ndarray) -> None:
    """Upper arms beside the chest, apart from it by the dark axillary gap, with humerus and humeral head."""
    gap, width = rng.uniform(0.015, 0.04), rng.uniform(0.08, 0.12)
    head_radius, bone = rng.uniform(0.045, 0.06), rng.uniform(0.2, 0.3)
    for side in (_RIGHT, _LEFT):
        inner = body.mid + side * (body.chest_hw + gap)
        part = frame.crop(*sorted((inner, inner + side * (width + 0.05))), body.shoulder_y - 0.1, 1.0)
        dx = side * (part.x - inner)
        top = _smoothstep((part.y - body.shoulder_y + 0.02) * np.float32(1.0 / 0.06))
        across = (dx - 0.5 * width) * np.float32(2.0 / width)  # -1 .. 1 across the arm
        arm = _ramp((1.0 - np.abs(across)) * 0.5 * width * frame.cols, frame.edge)
        arm *= 0.25 + 0.35 * np.sqrt(np.clip(1.0 - across * across, 0.0, 1.0))  # a round limb is thickest mid-way
        shaft = _cortical_band(np.abs(across) * 0.5 * width * frame.cols, 0.22 * width * frame.cols, frame.edge)
        cy = body.shoulder_y + 0.3 * head_radius
        distance = np.hypot((dx - 0.5 * width) * frame.cols, (part.y - cy) * frame.rows)
        head = _cortical_band(distance, head_radius * frame.cols, 2.0 * frame.edge) * (part.y < cy + 0.5 * head_radius)
        out[part.bbox] += arm * top + bone * np.maximum(shaft * top, head)


def _add_breasts(rng: np.random.Generator, frame: _Frame, shapes: list[_LungShape], out: np.ndarray) -> None:
    """Breast shadows over the lower lung zones in some cases."""
    if rng.random() >= 0.35:
        return
    density, radius = rng.uniform(0.04, 0.09), rng.uniform(0.13, 0.18)
    for shape in shapes:
        cx = shape.x_med + shape.side * shape.width * rng.uniform(0.45, 0.65)
        cy = shape.y_cp - rng.uniform(0.02, 0.08)
        part = frame.crop(cx - radius, cx + radius, cy - radius, cy + radius)
        level = ((part.x - cx) / radius) ** 2 + ((part.y - cy) / (0.8 * radius)) ** 2
        fade = np.clip(1.0 - level, 0.0, 1.0)
        out[part.bbox] += density * fade * np.sqrt(fade)


def _add_stomach_bubble(
    rng: np.random.Generator, frame: _Frame, body: _Body, left: _LungShape, out: np.ndarray
) -> None:
    """Gastric air under the left hemidiaphragm in some cases."""
    if rng.random() >= 0.5:
        return
    cx, cy = body.mid + rng.uniform(0.1, 0.2), left.y_cp + rng.uniform(0.04, 0.08)
    rx, ry = rng.uniform(0.04, 0.07), rng.uniform(0.02, 0.035)
    density = rng.uniform(0.1, 0.2)
    part = frame.crop(cx - rx, cx + rx, cy - ry, cy + ry)
    level = np.sqrt(((part.x - cx) / rx) ** 2 + ((part.y - cy) / ry) ** 2)
    out[part.bbox] -= density * _ramp((1.0 - level) * ry * frame.rows, 2.0 * frame.edge)


def _add_airways(rng: np.random.Generator, frame: _Frame, body: _Body, out: np.ndarray) -> None:
    """Air column of the trachea down to the carina, then the two main bronchi."""
    half, carina = rng.uniform(0.011, 0.016), rng.uniform(0.3, 0.36)
    angles = {_RIGHT: rng.uniform(0.4, 0.6), _LEFT: rng.uniform(0.7, 0.9)}
    density = rng.uniform(0.08, 0.14)
    part = frame.crop(body.mid - 0.1, body.mid + 0.1, -0.1, carina + 0.09)
    edge = 3.0 * frame.edge
    x, y = part.x - body.mid, part.y
    airway = _ramp((half - np.abs(x)) * frame.cols, edge) * _ramp((carina - y) * frame.rows, edge)
    for side, angle in angles.items():
        # the bronchus leaves the carina downwards and outwards; distance from its axis
        ax, ay = side * math.sin(angle), math.cos(angle)
        along = (x * ax + (y - carina) * ay) * np.float32(1.0 / 0.07)
        across = np.abs(x * ay - (y - carina) * ax)
        bronchus = _ramp((0.8 * half - across) * frame.cols, edge) * _ramp(along * 30.0, 1.0)
        bronchus *= _ramp((1.0 - along) * 10.0, 1.0)
        airway = np.maximum(airway, bronchus)
    out[part.bbox] -= density * airway


# ----------------------------------------------------------------------------------------------------------------
# Skeleton


def _add_skeleton(
    rng: np.random.Generator, frame: _Frame, body: _Body, shapes: list[_LungShape], out: np.ndarray
) -> None:
    """Bone: spine, posterior and anterior ribs, clavicles and, in some cases, the scapulae."""
    _add_spine(rng, frame, body, out)
    _add_posterior_ribs(rng, frame, body, shapes, out)
    _add_anterior_ribs(rng, frame, body, shapes, out)
    _add_clavicles(rng, frame, body, out)
    _add_scapulae(rng, frame, shapes, out)


def _cortical_band(distance_px: np.ndarray, half_px: np.ndarray | float, edge: float) -> np.ndarray:
    """Cross-section of a bone seen side-on: dense cortex at both edges, lighter marrow in between."""
    inside = _ramp(half_px - distance_px, edge)
    rim = np.clip(distance_px / half_px, 0.0, 1.0)
    rim *= rim
    rim *= rim
    return inside * (0.6 + 0.4 * rim)


def _add_spine(rng: np.random.Generator, frame: _Frame, body: _Body, out: np.ndarray) -> None:
    """Vertebral column behind the mediastinum: vertebral bodies, darker disc spaces and the pedicles."""
    half, height = rng.uniform(0.028, 0.036), rng.uniform(0.045, 0.055)
    phase, bend = rng.uniform(0.0, 1.0), rng.normal(0.0, 0.03)
    density = rng.uniform(0.04, 0.07)
    part = frame.crop(body.mid - 0.1, body.mid + 0.1, -0.1, 1.1)
    x = part.x - body.mid - bend * (part.y - 0.5) ** 2
    column = _ramp((half - np.abs(x)) * frame.cols, 2.0 * frame.edge)
    cycle = part.y * np.float32(1.0 / height) * (1.0 - 0.15 * part.y) + phase  # vertebrae taller down the spine
    vertebra = np.clip(2.0 * np.cos(2.0 * np.pi * cycle) + 1.2, 0.0, 1.0)
    pedicles = _ramp((0.22 * half - np.abs(np.abs(x) - 0.7 * half)) * frame.cols, frame.edge) * vertebra
    out[part.bbox] += density * (column * (0.7 + 0.3 * vertebra) + 0.5 * pedicles)


def _cage_half_width(y: np.ndarray, shape: _LungShape) -> np.ndarray:
    """Distance from the midline to the inside of the lateral chest wall at height ``y`` (ribs end there)."""
    t = np.clip((y - shape.y_apex) / (shape.y_cp - shape.y_apex), 0.02, 1.0)
    return abs(shape.x_med - shape.mid) + shape.reach(t) + 0.03


def _add_posterior_ribs(
    rng: np.random.Generator, frame: _Frame, body: _Body, shapes: list[_LungShape], out: np.ndarray
) -> None:
    """Posterior ribs: arcs leaving the spine, rising a little, then curving down along the lateral chest wall.

    Each pixel gets a continuous rib number from its height above the arc through it; a rib fills the first part
    of each unit, the rest is the intercostal space. Ribs thicken and their spacing grows down the chest.
    """
    rise, fall = rng.uniform(0.2, 0.35), rng.uniform(1.2, 1.8)
    first = min(s.y_apex for s in shapes) - rng.uniform(0.01, 0.04)
    spacing, growth = rng.uniform(0.05, 0.058), rng.uniform(0.001, 0.003)
    fill = rng.uniform(0.38, 0.48)
    count = int(rng.integers(10, 12))
    density = rng.uniform(0.08, 0.13)
    for shape in shapes:
        shift = rng.normal(0.0, 0.006)  # a slightly oblique patient shows the two sides at different heights
        # no two ribs alike: each is a little off its regular place and thicker or thinner
        offset = np.clip(rng.normal(0.0, 0.03, count), -0.05, 0.05).astype(np.float32)
        thickness = rng.uniform(0.85, 1.15, count).astype(np.float32)
        cage = abs(shape.x_med - shape.mid) + shape.width + 0.04
        part = frame.crop(*sorted((shape.mid, shape.mid + shape.side * cage)), first - 0.02, shape.y_cp + 0.12)
        dx = shape.side * (part.x - shape.mid)
        level = part.y + (rise - fall * dx) * dx - (first + shift)
        index = (np.sqrt(np.maximum(spacing * spacing + 2.0 * growth * level, 0.0)) - spacing) * np.float32(1 / growth)
        number = np.floor(index)
        which = np.clip(number, 0, count - 1).astype(np.intp)
        local_spacing_px = (spacing + growth * index) * frame.rows
        band = np.minimum(fill * (0.8 + 0.5 * dx / cage) * thickness[which], 0.6)
        distance_px = np.abs(index - number - 0.5 * band - offset[which]) * local_spacing_px
        ribs = _cortical_band(distance_px, 0.5 * band * local_spacing_px, frame.edge)
        ribs *= (number >= 0) & (number < count) & (level >= 0)
        ribs *= _ramp((_cage_half_width(part.y, shape) - dx) * frame.cols, 6.0 * frame.edge)
        ribs *= _ramp((dx - 0.03) * frame.cols, 6.0 * frame.edge)
        ribs *= 1.0 - _smoothstep((part.y - shape.y_cp + 0.02) * np.float32(1.0 / 0.12))  # lost in the abdomen
        out[part.bbox] += density * ribs


def _add_anterior_ribs(
    rng: np.random.Generator, frame: _Frame, body: _Body, shapes: list[_LungShape], out: np.ndarray
) -> None:
    """Anterior ribs: fainter bands running down and in from the lateral chest wall, fading before the sternum."""
    slope, spacing = rng.uniform(0.45, 0.7), rng.uniform(0.075, 0.09)
    first = min(s.y_apex for s in shapes) - rng.uniform(0.1, 0.14)
    density = rng.uniform(0.025, 0.045)
    for shape in shapes:
        cage = abs(shape.x_med - shape.mid) + shape.width + 0.04
        part = frame.crop(*sorted((shape.mid, shape.mid + shape.side * cage)), first - 0.02, 0.9)
        dx = shape.side * (part.x - shape.mid)
        inward = cage - dx
        index = (part.y - slope * inward - 0.6 * inward * inward - first) * np.float32(1.0 / spacing)
        number = np.floor(index)
        distance_px = np.abs(index - number - 0.2) * (spacing * frame.rows)
        ribs = _cortical_band(distance_px, 0.2 * spacing * frame.rows, 2.0 * frame.edge)
        ribs *= (number >= 0) & (number < 6)
        ribs *= _smoothstep((dx - 0.1) / 0.12) * _ramp((_cage_half_width(part.y, shape) - dx) * frame.cols, 6.0)
        out[part.bbox] += density * ribs


def _add_clavicles(rng: np.random.Generator, frame: _Frame, body: _Body, out: np.ndarray) -> None:
    """Clavicles: S-shaped bones from the manubrium out to the acromion, higher laterally."""
    start, end = rng.uniform(0.025, 0.04), body.chest_hw * rng.uniform(0.8, 0.95)
    y_medial = rng.uniform(0.12, 0.2)
    y_lateral = y_medial - rng.uniform(0.02, 0.07)
    curl, half = rng.uniform(0.008, 0.02), rng.uniform(0.011, 0.015)
    density = rng.uniform(0.15, 0.22)
    part = frame.crop(body.mid - end - 0.02, body.mid + end + 0.02, y_lateral - 0.06, y_medial + 0.06)
    t = (np.abs(part.x - body.mid) - start) * np.float32(1.0 / (end - start))
    centre = y_medial + (y_lateral - y_medial) * t + curl * np.sin(np.float32(2.0 * np.pi) * t)
    half_px = half * frame.rows * (1.0 + 0.4 * (1.0 - np.clip(t, 0.0, 1.0)))  # thicker medially
    bone = _cortical_band(np.abs(part.y - centre) * frame.rows, half_px, frame.edge)
    bone *= _ramp(t * (end - start) * frame.cols, 4.0 * frame.edge)
    bone *= _ramp((1.0 - t) * (end - start) * frame.cols, 4.0 * frame.edge)
    bone *= _ramp((_trunk_half_width(part.y, body) - np.abs(part.x - body.mid)) * frame.cols, 4.0 * frame.edge)
    out[part.bbox] += density * bone


def _add_scapulae(rng: np.random.Generator, frame: _Frame, shapes: list[_LungShape], out: np.ndarray) -> None:
    """Scapulae in some cases: their medial border is a faint edge over the upper lateral lung, a classic mimic."""
    if rng.random() >= 0.6:
        return
    for shape in shapes:
        lateral = shape.x_med + shape.side * shape.width
        top_x = lateral - shape.side * shape.width * rng.uniform(0.2, 0.35)
        bottom_x = lateral - shape.side * shape.width * rng.uniform(0.0, 0.1)
        top_y, bottom_y = rng.uniform(0.1, 0.16), rng.uniform(0.38, 0.48)
        density = rng.uniform(0.02, 0.045)
        x_range = sorted((top_x - shape.side * 0.02, lateral + shape.side * 0.1))
        part = frame.crop(*x_range, top_y - 0.02, bottom_y + 0.02)
        t = (part.y - top_y) * np.float32(1.0 / (bottom_y - top_y))
        border = top_x + (bottom_x - top_x) * t
        height_px = (bottom_y - top_y) * frame.rows
        span = _ramp(t * height_px, 20.0) * _ramp((1.0 - t) * height_px, 60.0)  # fading out towards the tip
        out[part.bbox] += density * _ramp(shape.side * (part.x - border) * frame.cols, frame.edge) * span


# ----------------------------------------------------------------------------------------------------------------
# Lungs


@dataclass(frozen=True)
class _LungShape:
    """Outline of one lung in normalised frame coordinates, as an inside test."""

    side: int  # _RIGHT (image left) or _LEFT (image right)
    mid: float  # x of the midline, which the lung never crosses
    x_med: float  # medial edge along the upper mediastinum
    width: float  # from the medial edge to the lateral chest wall at the base
    y_apex: float
    y_cp: float  # costophrenic angle, the lowest point of the lung
    apex_round: float  # fraction of the lung height rounded into the apical cap
    apex_power: float  # superellipse exponent of the cap: 2 (elliptic) or 2.5 (squarer)
    taper: float  # lung width at the apex relative to the base
    widest: float  # relative height where the lung is widest
    bulge: float  # radius of the lateral wall's arc, in lung heights: the smaller, the more convex
    dome_peak: float  # fraction of the width, from the medial edge, where the hemidiaphragm is highest
    dome_height: float
    heart: _Heart
    aorta: tuple[float, float, float] | None  # aortic knob (x, y, radius) indenting the left lung

    def reach(self, t: np.ndarray) -> np.ndarray:
        """Lateral extent from the medial edge at relative height ``t`` (0 apex, 1 costophrenic angle).

        The lateral wall is an elliptic arc, widest a little above the costophrenic angle.
        """
        arc = np.sqrt(np.clip(1.0 - ((t - self.widest) * np.float32(1.0 / self.bulge)) ** 2, 0.0, 1.0))
        return self.width * (self.taper + (1.0 - self.taper) * arc)

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether normalised points lie in this lung."""
        t = (y - self.y_apex) / (self.y_cp - self.y_apex)
        w = self.side * (x - self.x_med) / self.reach(t)
        across = np.abs(2.0 * w - 1.0)
        down = np.abs(np.minimum(t / self.apex_round - 1.0, 0.0))
        inside = (_cap_power(across, self.apex_power) + _cap_power(down, self.apex_power) < 1.0) & (t >= 0.0)
        inside &= y < self.dome(x)
        inside &= self.side * (x - self.mid) > 0.015
        inside &= self.heart.level_squared(x, y) > 1.0
        if self.aorta is not None:
            ax, ay, radius = self.aorta
            inside &= (x - ax) ** 2 + (y - ay) ** 2 > radius * radius
        return inside

    def mediastinal(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether points just outside the lung lie beyond its mediastinal surface rather than its outer pleura.

        The mediastinal surface is the heart, the aortic knob and the medial edge below the apical cap.
        """
        t = (y - self.y_apex) / (self.y_cp - self.y_apex)
        w = self.side * (x - self.x_med) / self.reach(t)
        medial = ((w < 0.25) & (t > self.apex_round)) | (self.side * (x - self.mid) <= 0.015)
        medial |= self.heart.level_squared(x, y) <= 1.0
        if self.aorta is not None:
            ax, ay, radius = self.aorta
            medial |= (x - ax) ** 2 + (y - ay) ** 2 <= radius * radius
        return medial

    def dome(self, x: np.ndarray) -> np.ndarray:
        """Hemidiaphragm: a dome highest near the middle of the lung, down to the costophrenic angle laterally."""
        w = self.side * (x - self.x_med) / self.width
        return self.y_cp - self.dome_height * (1.0 - ((w - self.dome_peak) / (1.0 - self.dome_peak)) ** 2)


def _cap_power(value: np.ndarray, power: float) -> np.ndarray:
    """``value ** power`` for the two cap exponents, without the cost of a general power."""
    squared = value * value
    return squared if power == 2.0 else squared * np.sqrt(value)


def _sample_lung_shapes(rng: np.random.Generator, body: _Body, heart: _Heart) -> list[_LungShape]:
    """Both lungs, alike but no mirror images: the right one (image left) a bit wider, and shorter, its
    hemidiaphragm lifted by the liver; the left one indented by the heart and the aortic knob."""
    apex, base = rng.uniform(0.07, 0.14), rng.uniform(0.72, 0.84)
    lateral = body.chest_hw - rng.uniform(0.03, 0.055)
    return [_sample_lung_shape(rng, body, heart, side, apex, base, lateral) for side in (_RIGHT, _LEFT)]


def _sample_lung_shape(
    rng: np.random.Generator, body: _Body, heart: _Heart, side: int, apex: float, base: float, lateral: float
) -> _LungShape:
    """Classic lung outline around the shared apex and base levels and lateral reach, varied per side."""
    gap = rng.uniform(0.03, 0.05)
    y_apex = apex + rng.normal(0.0, 0.006)
    y_cp = base + rng.normal(0.0, 0.004) - (rng.uniform(0.015, 0.045) if side == _RIGHT else 0.0)
    x_med = body.mid + side * gap
    aorta = None
    if side == _LEFT:
        aorta = (x_med - rng.uniform(0.0, 0.012), y_apex + rng.uniform(0.12, 0.17), rng.uniform(0.018, 0.028))
    return _LungShape(
        side=side,
        mid=body.mid,
        x_med=x_med,
        width=(lateral - gap) * (1.0 if side == _RIGHT else rng.uniform(0.9, 0.97)),
        y_apex=y_apex,
        y_cp=max(y_cp, heart.y + 0.05),
        apex_round=rng.uniform(0.18, 0.3),
        apex_power=2.0 if rng.random() < 0.5 else 2.5,
        taper=rng.uniform(0.15, 0.4),
        widest=rng.uniform(0.82, 0.95),
        bulge=rng.uniform(1.1, 1.4),
        dome_peak=rng.uniform(0.3, 0.5),
        dome_height=rng.uniform(0.05, 0.1),
        heart=heart,
        aorta=aorta,
    )


@dataclass(frozen=True)
class _LungField:
    """A lung as a polar table, and its per-pixel polar coordinates over its bounding box.

    ``q = r / rho(phi)`` is the relative radius: below 1 inside the lung, 1 on the pleura.
    """

    shape: _LungShape
    centre: tuple[float, float]  # frame pixels (u, v) of the polar origin
    rho: np.ndarray  # boundary radius in pixels per entry of _ANGLES
    pleura: tuple[float, float]  # the arc of local angles where the boundary is outer pleura
    hilum: tuple[float, float]  # local point (lateral, down) in pixels from the origin where the vessels enter
    bbox: tuple[slice, slice]
    index: np.ndarray  # per bbox pixel: the angle-table entry just below its angle
    weight: np.ndarray  # per bbox pixel: interpolation weight of the next entry
    r: np.ndarray  # per bbox pixel: distance from the origin
    rho_px: np.ndarray  # per bbox pixel: boundary radius in its direction
    q: np.ndarray
    inside: np.ndarray
    soft: np.ndarray  # anti-aliased lung fraction, for the attenuation

    @property
    def obliquity(self) -> np.ndarray:
        """Per angle, radial over perpendicular thickness of a thin band along the boundary (capped at 8).

        Rays meet the boundary at an angle whose tangent is ``rho' / rho``.
        """
        slope = (np.roll(self.rho, -1) - np.roll(self.rho, 1)) / (2.0 * _DPHI)
        return np.minimum(np.sqrt(1.0 + (slope / self.rho) ** 2), 8.0)

    @property
    def area(self) -> float:
        """Lung area in pixels, from the polar table."""
        return float(0.5 * np.sum(self.rho**2) * _DPHI)

    def lookup(self, table: np.ndarray) -> np.ndarray:
        """Interpolate an angle table at every bbox pixel."""
        return _lookup(table, self.index, self.weight)

    def rho_at(self, angle: np.ndarray | float) -> np.ndarray:
        """Boundary radius in pixels at local angles."""
        return _table_at(self.rho, angle)

    def local_q(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Relative radius of local points (``a`` lateral, ``b`` down, pixels from the polar origin)."""
        return np.hypot(a, b) / self.rho_at(np.arctan2(b, a))


def _table_at(table: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Linear interpolation of a periodic angle table at arbitrary angles."""
    position = (np.asarray(angle, dtype=np.float64) + np.pi) * (1.0 / _DPHI) % _N_ANGLES
    index = position.astype(np.int64)
    weight = position - index
    return table[index] * (1.0 - weight) + table[(index + 1) % _N_ANGLES] * weight


def _lookup(table: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Linear interpolation of a periodic angle table at precomputed positions."""
    table = np.append(table, table[0]).astype(np.float32)
    low = table[index]
    return low + (table[index + 1] - low) * weight


def _lung_field(rng: np.random.Generator, frame: _Frame, shape: _LungShape) -> _LungField:
    """March rays from an interior point to find the outline, roughen it slightly, then map the bbox pixels."""
    cu, cv = _polar_origin(frame, shape)

    def inside_local(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        u, v = cu + shape.side * a, cv + b
        return shape.inside(u / frame.cols, v / frame.rows + 0.5)

    reach = 1.1 * math.hypot(shape.width * frame.cols, (shape.y_cp - shape.y_apex) * frame.rows)
    rho = _march(inside_local, reach)
    beyond = 1.02 * rho + 1.0
    ends_u, ends_v = cu + shape.side * beyond * np.cos(_ANGLES), cv + beyond * np.sin(_ANGLES)
    pleura = _outer_arc(~shape.mediastinal(ends_u / frame.cols, ends_v / frame.rows + 0.5))
    rho *= 1.0 + _periodic_ripple(rng, 0.01, range(2, 9))
    rho = np.maximum(rho, 1.0)
    hilum_angle = rng.uniform(np.deg2rad(150.0), np.deg2rad(170.0))
    hilum_r = 0.65 * float(_table_at(rho, hilum_angle))

    bbox = frame.box(*frame.to_pixels(cu + shape.side * rho * np.cos(_ANGLES), cv + rho * np.sin(_ANGLES)))
    a = frame.u[bbox] - np.float32(cu)
    if shape.side == _RIGHT:
        a = -a
    b = frame.v[bbox] - np.float32(cv)
    r = np.hypot(a, b)
    position = np.arctan2(b, a)
    position += np.float32(np.pi)
    position *= np.float32(1.0 / _DPHI)
    index = np.minimum(position.astype(np.int32), _N_ANGLES - 1)
    weight = position - index
    rho_px = _lookup(rho, index, weight)
    return _LungField(
        shape=shape,
        centre=(cu, cv),
        rho=rho,
        pleura=pleura,
        hilum=(hilum_r * math.cos(hilum_angle), hilum_r * math.sin(hilum_angle)),
        bbox=bbox,
        index=index,
        weight=weight,
        r=r,
        rho_px=rho_px,
        q=r / rho_px,
        inside=r < rho_px,
        soft=_ramp(rho_px - r, frame.edge),
    )


def _outer_arc(outer: np.ndarray) -> tuple[float, float]:
    """The arc of angles around the lateral direction (0) where ``outer`` holds, within ``_PLEURA_SPAN``."""
    allowed = outer & (_ANGLES >= _PLEURA_SPAN[0]) & (_ANGLES <= _PLEURA_SPAN[1])
    lateral = _N_ANGLES // 2  # _ANGLES[lateral] == 0
    above = np.flatnonzero(~allowed[lateral:])
    below = np.flatnonzero(~allowed[: lateral + 1][::-1])
    last = lateral + (above[0] - 1 if len(above) else _N_ANGLES - 1 - lateral)
    first = lateral - (below[0] - 1 if len(below) else lateral)
    return float(_ANGLES[first]), float(_ANGLES[last])


def _polar_origin(frame: _Frame, shape: _LungShape) -> tuple[float, float]:
    """A point deep in the lung that sees all its outline: mid-height, lateral of the heart for the left lung."""
    for w, t in ((0.5, 0.45), (0.6, 0.4), (0.7, 0.4), (0.6, 0.3), (0.75, 0.3), (0.5, 0.3)):
        x = shape.x_med + shape.side * w * shape.width
        y = shape.y_apex + t * (shape.y_cp - shape.y_apex)
        if shape.inside(np.array([x]), np.array([y]))[0]:
            return x * frame.cols, (y - 0.5) * frame.rows
    raise RuntimeError("no interior point found for the lung polar origin")


def _march(inside_local, r_max: float, coarse: int = 28) -> np.ndarray:
    """Boundary radius along every ray of the angle table: the first exit, bracketed coarsely, then bisected.

    ``r_max`` must exceed the lung's extent from the origin, so that every ray exits. Bisection stops at a
    twentieth of a pixel.
    """
    refine = max(1, math.ceil(math.log2(r_max / coarse / 0.05)))
    cos, sin = np.cos(_ANGLES)[:, None].astype(np.float32), np.sin(_ANGLES)[:, None].astype(np.float32)
    radii = np.linspace(0.0, r_max, coarse + 1, dtype=np.float32)[None, 1:]
    first_out = np.argmin(inside_local(cos * radii, sin * radii), axis=1)  # the lung is bounded: every ray exits
    step = r_max / coarse
    low, high = first_out * step, (first_out + 1) * step
    for _ in range(refine):
        middle = 0.5 * (low + high)
        ok = inside_local(cos[:, 0] * middle, sin[:, 0] * middle)
        low, high = np.where(ok, middle, low), np.where(ok, high, middle)
    return 0.5 * (low + high)


def _aerate(rng: np.random.Generator, frame: _Frame, lung: _LungField, out: np.ndarray) -> None:
    """Replace the trunk's attenuation by the lung's, in place over the lung bbox.

    The lung is brighter towards its base (the domes and the soft tissue in front of them) and mottled on a
    large scale, but not brighter at its rim: lung tissue reaches the pleura, which is what makes a
    pneumothorax, with none, the more lucent.
    """
    shape = lung.shape
    t = (frame.y[lung.bbox] - shape.y_apex) * np.float32(1.0 / (shape.y_cp - shape.y_apex))
    level = rng.uniform(0.34, 0.44) + rng.uniform(0.03, 0.1) * _smoothstep((t - 0.45) * 2.0)
    level += rng.uniform(0.01, 0.025) * _smooth_field(rng, *out.shape, 5, 4)
    out += lung.soft * (level - out)


# ----------------------------------------------------------------------------------------------------------------
# Lung markings


def _lung_markings(rng: np.random.Generator, frame: _Frame, lungs: list[_LungField]) -> np.ndarray:
    """Vessel trees from the hila, the hilar shadows and a faint parenchymal mottle (not yet masked to the lungs)."""
    segments = np.concatenate([_vessel_segments(rng, frame, lung) for lung in lungs])
    thick = segments[:, 4] >= 1.5
    markings = _draw_thick_lines(segments[thick], frame.rows, frame.cols)
    markings += _splat_thin_lines(segments[~thick], frame.rows, frame.cols)
    markings *= np.float32(rng.uniform(0.18, 0.28))
    # lung tissue has density everywhere, so the mottle and the grain are positive: a pneumothorax loses them
    mottle, grain = rng.uniform(0.008, 0.015), rng.uniform(0.012, 0.02)
    for lung in lungs:
        markings[lung.bbox] = _blur(markings[lung.bbox], 0.3 + 0.7 * frame.scale)  # vessels are fuzzy, not lines
        shape = markings[lung.bbox].shape
        cells = (max(2, round(shape[0] / (40 * frame.scale))), max(2, round(shape[1] / (40 * frame.scale))))
        markings[lung.bbox] += mottle * np.maximum(1.0 + 0.6 * _smooth_field(rng, *shape, *cells), 0.0)
        markings[lung.bbox] += grain * np.maximum(0.5 + 0.8 * _parenchyma(rng, frame, lung.bbox), 0.0)
        markings[lung.bbox] += _hilar_shadow(rng, frame, lung)
    return markings


def _parenchyma(rng: np.random.Generator, frame: _Frame, bbox: tuple[slice, slice]) -> np.ndarray:
    """Fine mottle of the small vessels and airspaces below the resolution of the vessel tree: zero mean, unit
    variance.

    It runs right up to the pleura, so a pneumothorax, without it, is smoother than any lung.
    """
    shape = (bbox[0].stop - bbox[0].start, bbox[1].stop - bbox[1].start)
    grain = rng.random(shape, dtype=np.float32)
    grain -= np.float32(0.5)
    grain = _blur(grain, 0.4 + 0.6 * frame.scale)
    return grain * np.float32(1.0 / max(float(grain.std()), 1e-6))


def _draw_thick_lines(segments: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Segments ``(row0, col0, row1, col1, width, strength)`` drawn as lines of their width, the widest on top."""
    canvas = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(canvas)
    for r0, c0, r1, c1, width, strength in segments[np.argsort(segments[:, 4], kind="stable")].tolist():
        value = int(round(255.0 * strength))
        draw.line([(c0, r0), (c1, r1)], fill=value, width=int(round(width)))
        if width >= 3.0:  # round the joints of thick vessels
            half = 0.5 * width
            draw.ellipse([(c1 - half, r1 - half), (c1 + half, r1 + half)], fill=value)
    return np.asarray(canvas, dtype=np.float32) * np.float32(1.0 / 255.0)


def _splat_thin_lines(segments: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Segments narrower than a couple of pixels, anti-aliased: samples a pixel apart spread bilinearly.

    A line thinner than a pixel darkens it in proportion to its width, so that is the weight of each sample.
    """
    if len(segments) == 0:
        return np.zeros((rows, cols), np.float32)
    r0, c0, r1, c1, width, strength = segments.T
    length = np.hypot(r1 - r0, c1 - c0)
    count = np.maximum(np.ceil(length).astype(np.int64), 1)
    owner = np.repeat(np.arange(len(count)), count)
    t = (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)) / count[owner]
    row = r0[owner] + t * (r1 - r0)[owner]
    col = c0[owner] + t * (c1 - c0)[owner]
    weight = (strength * np.minimum(width, 1.0) * length / count)[owner]
    top, left = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
    down, right = row - top, col - left
    index, weights = [], []
    corners = ((0, 0, (1 - down) * (1 - right)), (0, 1, (1 - down) * right), (1, 0, down * (1 - right)))
    for dr, dc, w in (*corners, (1, 1, down * right)):
        r, c = top + dr, left + dc
        ok = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        index.append(r[ok] * cols + c[ok])
        weights.append((weight * w)[ok])
    total = np.bincount(np.concatenate(index), np.concatenate(weights), minlength=rows * cols)
    return total.astype(np.float32).reshape(rows, cols)


def _hilar_shadow(rng: np.random.Generator, frame: _Frame, lung: _LungField) -> np.ndarray:
    """The pulmonary arteries and main bronchi at the hilum make a dense, lobulated shadow."""
    a = lung.shape.side * (frame.u[lung.bbox] - lung.centre[0])
    b = frame.v[lung.bbox] - lung.centre[1]
    radius = 0.05 * math.sqrt(frame.rows * frame.cols) * rng.uniform(0.8, 1.2)
    distance2 = ((a - lung.hilum[0]) ** 2 + 0.4 * (b - lung.hilum[1]) ** 2) * np.float32(1.0 / radius**2)
    return rng.uniform(0.04, 0.08) * np.exp(-distance2)


def _vessel_segments(rng: np.random.Generator, frame: _Frame, lung: _LungField) -> np.ndarray:
    """Grow a branching vessel tree from the hilum, all tips in parallel, until the vessels are too thin.

    Returns rows ``(row0, col0, row1, col1, width_px, strength)``, strength in [0, 1]. Vessels radiate from the
    hilum with a random wander and taper as they go and at every branching, so they are dense and thick centrally,
    sparse and faint towards the pleura, which they never quite reach.
    """
    scale = frame.scale
    w0 = 6.0 * scale * rng.uniform(0.8, 1.2)
    w_min = max(0.3, 0.45 * scale)
    step = 13.0 * scale + 1.0
    hx, hy = lung.hilum
    # lobar arteries leave a hilum spread over a tenth of the lung height, towards apex, axilla and base
    n = int(rng.integers(6, 9))
    direction = np.linspace(-1.7, 1.6, n) + rng.normal(0.0, 0.12, n)
    spread = 0.06 * float(lung.rho_at(-0.5 * np.pi) + lung.rho_at(0.5 * np.pi))
    start = hy + spread * np.sin(direction) / 1.6
    width = w0 * rng.uniform(0.7, 1.0, n) * (1.0 + 0.3 * (direction > 0))  # the lower lobe vessels are larger
    tips = np.column_stack([np.full(n, hx), start, direction, width])  # lateral, down, direction, width
    pieces = []
    while len(tips):
        a, b, direction, width = tips.T
        # keep heading away from the hilum, with a random wander
        turn = (np.arctan2(b - hy, a - hx) - direction + np.pi) % (2.0 * np.pi) - np.pi
        direction = direction + 0.1 * turn + rng.normal(0.0, 0.12, len(tips))
        ta, tb = a + step * np.cos(direction), b + step * np.sin(direction)
        ok = lung.local_q(ta, tb) < 0.95
        # deep in the lung a vessel meeting the mediastinum or a dome turns along it instead of ending
        glancing = ~ok & (lung.local_q(a, b) < 0.85)
        if glancing.any():
            inward = (np.arctan2(-b, -a) - direction + np.pi) % (2.0 * np.pi) - np.pi
            direction = np.where(glancing, direction + np.clip(inward, -0.8, 0.8), direction)
            ta, tb = a + step * np.cos(direction), b + step * np.sin(direction)
            ok = lung.local_q(ta, tb) < 0.95
        strength = np.sqrt(np.minimum(width / w0, 1.0))
        pieces.append(np.column_stack([a, b, ta, tb, width, strength])[ok])
        width = width * 0.955
        fork_draw, side_draw, spread_draw, child_draw = rng.random((4, len(tips)))
        fork = ok & (fork_draw < 0.25)
        sign = np.where(side_draw < 0.5, -1.0, 1.0)
        spread = 0.3 + 0.4 * spread_draw
        parent_width = np.where(fork, 0.9 * width, width)
        child_width = width * (0.6 + 0.25 * child_draw)
        parents = np.column_stack([ta, tb, direction - fork * sign * 0.3 * spread, parent_width])
        children = np.column_stack([ta, tb, direction + sign * spread, child_width])
        tips = np.concatenate([parents[ok & (parent_width > w_min)], children[fork & (child_width > w_min)]])[:2000]
    local = np.concatenate(pieces)
    cu, cv = lung.centre
    r0, c0 = frame.to_pixels(cu + lung.shape.side * local[:, 0], cv + local[:, 1])
    r1, c1 = frame.to_pixels(cu + lung.shape.side * local[:, 2], cv + local[:, 3])
    return np.column_stack([r0, c0, r1, c1, local[:, 4], local[:, 5]])


# ----------------------------------------------------------------------------------------------------------------
# Pneumothorax


@dataclass(frozen=True)
class _Pneumothorax:
    """One annotation: a crescent of depth ``depth(phi)`` (a fraction of the lung radius) along a lung's pleura."""

    lung: int
    centre: float
    half_width: float
    depth: np.ndarray

    def meets(self, other: _Pneumothorax) -> bool:
        """Whether the angular extents, widened by the separation margin, meet on the same lung."""
        return self.lung == other.lung and abs(self.centre - other.centre) < (
            self.half_width + other.half_width + _SEPARATION
        )


def _plan_pneumothoraces(
    rng: np.random.Generator, lungs: list[_LungField], n: int, area_scale: float
) -> list[_Pneumothorax]:
    """Choose side, site and size of every annotation.

    Most cases are on one side, a few bilateral. In about 30 % of multi-region cases one annotation partly
    overlaps an earlier one on the same lung (parts of one pneumothorax annotated separately); otherwise
    annotations are kept apart along the pleura, unless the pleura is already taken (several large ones), when
    a new one partly overlaps others rather than hide inside one.
    """
    plans: list[_Pneumothorax] = []
    if n == 0:
        return plans
    main = int(rng.integers(2))
    bilateral = rng.random() < _BILATERAL_PROBABILITY
    pair = None
    if n >= 2 and rng.random() < _OVERLAP_PROBABILITY:
        later = int(rng.integers(1, n))
        pair = (int(rng.integers(0, later)), later)
    for k in range(n):
        area = _sample_area(rng) * area_scale
        plan = None
        if pair is None or k != pair[1]:
            plan = _separate_crescent(rng, lungs, int(rng.integers(2)) if bilateral else main, plans, area)
        if plan is None:
            partner = pair[0] if pair is not None and k == pair[1] else None
            plan = _overlapping_crescent(rng, lungs, plans, partner, area)
        plans.append(plan)
    return plans


def _sample_area(rng: np.random.Generator) -> float:
    """Annotation area at 1024 x 1024: log-normal, skewed to small and medium, clipped to the observed range."""
    area = rng.lognormal(math.log(AREA_MEDIAN_1024), _AREA_LOG_SIGMA)
    return float(np.clip(area, AREA_MIN_1024, AREA_MAX_1024))


def _separate_crescent(
    rng: np.random.Generator, lungs: list[_LungField], lung: int, plans: list[_Pneumothorax], area: float
) -> _Pneumothorax | None:
    """A crescent apart from the earlier ones: random sites, then stubbier shapes, then the other lung.

    None when nothing fits.
    """
    for attempt in range(48):
        which = lung if attempt < 24 else 1 - lung
        aspect = rng.uniform(3.0, 10.0) * 0.92 ** (attempt % 24)
        site = _sample_site(rng)
        half_width = _initial_half_width(lungs[which], site, area, aspect)
        if any(_Pneumothorax(which, site, half_width, np.zeros(0)).meets(plan) for plan in plans):
            continue  # most likely hopeless, and fitting is the expensive part
        candidate = _fit_crescent(rng, lungs[which], which, site, area, half_width)
        if not any(candidate.meets(plan) for plan in plans):
            return candidate
    return None


def _overlapping_crescent(
    rng: np.random.Generator, lungs: list[_LungField], plans: list[_Pneumothorax], partner: int | None, area: float
) -> _Pneumothorax:
    """A crescent sharing part of the pleura of ``plans[partner]`` (of any earlier one if None).

    The shared arc is shorter than the smaller crescent's half-width, so neither centre, where the crescents are
    deepest, lies under the other; failing that, a narrower crescent deeper than its partner on the same centre.
    Every earlier crescent it meets must keep a part of its own, and so must it. If nothing fits, the last try
    is kept.
    """
    candidate = None
    for attempt in range(32):
        other = plans[partner if partner is not None else int(rng.integers(len(plans)))]
        lung = lungs[other.lung]
        first, last = lung.pleura
        aspect = rng.uniform(3.0, 10.0) * 0.85**attempt  # stubbier with every failure, to fit in
        if attempt < 24:
            half_width = min(_initial_half_width(lung, other.centre, area, aspect), 0.5 * (last - first))
            shared = rng.uniform(0.5, 0.9) * min(other.half_width, half_width)
            offset = other.half_width + half_width - shared
            sites = [other.centre + sign * offset for sign in ((1.0, -1.0) if rng.random() < 0.5 else (-1.0, 1.0))]
            sites = [c for c in sites if first + half_width <= c <= last - half_width]
            if not sites:
                continue
            candidate = _fit_crescent(rng, lung, other.lung, sites[0], area, half_width)
        else:  # ever narrower than the partner, hence deeper, until it reaches beyond it
            narrow = rng.uniform(0.5, 1.0) * 0.8 * 0.6 ** (attempt - 24) * other.half_width
            candidate = _fit_crescent(rng, lung, other.lung, other.centre, area, narrow)
        met = [plan for plan in plans if plan.lung == candidate.lung and _supports_meet(plan, candidate)]
        if _partly_overlapping(candidate, other, lung) and all(_partly_overlapping(candidate, p, lung) for p in met):
            return candidate
    return candidate


def _supports_meet(a: _Pneumothorax, b: _Pneumothorax) -> bool:
    """Whether two crescents of one lung share some pleura."""
    return abs(a.centre - b.centre) < a.half_width + b.half_width


def _partly_overlapping(a: _Pneumothorax, b: _Pneumothorax, lung: _LungField) -> bool:
    """Overlap a couple of pixels deep, each crescent also reaching that far where the other does not.

    Crescents shallower than 4 pixels only need to share and keep half their depth.
    """
    shared = np.minimum(a.depth, b.depth) * lung.rho
    own_a = (a.depth - b.depth) * lung.rho
    own_b = (b.depth - a.depth) * lung.rho
    enough = min(2.0, 0.5 * float(a.depth.max() * lung.rho.max()), 0.5 * float(b.depth.max() * lung.rho.max()))
    return shared.max() >= enough and own_a.max() >= enough and own_b.max() >= enough


def _sample_site(rng: np.random.Generator) -> float:
    """Centre angle of a crescent: apical, lateral or basal."""
    first, last, _ = _SITES[rng.choice(len(_SITES), p=[p for _, _, p in _SITES])]
    return float(np.deg2rad(rng.uniform(first, last)))


def _initial_half_width(lung: _LungField, centre: float, area: float, aspect: float) -> float:
    """Angular half-width giving ``area`` to a crescent ``aspect`` times longer than thick.

    A crescent of depth ``H rho`` over ``2 psi`` radians covers about ``0.6 H psi rho**2``; with
    ``H = 2 psi / aspect`` that gives ``psi = sqrt(area * aspect / (1.2 rho**2))``.
    """
    rho = float(lung.rho_at(centre))
    return math.sqrt(area * aspect / (1.2 * rho * rho))


def _fit_crescent(
    rng: np.random.Generator, lung: _LungField, lung_index: int, centre: float, area: float, half_width: float
) -> _Pneumothorax:
    """Shape a crescent ``2 * half_width`` radians long around ``centre`` and size it to ``area`` pixels.

    The depth is solved by bisection on the polar area. When the crescent cannot get deep enough it lengthens
    along the pleura, up to the whole outer pleura; it is shifted along the pleura where it would leave it.
    """
    area = min(area, _MAX_LUNG_FRACTION * lung.area)
    first, last = lung.pleura
    span = last - first
    half_width = float(np.clip(half_width, 2.0 / float(lung.rho_at(centre)), 0.5 * span))
    sharpness, fullness = rng.uniform(2.0, 4.0), rng.uniform(0.6, 1.2)
    ripple = _periodic_ripple(rng, 0.08, range(1, 5))
    while True:
        centre = float(np.clip(centre, first + half_width, last - half_width))
        along = (_ANGLES - centre) / half_width
        # flat-topped bump: a pneumothorax keeps a fairly even rim, tapering only near its ends
        profile = np.clip(1.0 - np.abs(along) ** sharpness, 0.0, 1.0) ** fullness * (1.0 + ripple)
        profile[np.abs(along) >= 1.0] = 0.0
        support = profile > 0.0
        depth = _solve_depth(lung.rho[support], profile[support], area)
        if depth is not None or half_width >= 0.5 * span:
            break
        half_width = min(1.3 * half_width, 0.5 * span)
    if depth is None:
        depth = _MAX_DEPTH
    depth = np.minimum(depth * profile, _MAX_DEPTH)
    # the tapering ends keep a pixel or so along the pleura, across it even where rays meet it obliquely, so that
    # they do not break into loose pixels
    depth = np.where(depth > 0.0, np.maximum(depth, _MIN_THICKNESS_PX * lung.obliquity / lung.rho), 0.0)
    return _Pneumothorax(lung=lung_index, centre=centre, half_width=half_width, depth=depth)


def _crescent_area(rho: np.ndarray, depth: np.ndarray) -> float:
    """Polar area in pixels between the pleura and the collapsed lung edge ``(1 - depth) rho``."""
    return float(0.5 * np.sum(rho * rho * (1.0 - (1.0 - depth) ** 2)) * _DPHI)


def _solve_depth(rho: np.ndarray, profile: np.ndarray, area: float) -> float | None:
    """Peak depth giving ``area``, or None when even the deepest allowed crescent is smaller."""
    if _crescent_area(rho, np.minimum(_MAX_DEPTH * profile, _MAX_DEPTH)) < area:
        return None
    low, high = 0.0, _MAX_DEPTH
    for _ in range(20):
        middle = 0.5 * (low + high)
        if _crescent_area(rho, np.minimum(middle * profile, _MAX_DEPTH)) < area:
            low = middle
        else:
            high = middle
    return high


def _rasterize_regions(
    frame: _Frame, lungs: list[_LungField], plans: list[_Pneumothorax]
) -> tuple[list[_Pneumothorax], list[np.ndarray]]:
    """Masks of the planned crescents: the lung pixels beyond the collapsed lung edge.

    A crescent too thin to cover a pixel centre is deepened until it does, so every mask is non-empty; the plans
    returned are the ones actually drawn. An annotation is one outline, so only the largest 8-connected piece of
    a crescent is kept: where its thin end runs along a ledge of the outline, a few loose pixels can fall off.
    """
    drawn, masks = [], []
    for plan in plans:
        lung = lungs[plan.lung]
        for _ in range(30):
            local = lung.inside & (lung.q > 1.0 - lung.lookup(plan.depth))
            if local.any():
                break
            plan = replace(plan, depth=np.minimum(plan.depth * 1.5 + (plan.depth > 0) * 1e-3, _MAX_DEPTH))
        pieces, count = ndimage.label(local, structure=np.ones((3, 3), bool))
        if count > 1:
            local = pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
        mask = np.zeros((frame.rows, frame.cols), bool)
        mask[lung.bbox] = local
        drawn.append(plan)
        masks.append(mask)
    return drawn, masks


def _pneumothorax_lucency(
    rng: np.random.Generator, frame: _Frame, lungs: list[_LungField], plans: list[_Pneumothorax], union: np.ndarray
) -> np.ndarray:
    """Attenuation change of the pneumothoraces: a little more lucent, and the thin visceral pleural line.

    Only pixels of ``union`` change. The line runs along the collapsed lung edge just inside the annotation and
    fades where the crescent is thinner than a few pixels.
    """
    change = np.zeros((frame.rows, frame.cols), np.float32)
    if not plans:
        return change
    lucency = rng.uniform(0.004, 0.012)  # besides the lung tissue density the markings carried
    line_strength = lucency * rng.uniform(0.8, 1.6)  # faint, so that annotations stay darker than the lung
    line_px = max(0.7, rng.uniform(0.8, 1.3) * frame.scale)
    for index, lung in enumerate(lungs):
        depths = [plan.depth for plan in plans if plan.lung == index]
        local = union[lung.bbox]
        if not depths or not local.any():
            continue
        # only the box of the annotations needs the work
        rows, cols = np.flatnonzero(local.any(axis=1)), np.flatnonzero(local.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        inner = _lookup(np.max(depths, axis=0), lung.index[box], lung.weight[box])
        rho_px = lung.rho_px[box]
        beyond_px = (lung.q[box] - (1.0 - inner)) * rho_px
        fade = np.clip(inner * rho_px * np.float32(1.0 / (6.0 * frame.scale + 2.0)), 0.0, 1.0)
        line = np.exp(-((beyond_px / line_px) ** 2)) * fade
        change[lung.bbox][box] += local[box] * (line_strength * line - lucency)
    return change


# ----------------------------------------------------------------------------------------------------------------
# Acquisition


def _expose(rng: np.random.Generator, frame: _Frame, attenuation: np.ndarray, extra_blur: float = 0.0) -> np.ndarray:
    """Exposure curve, quantum noise, detector blur and 8-bit quantisation, varied per case like real CR films.

    ``extra_blur`` (pixels) softens the edges further, added in quadrature to the detector's own blur.
    """
    black = rng.uniform(0.0, 0.1)
    white = rng.uniform(1.1, 1.25)
    gamma = rng.uniform(0.9, 1.4)
    noise = rng.uniform(1.5, 4.0)
    blur = math.hypot(rng.uniform(0.4, 0.8) * frame.scale, extra_blur)
    level = attenuation - np.float32(black)
    level *= np.float32(1.0 / (white - black))
    np.clip(level, 0.0, 1.0, out=level)
    level **= np.float32(gamma)
    # fewer photons reach the detector behind dense tissue, so bright areas are noisier; uniform noise of the
    # same variance is much cheaper to draw than Gaussian and, blurred and quantised, looks the same
    image = rng.random((frame.rows, frame.cols), dtype=np.float32)
    image -= np.float32(0.5)
    image *= np.float32(noise * math.sqrt(12.0)) * (0.6 + 0.8 * level)
    image += 255.0 * level
    image = _blur(image, blur)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
