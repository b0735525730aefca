"""From a SIIM-layout folder to MONAI datalists with stratified cross-validation folds.

The layout is the challenge's: ``<data_dir>/dicom-images-train/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` and
an annotation CSV in ``<data_dir>`` (``train-rle.csv``, ``stage_2_train.csv`` or one given explicitly). The ImageId
of the CSV is the file name without ``.dcm``.

Command line (writes the datalist as JSON and prints what did not match)::

    python -m scripts.datalist --data_dir DIR --out datalist.json [--n_folds 5 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scripts.atomic import atomic_open
from scripts.siim_csv import read_rle_csv

logger = logging.getLogger(__name__)

TRAIN_IMAGE_DIR = "dicom-images-train"
#: CSV names the challenge used, in the order they are looked for.
CSV_NAMES = ("train-rle.csv", "stage_2_train.csv", "train-rle-sample.csv")

__all__ = ["DatalistReport", "build_datalist", "find_dicoms", "find_siim_csv", "load_fold", "split_fold"]


@dataclass
class DatalistReport:
    """What did not make it into the datalist, and why."""

    dicoms_without_rows: list[str] = field(default_factory=list)
    rows_without_dicoms: list[str] = field(default_factory=list)
    duplicate_dicoms: list[str] = field(default_factory=list)
    csv_problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"CSV: {problem}" for problem in self.csv_problems]
        out += [f"DICOM without a CSV row (left out): {path}" for path in self.dicoms_without_rows]
        out += [f"CSV ImageId without a DICOM file (left out): {image_id}" for image_id in self.rows_without_dicoms]
        out += [f"ImageId with several DICOM files (first kept): {entry}" for entry in self.duplicate_dicoms]
        return out


def find_siim_csv(data_dir: str | os.PathLike) -> Path:
    """The annotation CSV of a SIIM-layout folder (first of :data:`CSV_NAMES` found)."""
    data_dir = Path(data_dir)
    for name in CSV_NAMES:
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"{data_dir}: no annotation CSV found (looked for {', '.join(CSV_NAMES)})")


def find_dicoms(folder: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """Map ImageId (file name without ``.dcm``) -> path for every ``.dcm`` under ``folder``, recursively, sorted.

    Returns the mapping and a list describing ImageIds found more than once (the first path in sorted order wins).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    found: dict[str, Path] = {}
    duplicates: list[str] = []
    for path in sorted(folder.rglob("*.dcm")):
        if path.stem in found:
            duplicates.append(f"{path.stem}: {path} (kept {found[path.stem]})")
        else:
            found[path.stem] = path
    return found, duplicates


def build_datalist(
    data_dir: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    image_dir: str = TRAIN_IMAGE_DIR,
    n_folds: int = 5,
    seed: int = 0,
) -> tuple[list[dict], DatalistReport]:
    """Datalist items for every image that has both a DICOM file and CSV rows, each with a fold number.

    Folds are stratified by positive / negative and deterministic for a seed: positives and negatives are each
    shuffled (from sorted ImageIds) and dealt round-robin to folds, so every fold holds the same share of
    positives to within one image.

    Items: ``{"image": path, "label": [RLE, ...] (empty: no pneumothorax), "image_id", "positive", "fold"}``.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    data_dir = Path(data_dir)
    annotations = read_rle_csv(csv_path if csv_path is not None else find_siim_csv(data_dir))
    dicoms, duplicates = find_dicoms(data_dir / image_dir)
    report = DatalistReport(
        dicoms_without_rows=sorted(str(path) for image_id, path in dicoms.items() if image_id not in annotations.annotations),
        rows_without_dicoms=sorted(image_id for image_id in annotations.annotations if image_id not in dicoms),
        duplicate_dicoms=duplicates,
        csv_problems=list(annotations.problems),
    )
    for line in report.lines():
        logger.warning(line)

    matched = sorted(image_id for image_id in annotations.annotations if image_id in dicoms)
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    for positive in (True, False):
        group = [image_id for image_id in matched if bool(annotations.annotations[image_id]) == positive]
        rng.shuffle(group)
        # Negatives continue the round-robin where positives stopped, which also balances fold sizes.
        offset = len(fold_of)
        fold_of.update({image_id: (offset + i) % n_folds for i, image_id in enumerate(group)})
    items = [
        {
            "image": str(dicoms[image_id]),
            "label": list(annotations.annotations[image_id]),
            "image_id": image_id,
            "positive": bool(annotations.annotations[image_id]),
            "fold": fold_of[image_id],
        }
        for image_id in matched
    ]
    return items, report


def split_fold(items: list[dict], fold: int) -> tuple[list[dict], list[dict]]:
    """(training, validation): validation is the items of ``fold``, training all others."""
    folds = {item["fold"] for item in items}
    if fold not in folds:
        raise ValueError(f"fold {fold} holds no items (folds present: {sorted(folds)})")
    return [item for item in items if item["fold"] != fold], [item for item in items if item["fold"] == fold]


def load_fold(
    data_dir: str | os.PathLike,
    fold: int = 0,
    n_folds: int = 5,
    seed: int = 0,
    csv_path: str | os.PathLike | None = None,
) -> dict[str, list[dict]]:
    """``{"training": [...], "validation": [...]}`` for one fold of a SIIM-layout folder (for bundle configs)."""
    items, _ = build_datalist(data_dir, csv_path=csv_path, n_folds=n_folds, seed=seed)
    training, validation = split_fold(items, fold)
    return {"training": training, "validation": validation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="SIIM-layout folder")
    parser.add_argument("--csv", default=None, help="annotation CSV (default: found in data_dir)")
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument("--n_folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    items, report = build_datalist(args.data_dir, csv_path=args.csv, n_folds=args.n_folds, seed=args.seed)
    with atomic_open(args.out, "w", encoding="utf-8") as handle:
        json.dump({"n_folds": args.n_folds, "seed": args.seed, "items": items, "report": report.lines()}, handle, indent=1)
    positives = sum(item["positive"] for item in items)
    print(f"{args.out}: {len(items)} images ({positives} positive) in {args.n_folds} folds")
    for line in report.lines():
        print(f"  {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    sys.exit(main())
