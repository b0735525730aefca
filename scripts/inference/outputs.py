"""The files inference writes per image, in image orientation ``(rows, cols)`` and named by the image's ImageId
(``scripts.siim.image_id``: its SOPInstanceUID):

* ``masks/<ImageId>.png``: the mask, 0/255 uint8, the DICOM's rows x columns;
* ``seg/<ImageId>.dcm``: a DICOM Segmentation referencing the source image (positive images only,
  ``scripts.inference.dicom_seg``), the image's probability in its Segment Description;
* ``overlays/<ImageId>.png`` (optional): the image with the mask outlined (``scripts.inference.overlay``);
* ``heatmaps/<ImageId>.png`` (optional): the image with its Grad-CAM heatmap blended (``scripts.inference.heatmaps``).

:func:`write_image_files` runs in a writer process (``scripts.inference.writer_pool``): its arguments are plain
arrays and strings, and it returns strings, so nothing that fails to pickle crosses between processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom

from scripts.data.labels import MaskToRLE
from scripts.inference.overlay import save_overlay
from scripts.utils.errors import error_reason
from scripts.utils.files import atomic_open

__all__ = ["OUTPUT_FOLDERS", "image_output_paths", "import_writers", "save_png", "write_image_files"]

OUTPUT_FOLDERS = ("masks", "seg", "overlays", "heatmaps")
_SUFFIXES = {"masks": ".png", "seg": ".dcm", "overlays": ".png", "heatmaps": ".png"}
_ENCODE = MaskToRLE()


def image_output_paths(output_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """Where one image's files go in an inference output folder: output folder (``masks``, ``seg``, ``overlays``,
    ``heatmaps``) -> ``<output_dir>/<folder>/<name>.png`` (``.dcm`` for the SEG)."""
    return {folder: Path(output_dir) / folder / f"{name}{_SUFFIXES[folder]}" for folder in OUTPUT_FOLDERS}


def import_writers(seg: bool) -> None:
    """Import what :func:`write_image_files` imports on first use (PIL; highdicom and pydicom's code dictionary
    for the SEG, a second or more of CPU): called before the writer processes fork, so that they inherit them
    instead of each importing them while the network runs beside them."""
    import PIL.PngImagePlugin  # noqa: F401

    if seg:
        import highdicom  # noqa: F401
        from pydicom.sr.codedict import codes  # noqa: F401

        import scripts.inference.dicom_seg  # noqa: F401


def write_image_files(
    output_dir: str,
    name: str,
    source: str,
    packed: np.ndarray,
    shape: tuple[int, int],
    masks: bool,
    seg: bool,
    overlay: np.ndarray | None,
    probability: float | None = None,
    heatmap: np.ndarray | None = None,
) -> tuple[str | None, object]:
    """Write one image's files: the mask PNG, the DICOM SEG of a positive image, the overlay.

    ``packed`` is ``np.packbits`` of the mask in MONAI's orientation ``(cols, rows)``, contiguous as the network wrote
    it; ``shape`` the mask's ``(rows, cols)`` in image orientation; ``overlay`` the uint8 image to outline it on, or
    None; ``probability`` the image's (``scripts.inference.gating``), written into the SEG; ``heatmap`` the blended
    ``(rows, cols, 3)`` picture to write, or None. Returns ``(rle, problems)``: the mask's RLE and the reasons of outputs that failed after the mask (the image
    keeps its row), or ``(None, reason)`` when the mask itself could not be written.
    """
    paths = image_output_paths(output_dir, name)
    try:
        monai_mask = np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape[::-1]).astype(bool)
        mask = monai_mask.T
        if masks:
            save_png(paths["masks"], mask.astype(np.uint8) * 255)
        encoded = _ENCODE(monai_mask)
    except Exception as error:
        return None, error_reason(error)
    problems = []
    if seg and mask.any():
        problems += _attempt("DICOM SEG", _write_seg, paths["seg"], source, mask, probability)
    if overlay is not None:
        problems += _attempt("overlay", _write_overlay, paths["overlays"], overlay, mask)
    if heatmap is not None:
        problems += _attempt("heatmap", _write_picture, paths["heatmaps"], heatmap)
    return encoded, problems


def _attempt(what: str, function, *args) -> list[str]:
    """Run one output's writer (which returns the problems of its input it wrote through); the reason it failed, or
    those problems, as a list."""
    try:
        problems = function(*args)
    except Exception as error:
        return [f"{what} not written: {error_reason(error)}"]
    return [f"{what}: {problem}" for problem in problems]


def _write_seg(path: Path, source_path: str, mask: np.ndarray, probability: float | None) -> list[str]:
    from scripts.inference.dicom_seg import write_segmentation

    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    description = f"pneumothorax probability {probability:.3f}" if probability is not None else None
    return write_segmentation(path, source, mask, description=description)


def _write_overlay(path: Path, overlay: np.ndarray, mask: np.ndarray) -> list[str]:
    save_overlay(path, overlay, mask)
    return []


def _write_picture(path: Path, pixels: np.ndarray) -> list[str]:
    save_png(path, pixels)
    return []


def save_png(path: Path, pixels: np.ndarray) -> None:
    """A uint8 PNG, greyscale ``(H, W)`` or RGB ``(H, W, 3)``, atomically."""
    from PIL import Image

    with atomic_open(path, "wb") as handle:
        Image.fromarray(pixels.astype(np.uint8), mode="L" if pixels.ndim == 2 else "RGB").save(handle, format="PNG")
