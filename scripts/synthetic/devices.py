"""What real chest films show besides the patient: tubes, lines, ECG leads, markers, burned-in text, collimation.

A model that segments pneumothoraces on real radiographs has to ignore all of these, and a well-known failure is
that it learns one of them instead: the chest drain, put in *because* of a pneumothorax. ``draw_devices`` adds them
to a synthetic chest (``scripts.synthetic.anatomy.render_chest`` with ``devices=DeviceOptions(...)``), each with
its own probability, the drain's depending on whether the image has a pneumothorax:

* **chest drain**: a plastic tube (two faint walls) with a radio-opaque stripe, entering through the lateral chest
  wall and running up towards the apex, with side holes near its tip where the stripe breaks; on the side of the
  pneumothorax with probability ``drain_same_side``, outside the body running off the image;
* **ECG leads**: electrode pads with a metal snap, and their wires running off the image;
* **central line**: a thin radio-opaque catheter from the neck or below the clavicle into the superior vena cava;
* **lead marker**: an "L" or "R" in a plastic holder near the upper corner on that side, opaque to X-rays;
* **burned-in text**: "AP", "PORTABLE" or "AP PORTABLE", written into the pixels after processing;
* **collimation**: unexposed, white borders on some edges, never reaching the lungs (so no pneumothorax is hidden);
* **soft edges**: extra detector blur, as on older or moving patients' films.

Everything a device does is an added attenuation (or, for text and collimation, saturated pixels), so the
pneumothorax masks are exactly those of the same chest drawn without devices. Nothing here is drawn unless the
caller asks: without ``devices`` the generator's output is byte for byte what it was before devices existed.
Rotation is part of the anatomy already (a few degrees per case).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "DEVICE_COLUMNS", "ChestLandmarks", "DeviceOptions", "DevicesDrawn", "burn_in", "draw_devices", "parse_points",
    "points_text",
]  # fmt: skip

_SUPERSAMPLE = 2  # devices are drawn at twice the resolution and averaged down, so thin lines are anti-aliased
_TEXTS = ("AP", "PORTABLE", "AP PORTABLE")


@dataclass(frozen=True)
class DeviceOptions:
    """How often each device appears, as a probability per image.

    ``drain_positive`` and ``drain_negative`` set how strongly a drain goes with a pneumothorax: the defaults make
    it a strong shortcut, as on real films; equal values make drains independent of the label.
    """

    drain_positive: float = 0.5
    drain_negative: float = 0.05
    drain_same_side: float = 0.9
    ecg: float = 0.4
    central_line: float = 0.25
    marker: float = 0.85
    text: float = 0.5
    collimation: float = 0.5
    soft_edges: float = 0.5

    def __post_init__(self):
        for option in fields(self):
            value = getattr(self, option.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"device option {option.name} must be a probability in [0, 1], got {value}")

    @classmethod
    def none(cls) -> DeviceOptions:
        """No device at all (byte-identical to a chest drawn without device options)."""
        return cls(**{option.name: 0.0 for option in fields(cls)})


@dataclass(frozen=True)
class LungBox:
    """Where one lung is, in normalised frame coordinates (see ``scripts.synthetic.anatomy``)."""

    side: int  # -1: the patient's right lung, on the image left; +1: the left lung
    x_medial: float
    x_lateral: float
    y_apex: float
    y_base: float


@dataclass(frozen=True)
class ChestLandmarks:
    """What the devices need to know of the chest they are placed on.

    ``to_pixels(u, v)`` maps frame pixels to image (row, column); ``half_width(y)`` is the body's half-width at
    height ``y``; ``lung_box`` the image rows and columns ``(r0, r1, c0, c1)`` the lung fields span.
    """

    rows: int
    cols: int
    scale: float
    to_pixels: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    mid: float
    half_width: Callable[[float], float]
    lungs: tuple[LungBox, LungBox]
    lung_box: tuple[int, int, int, int]
    lesion_side: int | None  # side of the (first) pneumothorax, None for a normal chest


#: Columns of the ``devices.csv`` a synthetic dataset writes beside ``train-rle.csv``.
DEVICE_COLUMNS = (
    "drain", "drain_side", "ecg_leads", "central_line", "marker", "text", "collimation", "blur", "drain_path"
)  # fmt: skip
_PATH_STEP = 4  # devices.csv keeps every 4th point of a drain's path (about 6 pixels apart) and its last


@dataclass
class DevicesDrawn:
    """What was drawn on one image. Sides are the patient's: "R" (image left) or "L" (image right)."""

    drain_side: str = ""
    ecg_leads: int = 0
    central_line_side: str = ""
    marker: str = ""
    text: str = ""
    text_corner: str = ""  # "left" or "right": the top corner the text is burned into
    collimation: tuple[str, ...] = ()  # edges with a border: "top", "bottom", "left", "right"
    blur: float = 0.0  # extra detector blur in pixels
    drain_path: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)  # (row, col) points
    side_holes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    electrodes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)

    def row(self) -> dict[str, str]:
        """This image's row of ``devices.csv``."""
        return {
            "drain": str(int(bool(self.drain_side))),
            "drain_side": self.drain_side,
            "ecg_leads": str(self.ecg_leads),
            "central_line": self.central_line_side,
            "marker": self.marker,
            "text": self.text,
            "collimation": " ".join(self.collimation),
            "blur": f"{self.blur:.3f}",
            "drain_path": points_text(self.drain_path[_keep(len(self.drain_path))]),
        }


