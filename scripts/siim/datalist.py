"""From a SIIM-layout folder to MONAI datalists with stratified cross-validation folds.

The layout is the challenge's: ``<data_dir>/dicom-images-train/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` and
an annotation CSV in ``<data_dir>`` (``train-rle.csv``, ``stage_2_train.csv`` or one given explicitly). A DICOM
matches the CSV rows of its ImageId (:func:`scripts.siim.image_id.dicom_image_id`: its SOPInstanceUID).

Command line (writes the datalist as JSON and prints what did not match)::

    python -m scripts.siim.datalist --data_dir DIR --out datalist.json [--n_folds 5 --seed 0]

Training reads that file (``--datalist_file``) or builds the same list from the folder; :func:`load_fold` does both,
so the demo's ``datalist.json`` and its training cannot disagree.
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

from scripts.siim.image_id import DICOM_SUFFIXES, dicom_image_id
from scripts.siim.rle import EMPTY
from scripts.siim.rle_csv import read_rle_csv
from scripts.utils.files import atomic_open

logger = logging.getLogger(__name__)

TRAIN_IMAGE_DIR = "dicom-images-train"
#: CSV names the challenge used, in the order they are looked for.
CSV_NAMES = ("train-rle.csv", "stage_2_train.csv", "train-rle-sample.csv")
DEFAULT_N_FOLDS = 5
DEFAULT_SEED = 0
#: Label files a training item's ``label`` may name instead of RLE strings (MONAI Label's saved labels).
LABEL_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".png")
#: How :func:`write_datalist` marks that its paths are relative to the file (files of version 0.2 were relative to
#: the folder training ran from).
PATHS_KEY = "paths_relative_to"

__all__ = [
    "DatalistReport",
    "build_datalist",
    "find_dicoms",
    "find_siim_csv",
    "load_fold",
    "load_heldout",
    "read_datalist",
    "split_fold",
    "write_datalist",
]


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
    """Map ImageId (:func:`~scripts.siim.image_id.dicom_image_id`) -> path for every ``.dcm`` / ``.dicom`` file (any
    case) under ``folder``, recursively, sorted.

    Returns the mapping and a list describing ImageIds found more than once (the first path in sorted order wins).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    found: dict[str, Path] = {}
    duplicates: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.name.lower().endswith(DICOM_SUFFIXES) and p.is_file()):
        try:
            image_id = dicom_image_id(path)
        except ValueError as error:  # no CSV row can name it
            logger.warning("%s; left out", error)
            continue
        if image_id in found:
            duplicates.append(f"{image_id}: {path} (kept {found[image_id]})")
        else:
            found[image_id] = path
    return found, duplicates


def build_datalist(
    data_dir: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    image_dir: str = TRAIN_IMAGE_DIR,
    n_folds: int = DEFAULT_N_FOLDS,
    seed: int = DEFAULT_SEED,
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


def write_datalist(path: str | os.PathLike, items: list[dict], report: DatalistReport, n_folds: int, seed: int) -> None:
    """The datalist file :func:`read_datalist` reads: the items with their folds, how they were made, what was left out.

    Image paths are written relative to the file's folder (as in Decathlon datalists), so the folder can move.
    """
    folder = Path(path).resolve().parent
    items = [{**item, "image": os.path.relpath(Path(item["image"]).resolve(), folder)} for item in items]
    content = {"n_folds": n_folds, "seed": seed, PATHS_KEY: "file", "items": items, "report": report.lines()}
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=1)


