"""Reading radiographs stored as PNG, as NIH ChestX-ray14 ships its 112,120 images, beside DICOM.

:class:`LoadChestImaged` is the loading step of the image-level classifier (``configs/classifier.json``): a PNG is
read here, anything else goes to :class:`~scripts.data.reader.LoadRadiographd`, so DICOM files load exactly as the
segmenter loads them. A loaded PNG has the layout of a loaded DICOM (MONAI's ``(cols, rows)``, no channel yet) and
the same metadata keys (``PhotometricInterpretation`` MONOCHROME2, ``BitsStored``, ``Rows``, ``Columns``, and the
file's stem as ``SOPInstanceUID``), so the rest of the pipeline cannot tell them apart.

Before a PNG is decoded its header is checked (:func:`png_problem`): the PNG signature, a complete ``IHDR``, and
width x height within ``max_pixels``. 8- and 16-bit grey images keep their values; colour, palette and
grey-with-alpha images (a few NIH files are RGBA) become grey by PIL's luminance conversion.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from scripts.data.reader import DEFAULT_MAX_PIXELS, LoadRadiographd

__all__ = ["LoadChestImaged", "is_png", "png_problem", "read_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: str | Path) -> bool:
    """Whether the file starts with the PNG signature (False for what cannot be opened)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == PNG_SIGNATURE
    except OSError:
        return False


def png_problem(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the PNG at ``path`` cannot be a radiograph, from its header alone (not a PNG, no complete ``IHDR``, no
    pixels, more than ``max_pixels``), or None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(33)
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    if not head.startswith(PNG_SIGNATURE):
        return "not a PNG image"
    if len(head) < 33 or head[12:16] != b"IHDR":
        return "truncated PNG (no complete IHDR header)"
    width, height = struct.unpack(">II", head[16:24])
    if width == 0 or height == 0:
        return f"a PNG of {width} x {height} pixels"
    if width * height > max_pixels:
        return f"a PNG of {width} x {height} pixels, more than max_image_pixels ({max_pixels})"
    return None


def read_png(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> MetaTensor:
    """The PNG at ``path`` as a ``(cols, rows)`` MetaTensor with DICOM-like metadata (see the module docstring).

    Raises:
        ValueError: naming the file: what :func:`png_problem` finds, or pixel data that cannot be decoded.
    """
    from PIL import Image

    problem = png_problem(path, max_pixels)
    if problem:
        raise ValueError(f"{path}: {problem}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels, bits = np.asarray(image).astype(np.uint16 if image.mode != "I" else np.int32), 16
            else:
                pixels, bits = np.asarray(image if image.mode == "L" else image.convert("L")), 8
    except Exception as error:  # truncated or corrupt data: PIL raises several types
        raise ValueError(f"{path}: PNG pixel data cannot be decoded ({type(error).__name__}: {error})") from None
    if pixels.ndim != 2:
        raise ValueError(f"{path}: a PNG of shape {pixels.shape}, not one grey image")
    rows, cols = pixels.shape
    meta = {
        "filename_or_obj": str(path),
        "original_channel_dim": float("nan"),  # as MONAI's PydicomReader gives it: no channel dimension
        "spatial_shape": (cols, rows),
        "spacing": np.ones(2),
        "original_affine": np.eye(3),
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsStored": bits,
        "SOPInstanceUID": Path(path).stem,
        "Rows": rows,
        "Columns": cols,
        "PresentationLUTShape": "IDENTITY",
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(pixels.T)), meta=meta)


class LoadChestImaged(MapTransform):
    """Load PNG radiographs (:func:`read_png`) and DICOM ones (:class:`~scripts.data.reader.LoadRadiographd`).

    Args:
        keys: keys holding file paths.
        max_pixels: the most pixels an image may have (``max_image_pixels``).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection, max_pixels: int = DEFAULT_MAX_PIXELS, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_pixels = int(max_pixels)
        self.dicom = LoadRadiographd(keys, max_pixels=max_pixels, allow_missing_keys=allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            if is_png(d[key]):
                d[key] = read_png(d[key], self.max_pixels)
            else:
                d[key] = self.dicom.loader(d[key], reader=self.dicom.reader)
        return d