def _keep(n: int) -> np.ndarray:
    return np.unique(np.r_[np.arange(0, n, _PATH_STEP), n - 1]) if n else np.zeros(0, int)


def points_text(points: np.ndarray) -> str:
    """``(row, col)`` points as devices.csv writes them: ``"row col;row col;..."``, to the pixel."""
    return ";".join(f"{row:.0f} {col:.0f}" for row, col in np.asarray(points).reshape(-1, 2))


def parse_points(text: str) -> np.ndarray:
    """The ``(n, 2)`` float array of ``(row, col)`` points of a devices.csv path (``points_text``); empty for ""."""
    if not text.strip():
        return np.zeros((0, 2))
    try:
        return np.array([[float(v) for v in pair.split()] for pair in text.split(";")]).reshape(-1, 2)
    except ValueError as error:
        raise ValueError(f"not a devices.csv path of 'row col' pairs: {text[:60]!r}") from error


def draw_devices(
    rng: np.random.Generator, chest: ChestLandmarks, options: DeviceOptions
) -> tuple[np.ndarray, DevicesDrawn]:
    """The attenuation the devices add to the chest, and what was drawn.

    Every device draws its randomness whether or not it appears, so switching one device off leaves the others
    where they were.
    """
    drawn = DevicesDrawn()
    canvas = _Canvas(chest.rows, chest.cols)
    seeds = rng.integers(0, 2**63 - 1, size=6)
    drain_rng, ecg_rng, line_rng, marker_rng, border_rng, blur_rng = (np.random.default_rng(s) for s in seeds)

    positive = chest.lesion_side is not None
    if drain_rng.random() < (options.drain_positive if positive else options.drain_negative):
        side = _drain_side(drain_rng, chest.lesion_side, options.drain_same_side)
        drawn.drain_path, drawn.side_holes = _draw_drain(drain_rng, chest, side, canvas)
        drawn.drain_side = _SIDE_NAMES[side]
    if ecg_rng.random() < options.ecg:
        drawn.electrodes = _draw_ecg_leads(ecg_rng, chest, canvas)
        drawn.ecg_leads = len(drawn.electrodes)
    if line_rng.random() < options.central_line:
        drawn.central_line_side = _SIDE_NAMES[_draw_central_line(line_rng, chest, canvas)]
    if marker_rng.random() < options.marker:
        drawn.marker = _draw_marker(marker_rng, chest, canvas)
    if marker_rng.random() < options.text:
        drawn.text = str(marker_rng.choice(_TEXTS))
        drawn.text_corner = "left" if marker_rng.random() < 0.5 else "right"
    if border_rng.random() < options.collimation:
        drawn.collimation = _draw_collimation(border_rng, chest, canvas)
    if blur_rng.random() < options.soft_edges:
        drawn.blur = float(blur_rng.uniform(0.5, 1.2) * chest.scale)
    return canvas.attenuation(), drawn


