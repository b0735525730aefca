"""Overlay pictures: a radiograph with the outline of its pneumothorax mask, for a quick look.

    python -m scripts.inference.overlay --dicom FILE [--rle "..." | --csv train-rle.csv] --out picture.png
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from scripts.siim import rle
from scripts.utils.files import atomic_open

__all__ = ["render_overlay", "save_overlay"]

OUTLINE_RGB = (255, 64, 32)
FILL_RGB = (255, 200, 0)


def render_overlay(image: np.ndarray, mask: np.ndarray, thickness: int = 2, fill_alpha: float = 0.2) -> np.ndarray:
    """``(rows, cols, 3)`` uint8: the greyscale image (scaled to 0-255) with the mask tinted and outlined.

    Both arrays are in image orientation ``(rows, cols)``.
    """
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if image.shape != mask.shape or image.ndim != 2:
        raise ValueError(f"overlay needs a 2-D image and a mask of the same shape, got {image.shape} and {mask.shape}")
    low, high = float(image.min()), float(image.max())
    grey = ((image - low) / max(high - low, 1e-6) * 255.0).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    rgb[mask] = (1 - fill_alpha) * rgb[mask] + fill_alpha * np.array(FILL_RGB, dtype=np.float32)
    outline = mask & ~ndimage.binary_erosion(mask, iterations=max(1, thickness))
    rgb[outline] = OUTLINE_RGB
    return rgb.astype(np.uint8)


def save_overlay(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray, **kwargs) -> Path:
    """Write :func:`render_overlay` as a PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_open(path, "wb") as handle:
        Image.fromarray(render_overlay(image, mask, **kwargs), mode="RGB").save(handle, format="PNG")
    return path


def main(argv: list[str] | None = None) -> int:
    import pydicom

    from scripts.data.intensity import NormalizeRadiograph
    from scripts.siim.image_id import dicom_image_id
    from scripts.siim.rle_csv import read_rle_csv

    parser = argparse.ArgumentParser(description="Draw a DICOM radiograph with its pneumothorax outline as a PNG.")
    parser.add_argument("--dicom", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rle", help="one annotation string")
    source.add_argument("--csv", help="SIIM CSV: all annotations of this image (its ImageId) are drawn")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    ds = pydicom.dcmread(args.dicom)
    pixels = ds.pixel_array
    if args.csv:
        image_id = dicom_image_id(args.dicom, header=ds)
        annotations = read_rle_csv(args.csv).annotations.get(image_id)
        if annotations is None:
            parser.error(f"{args.csv}: no rows for {image_id}")
    else:
        annotations = [args.rle]
    mask = np.zeros(pixels.shape, dtype=bool)
    for annotation in annotations:
        mask |= rle.decode(annotation, pixels.shape)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    pixels = NormalizeRadiograph(mode="bits")(
        pixels,
        photometric=photometric,
        bits_stored=getattr(ds, "BitsStored", None),
        lut_shape=getattr(ds, "PresentationLUTShape", None),
    )
    print(save_overlay(args.out, pixels, mask))
    return 0


if __name__ == "__main__":
    sys.exit(main())
