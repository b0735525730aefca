"""The image-level results of an inference run, one row per image:

* ``predictions.csv``, in input order: ``ImageId,probability,area_px,positive``: the image's probability of
  pneumothorax (``scripts.inference.gating``: the gate's, or without a gate the mask's largest pixel probability;
  blank from a post-processing that gives none), the predicted mask's area in pixels of the image, and ``yes`` /
  ``no`` for a non-empty mask;
* ``worklist.csv``, the same rows sorted by probability, highest first (ties in input order): a triage list.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.utils.files import write_csv

__all__ = ["COLUMNS", "ImagePrediction", "read_predictions", "write_predictions"]

COLUMNS = ("ImageId", "probability", "area_px", "positive")


@dataclass(frozen=True)
class ImagePrediction:
    image_id: str
    probability: float | None
    area_px: int

    @property
    def positive(self) -> bool:
        return self.area_px > 0

    def row(self) -> tuple[str, str, str, str]:
        shown = f"{self.probability:.6f}" if self.probability is not None else ""
        return self.image_id, shown, str(self.area_px), "yes" if self.positive else "no"


def write_predictions(folder: str | os.PathLike, predictions: Sequence[ImagePrediction]) -> None:
    """Write ``predictions.csv`` (input order) and ``worklist.csv`` (by probability) into ``folder``, atomically."""
    folder = Path(folder)
    write_csv(folder / "predictions.csv", COLUMNS, [p.row() for p in predictions])
    # stable: ties keep input order; images without a probability last
    ranked = sorted(predictions, key=lambda p: -p.probability if p.probability is not None else float("inf"))
    write_csv(folder / "worklist.csv", COLUMNS, [p.row() for p in ranked])


def read_predictions(path: str | os.PathLike) -> list[ImagePrediction]:
    """The rows of a ``predictions.csv`` or ``worklist.csv``.

    Raises:
        ValueError: the file does not have this module's columns, or a row is not a probability and an area.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if tuple(header or ()) != COLUMNS:
            raise ValueError(f"{path}: expected the columns {','.join(COLUMNS)}, got {header}")
        return list(_parse(path, reader))


def _parse(path: Path, rows: Iterable[list[str]]):
    for number, row in enumerate(rows, start=2):
        try:
            image_id, probability, area, _ = row
            yield ImagePrediction(image_id, float(probability) if probability else None, int(area))
        except ValueError:
            raise ValueError(f"{path}, line {number}: not ImageId,probability,area_px,positive: {row}") from None