def burn_in(image: np.ndarray, drawn: DevicesDrawn) -> None:
    """Write the drawn text into a top corner of an 8-bit image, in place, as a scanner's annotation is."""
    if not drawn.text:
        return
    rows, cols = image.shape
    font = ImageFont.load_default(size=max(7, round(0.035 * rows)))
    left, top, right, bottom = font.getbbox(drawn.text)
    stamp = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(stamp).text((1 - left, 1 - top), drawn.text, fill=255, font=font)
    ink = np.asarray(stamp) > 127  # crisp, as a scanner writes it
    margin = max(2, round(0.06 * rows))  # below any collimation border
    c0 = margin if drawn.text_corner == "left" else max(cols - margin - ink.shape[1], 0)
    ink = ink[: rows - margin, : cols - c0]
    box = image[margin : margin + ink.shape[0], c0 : c0 + ink.shape[1]]
    box[ink] = 250


# ----------------------------------------------------------------------------------------------------------------

_SIDE_NAMES = {-1: "R", 1: "L"}


class _Canvas:
    """Attenuation layers drawn with PIL at ``_SUPERSAMPLE`` times the image resolution, one per strength."""

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols
        self.layers: list[tuple[Image.Image, float]] = []

    def layer(self, strength: float) -> ImageDraw.ImageDraw:
        image = Image.new("L", (self.cols * _SUPERSAMPLE, self.rows * _SUPERSAMPLE), 0)
        self.layers.append((image, strength))
        return ImageDraw.Draw(image)

    def attenuation(self) -> np.ndarray:
        total = np.zeros((self.rows, self.cols), np.float32)
        for image, strength in self.layers:
            total += np.asarray(image.reduce(_SUPERSAMPLE), dtype=np.float32) * np.float32(strength / 255.0)
        return total


def _super(points: np.ndarray) -> list[tuple[float, float]]:
    """(row, col) image points as PIL (x, y) coordinates of the supersampled canvas."""
    scaled = points * _SUPERSAMPLE + (_SUPERSAMPLE - 1) / 2.0
    return [(float(c), float(r)) for r, c in scaled]


def _width(px_at_1024: float, chest: ChestLandmarks) -> int:
    """A line width given in pixels of a 1024 image, on the supersampled canvas, at least one pixel of it."""
    return max(1, round(px_at_1024 * chest.scale * _SUPERSAMPLE))