def read_datalist(path: str | os.PathLike) -> dict:
    """A datalist file: the one :func:`write_datalist` writes (``items`` with folds, ``n_folds``, ``seed``), or a
    Decathlon-style ``{"training": [...], "validation": [...]}`` as MONAI's ``load_decathlon_datalist`` reads.

    Relative image paths (and label file paths: a label string ending in a label-file suffix) are taken from the
    file's folder, as MONAI does; a datalist of version 0.2 (without ``paths_relative_to``) keeps its paths as
    written. Items whose label is RLE strings get ``positive`` when they lack it, for the positive-share sampler.

    Raises:
        ValueError: not a datalist, naming the file.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the datalist: {error}") from error
    if not isinstance(content, dict) or not ({"items"} <= set(content) or {"training"} <= set(content)):
        raise ValueError(f"{path}: a datalist has 'items' (scripts.siim.datalist) or 'training' (Decathlon style)")
    lists = ("items",) if "items" in content else tuple(key for key in ("training", "validation") if key in content)
    base = path.parent if "training" in content or content.get(PATHS_KEY) == "file" else Path()
    out = dict(content)
    for key in lists:
        out[key] = [_resolved_item(item, base, path) for item in content[key]]
    return out


def _resolved_item(item: dict, base: Path, source: Path) -> dict:
    if not isinstance(item, dict) or "image" not in item:
        raise ValueError(f"{source}: datalist item without an image: {str(item)[:80]}")
    item = dict(item)
    item["image"] = str(base / item["image"])  # an absolute image path stays as it is
    label = item.get("label")
    if isinstance(label, str) and label.lower().endswith(LABEL_FILE_SUFFIXES):
        item["label"] = str(base / label)
    elif "positive" not in item and isinstance(label, (str, list)):
        rles = [label] if isinstance(label, str) else label
        item["positive"] = any(rle.strip() != EMPTY for rle in rles)
    return item


def load_fold(
    data_dir: str | os.PathLike | None,
    fold: int = 0,
    n_folds: int | None = None,
    seed: int | None = None,
    csv_path: str | os.PathLike | None = None,
    datalist_file: str | os.PathLike | None = None,
) -> dict[str, list[dict]]:
    """``{"training": [...], "validation": [...]}`` for one fold (for bundle configs).

    From ``datalist_file`` when one is given (its folds are the truth: ``n_folds`` and ``seed``, when given, must be
    the ones it was made with), otherwise built from the SIIM-layout ``data_dir`` (default 5 folds, seed 0). A
    Decathlon-style file gives its own ``training`` and ``validation`` lists; without a ``validation`` list, its
    items' ``fold`` keys split it.

    Raises:
        ValueError: ``n_folds`` or ``seed`` contradict the file, naming both.
    """
    if datalist_file is None:
        if data_dir is None:
            raise ValueError("load_fold needs a data_dir or a datalist_file")
        items, _ = build_datalist(
            data_dir,
            csv_path=csv_path,
            n_folds=DEFAULT_N_FOLDS if n_folds is None else n_folds,
            seed=DEFAULT_SEED if seed is None else seed,
        )
        training, validation = split_fold(items, fold)
        return {"training": training, "validation": validation}
    content = read_datalist(datalist_file)
    if "items" not in content:
        if "validation" in content:
            return {"training": content["training"], "validation": content["validation"]}
        if not all("fold" in item for item in content["training"]):
            raise ValueError(f"{datalist_file}: no 'validation' list, and not every training item has a 'fold'")
        training, validation = split_fold(content["training"], fold)
        return {"training": training, "validation": validation}
    for name, asked in (("n_folds", n_folds), ("seed", seed)):
        if asked is not None and content.get(name) is not None and int(asked) != int(content[name]):
            raise ValueError(
                f"{datalist_file} was made with {name}={content[name]}, the config asks {name}={asked}: "
                "drop the override or write the datalist again"
            )
    training, validation = split_fold(content["items"], fold)
    return {"training": training, "validation": validation}


def load_heldout(data_dir: str | os.PathLike, csv_path: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """``{"training": [], "validation": [...]}``: every annotated image of the SIIM-layout ``data_dir``, for scoring
    a trained model on a set it never saw (``configs/evaluate_heldout.json``)."""
    items, _ = build_datalist(data_dir, csv_path=csv_path)
    if not items:
        raise ValueError(f"{data_dir}: no image has both a DICOM file and a row in the annotation CSV")
    return {"training": [], "validation": items}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="SIIM-layout folder")
    parser.add_argument("--csv", default=None, help="annotation CSV (default: found in data_dir)")
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument("--n_folds", type=int, default=DEFAULT_N_FOLDS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    items, report = build_datalist(args.data_dir, csv_path=args.csv, n_folds=args.n_folds, seed=args.seed)
    write_datalist(args.out, items, report, n_folds=args.n_folds, seed=args.seed)
    positives = sum(item["positive"] for item in items)
    print(f"{args.out}: {len(items)} images ({positives} positive) in {args.n_folds} folds")
    for line in report.lines():
        print(f"  {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    sys.exit(main())
