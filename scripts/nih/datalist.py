"""A datalist of NIH ChestX-ray14 for the image-level classifier: "Pneumothorax" among an image's findings.

The layout, as NIH distributes it (``https://nihcc.app.box.com/v/ChestXray-NIHCC``) and as
``scripts.synthetic.nih`` writes a small one::

    <data_dir>/Data_Entry_2017.csv      Image Index,Finding Labels,Follow-up #,Patient ID,... (or _v2020.csv)
    <data_dir>/train_val_list.txt       the official training images, one name per line
    <data_dir>/test_list.txt            the official test images (patient-disjoint from train_val)
    <data_dir>/images/00000001_000.png  (or images_001/images/..., as the archives unpack)

``Finding Labels`` holds the findings joined by ``|`` (``Cardiomegaly|Pneumothorax``), or ``No Finding``. Items are
``{"image", "image_id", "positive", "findings", "patient", "fold"}``: the training images dealt into folds by
patient (no patient's images in two folds), positives and negatives spread evenly. ``datalist.json`` holds them
(``--datalist_file`` of the classifier's training); ``test.json`` the official test images as a validation list
(``--datalist_file`` of ``configs/classifier_evaluate.json``)::

    python -m scripts.nih.datalist --data_dir /data/nih --out_dir /data/nih/datalists
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scripts.siim.datalist import DEFAULT_N_FOLDS, DEFAULT_SEED, PATHS_KEY, write_datalist
from scripts.utils.files import write_json

__all__ = ["ENTRY_CSV", "NihReport", "build_nih_datalist", "find_images", "read_data_entry"]

logger = logging.getLogger(__name__)

ENTRY_CSV = "Data_Entry_2017.csv"
#: The index's names, as NIH has shipped it (``_v2020`` in today's download).
ENTRY_CSV_NAMES = ("Data_Entry_2017_v2020.csv", ENTRY_CSV)
TRAIN_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
#: The columns the datalist needs; the file has more (age, sex, view, original size and spacing).
_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


@dataclass
class NihReport:
    """What did not make it into the datalists, and why."""

    rows_without_images: list[str] = field(default_factory=list)
    images_without_rows: list[str] = field(default_factory=list)
    duplicate_images: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"CSV row without a PNG (left out): {name}" for name in self.rows_without_images]
        out += [f"PNG without a CSV row (left out): {name}" for name in self.images_without_rows]
        out += [f"image name in several folders (first kept): {name}" for name in self.duplicate_images]
        return out


def read_data_entry(path: str | os.PathLike) -> dict[str, tuple[frozenset[str], str]]:
    """``Data_Entry_2017.csv`` -> image name -> (its findings, its patient ID).

    Raises:
        ValueError: the file lacks one of the columns, or a row has no image name, naming the file and line.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in _COLUMNS if name not in header]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (an NIH ChestX-ray14 Data_Entry_2017.csv has them)")
        index = {name: header.index(name) for name in _COLUMNS}
        entries = {}
        for number, row in enumerate(reader, start=2):
            if not any(field.strip() for field in row):
                continue
            if len(row) <= max(index.values()) or not row[index["Image Index"]].strip():
                raise ValueError(f"{path}, line {number}: not a row of {', '.join(_COLUMNS)}: {row[:4]}")
            findings = frozenset(part.strip() for part in row[index["Finding Labels"]].split("|") if part.strip())
            entries[row[index["Image Index"]].strip()] = (findings - {"No Finding"}, row[index["Patient ID"]].strip())
    return entries


def find_images(data_dir: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """Every ``.png`` under ``data_dir`` by file name, and the names found in several places (first kept)."""
    found: dict[str, Path] = {}
    duplicates = []
    for path in sorted(Path(data_dir).rglob("*.png")):
        if path.name in found:
            duplicates.append(path.name)
            continue
        found[path.name] = path
    return found, duplicates


def _read_list(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_nih_datalist(
    data_dir: str | os.PathLike, finding: str = "Pneumothorax", n_folds: int = DEFAULT_N_FOLDS, seed: int = DEFAULT_SEED
) -> tuple[list[dict], list[dict], NihReport]:
    """(training items with folds, test items, report) of the NIH layout at ``data_dir`` (module docstring).

    Without ``train_val_list.txt`` every image is a training image; without ``test_list.txt`` there is no test
    list. Folds: patients with any ``finding`` image and the others are each shuffled (from sorted IDs, ``seed``)
    and dealt round-robin, so folds are patient-disjoint and hold positives evenly.

    Raises:
        ValueError: no ``Data_Entry_2017.csv``, or no image of it found.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    data_dir = Path(data_dir)
    found = [data_dir / name for name in ENTRY_CSV_NAMES if (data_dir / name).is_file()]
    if not found:
        raise ValueError(f"{data_dir}: no {' or '.join(ENTRY_CSV_NAMES)}; is it an NIH ChestX-ray14 folder?")
    entries = read_data_entry(found[0])
    images, duplicates = find_images(data_dir)
    report = NihReport(
        rows_without_images=sorted(name for name in entries if name not in images),
        images_without_rows=sorted(name for name in images if name not in entries),
        duplicate_images=duplicates,
    )
    available = sorted(name for name in entries if name in images)
    if not available:
        raise ValueError(f"{data_dir}: none of the {len(entries)} images of {found[0].name} found as PNG files under it")
    test_names = set(_read_list(data_dir / TEST_LIST) or ())
    train_names = _read_list(data_dir / TRAIN_LIST)
    train_names = set(train_names) if train_names is not None else set(available) - test_names

    def item(name: str) -> dict:
        findings, patient = entries[name]
        return {"image": str(images[name]), "image_id": name, "positive": finding in findings,
                "findings": "|".join(sorted(findings)) or "No Finding", "patient": patient}  # fmt: skip

    training = [item(name) for name in available if name in train_names]
    test = [item(name) for name in available if name in test_names]
    positive_patients = {entry["patient"] for entry in training if entry["positive"]}
    patients = sorted({entry["patient"] for entry in training})
    rng, fold_of = random.Random(seed), {}
    for group in ([p for p in patients if p in positive_patients], [p for p in patients if p not in positive_patients]):
        rng.shuffle(group)
        offset = len(fold_of)
        fold_of.update({patient: (offset + i) % n_folds for i, patient in enumerate(group)})
    for entry in training:
        entry["fold"] = fold_of[entry["patient"]]
    return training, test, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="NIH ChestX-ray14 folder (Data_Entry_2017.csv, images)")
    parser.add_argument("--out_dir", required=True, help="where datalist.json and test.json go")
    parser.add_argument("--finding", default="Pneumothorax", help="the finding that makes an image positive")
    parser.add_argument("--n_folds", type=int, default=DEFAULT_N_FOLDS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    training, test, report = build_nih_datalist(args.data_dir, args.finding, n_folds=args.n_folds, seed=args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_datalist(out / "datalist.json", training, report, n_folds=args.n_folds, seed=args.seed)
    folder = out.resolve()
    relative = [{**entry, "image": os.path.relpath(Path(entry["image"]).resolve(), folder)} for entry in test]
    write_json(out / "test.json", {PATHS_KEY: "file", "training": [], "validation": relative})
    for name, items in (("datalist.json", training), ("test.json", test)):
        print(f"{out / name}: {len(items)} images ({sum(i['positive'] for i in items)} with {args.finding})")
    for line in report.lines()[:20]:
        print(f"  {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    sys.exit(main())
