"""The ImageId of a DICOM file: the one rule the datalist, inference and the MONAI Label server share.

The challenge's CSVs name each image by its SOPInstanceUID (which is also its file name there). Files from other
sources are often named otherwise, so the UID is read from the file; a file whose header cannot be read, or has no
UID, is named by its file name without the extension.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import pydicom

__all__ = ["dicom_image_id", "file_stem"]

DICOM_SUFFIXES = (".dcm", ".dicom")
#: Unicode categories an ImageId may not hold: control characters (C0, DEL, C1) and line and paragraph separators.
_CONTROL = {"Cc", "Zl", "Zp"}


def file_stem(path: str | os.PathLike) -> str:
    """The file name without a DICOM extension (``.dcm``, ``.dicom``, any case); other names are kept whole."""
    name = Path(path).name
    for suffix in DICOM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def dicom_image_id(path: str | os.PathLike, header: pydicom.Dataset | Mapping | None = None) -> str:
    """The SOPInstanceUID of the DICOM at ``path``, else its file stem.

    ``header``: the file's tags when they are already read (a pydicom ``Dataset``, or MONAI metadata holding
    ``SOPInstanceUID`` as ``scripts.data.reader.RadiographReader`` puts it), so the file is not opened again.

    Raises:
        ValueError: the ImageId would hold control characters (a line break would split the image's CSV row).
    """
    if header is None:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception:  # unreadable header: the file name is all there is
            header = {}
    uid = str(header.get("SOPInstanceUID", "") or "").strip()
    image_id = uid or file_stem(path)
    if any(unicodedata.category(character) in _CONTROL for character in image_id):
        source = "SOPInstanceUID" if uid else "file name"
        raise ValueError(f"{path}: its {source} {image_id[:80]!r} holds control characters; it cannot be an ImageId")
    return image_id
