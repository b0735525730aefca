"""The bundle's name and version, read from ``configs/metadata.json``: the one place they are written."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUNDLE_ROOT", "BundleIdentity", "bundle_identity", "METADATA_FILE"]

#: The bundle this package belongs to: the folder holding ``scripts/`` and ``configs/``.
BUNDLE_ROOT = Path(__file__).resolve().parents[2]
#: Its ``configs/metadata.json``.
METADATA_FILE = BUNDLE_ROOT / "configs" / "metadata.json"


@dataclass(frozen=True)
class BundleIdentity:
    """What an output says about the model that made it."""

    name: str
    version: str

    @property
    def slug(self) -> str:
        """The name as a short identifier (``siim-acr_pneumothorax_segmentation``), for DICOM model names."""
        return "_".join(self.name.lower().split())


@functools.lru_cache(maxsize=None)
def bundle_identity(path: str | os.PathLike = METADATA_FILE) -> BundleIdentity:
    """Name and version of the bundle from its ``metadata.json``.

    Raises:
        ValueError: the file lacks ``name`` or ``version``, naming the file.
    """
    metadata = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [key for key in ("name", "version") if not metadata.get(key)]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} given")
    return BundleIdentity(name=str(metadata["name"]), version=str(metadata["version"]))
