"""Find the DICOM files of an inference input (a folder, searched recursively, or one file) and name outputs safely.

A file counts as DICOM when it has the ``DICM`` marker of a DICOM file (Part 10) or a ``.dcm`` / ``.dicom``
extension. Files with the extension but broken content are still returned, so that inference reports them as errors
instead of silently skipping them; anything else (``.csv``, ``.png``, ``.DS_Store``...) is skipped and counted.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DicomScan", "is_dicom_file", "safe_name", "scan_dicom_inputs"]

DICOM_SUFFIXES = (".dcm", ".dicom")
_PREAMBLE = 128
_MAGIC = b"DICM"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class DicomScan:
    """What :func:`scan_dicom_inputs` found: the DICOM files (sorted) and the other files it skipped."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    def items(self) -> list[dict[str, str]]:
        """MONAI data items ``{"image": path}``."""
        return [{"image": str(path)} for path in self.files]


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is to be read as DICOM: the Part-10 ``DICM`` marker, or a DICOM file extension."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(_PREAMBLE + len(_MAGIC))
    except OSError:
        return False
    return head[_PREAMBLE:] == _MAGIC


def scan_dicom_inputs(path: str | os.PathLike) -> DicomScan:
    """The DICOM files under ``path`` (recursively, hidden folders excepted), or ``path`` itself if it is a file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"inference input {path} does not exist")
    if path.is_file():
        candidates = [path]
    else:
        candidates = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            candidates += [Path(root) / name for name in sorted(files)]
    scan = DicomScan()
    for candidate in candidates:
        (scan.files if is_dicom_file(candidate) else scan.skipped).append(candidate)
    return scan


def safe_name(identifier: str, max_length: int = 128) -> str:
    """A file name derived from ``identifier`` (a SOPInstanceUID, normally) that stays inside its folder.

    UIDs (digits and dots) are kept as they are. Anything else is reduced to ``[A-Za-z0-9._-]``, leading dots are
    dropped (no ``..`` or hidden files), and a short hash of the original is appended whenever something was
    changed, so that two different identifiers never share a name.
    """
    cleaned = _UNSAFE.sub("_", str(identifier)).lstrip(".")
    if cleaned == identifier and 0 < len(cleaned) <= max_length:
        return cleaned
    digest = hashlib.sha1(str(identifier).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{cleaned[: max_length - 13]}_{digest}" if cleaned else digest