def _path(chest: ChestLandmarks, waypoints: list[tuple[float, float]], step_px: float = 1.5) -> np.ndarray:
    """A smooth (Catmull-Rom) path through normalised ``(x, y)`` waypoints, as image ``(row, col)`` points about
    ``step_px`` apart."""
    xy = np.asarray(waypoints, dtype=np.float64)
    u, v = xy[:, 0] * chest.cols, (xy[:, 1] - 0.5) * chest.rows
    points = np.stack(chest.to_pixels(u, v), axis=1)
    padded = np.concatenate([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    pieces = []
    for k in range(len(points) - 1):
        p0, p1, p2, p3 = padded[k : k + 4]
        count = max(2, math.ceil(np.hypot(*(p2 - p1)) / step_px))
        t = np.linspace(0.0, 1.0, count, endpoint=False)[:, None]
        pieces.append(
            0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
        )
    pieces.append(points[-1:])
    return np.concatenate(pieces)


def _arc_length(path: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])


def _drain_side(rng: np.random.Generator, lesion_side: int | None, same_side: float) -> int:
    random_side = -1 if rng.random() < 0.5 else 1
    if lesion_side is None:
        return random_side
    return lesion_side if rng.random() < same_side else -lesion_side


def _draw_drain(
    rng: np.random.Generator, chest: ChestLandmarks, side: int, canvas: _Canvas
) -> tuple[np.ndarray, np.ndarray]:
    """A chest drain through the lateral chest wall (the "safe triangle"), tip towards the apex."""
    lung = chest.lungs[0 if side == -1 else 1]
    y_entry = rng.uniform(0.52, 0.68)
    skin = chest.mid + side * chest.half_width(y_entry)
    inner = lung.x_medial + 0.65 * (lung.x_lateral - lung.x_medial)
    tip_x = lung.x_medial + rng.uniform(0.35, 0.6) * (lung.x_lateral - lung.x_medial)
    tip_y = lung.y_apex + rng.uniform(0.04, 0.12)
    outside = [(side * 0.75, y_entry + rng.uniform(0.1, 0.3)), (skin + side * 0.04, y_entry + rng.uniform(0.02, 0.06))]
    inside = [
        (skin, y_entry),
        (0.5 * (skin + inner), y_entry - rng.uniform(0.02, 0.05)),
        (inner + rng.normal(0, 0.01), 0.5 * (y_entry + tip_y)),
        (tip_x, tip_y),
    ]
    path = _path(chest, outside + inside)
    length = _arc_length(path)
    tube = _width(rng.uniform(9.0, 13.0), chest)
    wall = max(1, round(tube * 0.22))
    canvas.layer(0.14).line(_super(path), width=tube, fill=255)  # walls and lumen
    canvas.layer(-0.08).line(_super(path), width=max(1, tube - 2 * wall), fill=255)  # the lumen is thinner
    # side holes: the last stretch of the tube, where the stripe breaks and the wall is open
    n_holes = int(rng.integers(3, 7))
    spacing = rng.uniform(14.0, 22.0) * chest.scale
    hole_at = length[-1] - rng.uniform(4.0, 8.0) * chest.scale - spacing * np.arange(n_holes)
    holes = path[np.searchsorted(length, hole_at)]
    gap = 0.5 * tube / _SUPERSAMPLE + 1.0
    stripe = canvas.layer(0.5)
    keep = np.ones(len(path), bool)
    for at in hole_at:
        keep &= np.abs(length - at) > gap
    for piece in np.split(np.arange(len(path)), np.flatnonzero(np.diff(keep.astype(int)) != 0) + 1):
        if keep[piece[0]] and len(piece) > 1:
            stripe.line(_super(path[piece]), width=_width(2.5, chest), fill=255)
    opening = canvas.layer(-0.05)
    radius = 0.35 * tube
    for x, y in _super(holes):
        opening.ellipse([(x - radius, y - radius), (x + radius, y + radius)], fill=255)
    return path, holes


def _draw_ecg_leads(rng: np.random.Generator, chest: ChestLandmarks, canvas: _Canvas) -> np.ndarray:
    """Three to five electrodes (pad and snap) on the shoulders and lower chest, their wires off the image;
    returns the electrodes' (row, col)."""
    sites = [(-0.3, 0.17), (0.3, 0.17), (0.28, 0.8), (-0.28, 0.82), (0.05, 0.72)]
    count = int(rng.integers(3, 6))
    pads, snaps, wires = canvas.layer(0.05), canvas.layer(0.9), canvas.layer(0.3)
    pad_r, snap_r = 13.0 * chest.scale * _SUPERSAMPLE, max(3.5 * chest.scale, 1.0) * _SUPERSAMPLE
    centres = []
    for x, y in sites[:count]:
        x, y = chest.mid + x + rng.normal(0, 0.03), y + rng.normal(0, 0.03)
        centre = _path(chest, [(x, y), (x, y + 1e-3)])[:1]
        centres.append(centre[0])
        ((cx, cy),) = _super(centre)
        pads.ellipse([(cx - pad_r, cy - pad_r), (cx + pad_r, cy + pad_r)], fill=255)
        snaps.ellipse([(cx - snap_r, cy - snap_r), (cx + snap_r, cy + snap_r)], fill=255)
        exit_y = -0.1 if y < 0.5 else 1.1
        bend = (x + rng.uniform(-0.25, 0.25), 0.5 * (y + exit_y) + rng.uniform(-0.1, 0.1))
        wire = _path(chest, [(x, y), bend, (x + rng.uniform(-0.3, 0.3), exit_y)])
        wires.line(_super(wire), width=_width(2.0, chest), fill=255)
    return np.array(centres)


def _draw_central_line(rng: np.random.Generator, chest: ChestLandmarks, canvas: _Canvas) -> int:
    """A catheter from the jugular (neck) or subclavian vein, tip in the superior vena cava; returns its side."""
    side = -1 if rng.random() < 0.7 else 1
    svc_x = chest.mid - rng.uniform(0.025, 0.045)  # the SVC runs down the right of the mediastinum
    tip = (svc_x, rng.uniform(0.34, 0.42))
    if rng.random() < 0.6:  # internal jugular: down the neck
        start = [(chest.mid + side * rng.uniform(0.05, 0.1), -0.05), (chest.mid + side * 0.06, 0.12)]
    else:  # subclavian: along below the clavicle
        start = [(chest.mid + side * 0.45, 0.12), (chest.mid + side * 0.22, 0.2), (chest.mid + side * 0.08, 0.23)]
    path = _path(chest, start + [(svc_x, 0.28), tip])
    canvas.layer(0.28).line(_super(path), width=_width(3.0, chest), fill=255)
    return side


def _draw_marker(rng: np.random.Generator, chest: ChestLandmarks, canvas: _Canvas) -> str:
    """A lead "L" (image right) or "R" (image left) in its holder near an upper corner."""
    letter = "L" if rng.random() < 0.5 else "R"
    size = max(8, round(rng.uniform(34, 46) * chest.scale)) * _SUPERSAMPLE
    margin = rng.uniform(0.03, 0.08)
    row = rng.uniform(0.03, 0.12) * chest.rows * _SUPERSAMPLE
    col = (margin if letter == "R" else 1.0 - margin) * chest.cols * _SUPERSAMPLE - size / 2
    canvas.layer(0.15).rounded_rectangle([(col, row), (col + size, row + size)], radius=size // 6, fill=255)
    font = ImageFont.load_default(size=round(size * 0.8))
    canvas.layer(2.0).text((col + size / 2, row + size / 2), letter, fill=255, font=font, anchor="mm")
    return letter


def _draw_collimation(rng: np.random.Generator, chest: ChestLandmarks, canvas: _Canvas) -> tuple[str, ...]:
    """White, unexposed bands on one to four edges, each stopping short of the lung fields."""
    r0, r1, c0, c1 = chest.lung_box
    room = {"top": r0, "bottom": chest.rows - r1, "left": c0, "right": chest.cols - c1}
    size = {"top": chest.rows, "bottom": chest.rows, "left": chest.cols, "right": chest.cols}
    edges = [edge for edge in room if rng.random() < 0.5] or [str(rng.choice(list(room)))]
    layer = canvas.layer(3.0)
    drawn = []
    for edge in edges:
        depth = min(rng.uniform(0.01, 0.05) * size[edge], room[edge] - 3.0)
        if depth < 1.0:
            continue
        tilt = rng.uniform(-0.01, 0.01) * size[edge]  # blades are not quite square to the detector
        near, far = max(depth - abs(tilt), 0.0), depth  # the band's depth at either end, never over `depth`
        a, b = (near, far) if tilt > 0 else (far, near)
        h, w = chest.rows * _SUPERSAMPLE, chest.cols * _SUPERSAMPLE
        a, b = a * _SUPERSAMPLE, b * _SUPERSAMPLE
        corners = {
            "top": [(0, 0), (w, 0), (w, b), (0, a)],
            "bottom": [(0, h), (w, h), (w, h - b), (0, h - a)],
            "left": [(0, 0), (0, h), (b, h), (a, 0)],
            "right": [(w, 0), (w, h), (w - b, h), (w - a, 0)],
        }[edge]
        layer.polygon(corners, fill=255)
        drawn.append(edge)
    return tuple(drawn)
