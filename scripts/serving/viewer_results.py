"""What the viewer shows of an inference output folder (``configs/inference.json``'s ``output_dir``): per image, its
probability and mask area (``worklist.csv``, most probable first: ``scripts.inference.predictions``), its RLE
(``submission.csv``) and which of its files exist (``scripts.inference.outputs``: mask, SEG, overlay, heatmap).

An upload's result is such a folder with one image (``scripts.serving.viewer_pipeline``), a ``--results`` worklist one
with many: both are read here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from scripts.inference.outputs import image_output_paths
from scripts.inference.predictions import read_predictions
from scripts.siim import rle
from scripts.siim.rle_csv import read_rle_csv
from scripts.utils.files import safe_name

__all__ = ["FILE_KINDS", "ImageResult", "read_result_folder"]

#: The viewer's name of each per-image file -> the output folder it is in.
FILE_KINDS = {"mask": "masks", "seg": "seg", "overlay": "overlays", "heatmap": "heatmaps"}


@dataclass(frozen=True)
class ImageResult:
    """One image of an output folder.

    ``files``: viewer kind (:data:`FILE_KINDS`) -> path relative to the folder, for the files that exist (a negative
    image has no SEG); ``problems``: outputs that failed for it (``errors.csv``), the image keeping its result.
    """

    image_id: str
    probability: float | None
    area: int
    rle: str
    files: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The file name stem of its outputs."""
        return safe_name(self.image_id)


def read_result_folder(folder: str | os.PathLike) -> list[ImageResult]:
    """The images of an inference output folder, most probable first (``worklist.csv``'s order).

    Raises:
        FileNotFoundError: ``folder`` holds no ``worklist.csv`` (not an inference output folder).
        ValueError: its CSVs are malformed (naming the file and line).
    """
    folder = Path(folder)
    worklist = folder / "worklist.csv"
    if not worklist.is_file():
        raise FileNotFoundError(
            f"{folder} holds no worklist.csv: not an inference output folder (inference.json's output_dir)"
        )
    predictions = read_predictions(worklist)
    if not predictions:  # an empty submission.csv has no rows to read
        return []
    annotations = read_rle_csv(folder / "submission.csv").annotations
    results = []
    for prediction in predictions:
        paths = image_output_paths(folder, safe_name(prediction.image_id))
        files = {
            kind: paths[sub].relative_to(folder).as_posix() for kind, sub in FILE_KINDS.items() if paths[sub].is_file()
        }
        encoded = annotations.get(prediction.image_id) or [rle.EMPTY]  # one row per image: its union mask
        results.append(ImageResult(prediction.image_id, prediction.probability, prediction.area_px, encoded[0], files))
    return results
