"""Find the DICOM files of an inference input: a folder, searched recursively, or one file.

A file counts as DICOM when it has the ``DICM`` marker of a DICOM file (Part 10) or a ``.dcm`` / ``.dicom``
extension. Files with the extension but broken content are still returned, so that inference reports them as errors
instead of silently skipping them; anything else (``.csv``, ``.png``, ``.DS_Store``...) is skipped and counted.
Linked folders are followed (each real folder once); hidden folders (``.incoming``, a staging folder) are not
searched, and are listed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scripts.siim.image_id import DICOM_SUFFIXES

__all__ = ["DicomScan", "is_dicom_file", "scan_dicom_inputs"]

_PREAMBLE = 128
_MAGIC = b"DICM"


@dataclass
class DicomScan:
    """What :func:`scan_dicom_inputs` found: the DICOM files (sorted) and the other files it skipped."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    root: Path | None = None
    hidden_folders: list[Path] = field(default_factory=list)

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


def scan_dicom_inputs(
    path: str | os.PathLike, exclude: Sequence[str | os.PathLike] = (), allow_empty: bool = False
) -> DicomScan:
    """The DICOM files under ``path`` (recursively, following linked folders, hidden folders excepted), or ``path``
    itself if it is a file.

    ``exclude``: folders not to look into (an output folder inside the input folder is not read back as input).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no DICOM file was found (unless ``allow_empty``), saying how many other files were skipped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"inference input {path} does not exist")
    excluded = {Path(folder).resolve() for folder in exclude}
    scan = DicomScan(root=path)
    if path.is_file():
        candidates = [path]
    else:
        candidates, seen = [], {path.resolve()}
        for root, dirs, files in os.walk(path, followlinks=True):
            kept = []
            for name in sorted(dirs):
                folder = Path(root) / name
                real = folder.resolve()
                if name.startswith("."):
                    scan.hidden_folders.append(folder)
                elif real not in excluded and real not in seen:  # a link loop or a second link: searched once
                    seen.add(real)
                    kept.append(name)
            dirs[:] = kept
            candidates += [Path(root) / name for name in sorted(files)]
    for candidate in candidates:
        (scan.files if is_dicom_file(candidate) else scan.skipped).append(candidate)
    if not scan.files and not allow_empty:
        raise ValueError(f"inference input {path} holds no DICOM file ({len(scan.skipped)} other files skipped)")
    return scan
