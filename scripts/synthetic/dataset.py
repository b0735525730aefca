"""A synthetic dataset in the exact SIIM-ACR format, for the demo and the tests.

It writes what the challenge ships::

    <out>/dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    <out>/dicom-images-test/...                       (only with --n_test)
    <out>/train-rle.csv                               (stage-1 layout: leading spaces, one row per annotation)
    <out>/devices.csv                                 (only with devices: what each image shows besides the chest)

DICOMs are Secondary Capture, Modality CR, MONOCHROME2, 8-bit, JPEG Baseline (or uncompressed with
``--uncompressed``), with the SIIM tags and UID style (``scripts.synthetic.dicom_writer``). The radiographs and
pneumothoraces come from ``scripts.synthetic.anatomy``; the counts follow the stage-2 statistics (22% positive,
1-10 annotations per positive image). Each image is drawn from its own seed (``seed``, index), so a dataset is the
same whatever the number of workers. The CSV is written last and atomically: its presence marks a complete dataset.

With ``devices`` (``--devices``), images also show chest drains, ECG leads, central lines, markers, burned-in text,
collimation and softer edges (``scripts.synthetic.devices``), and ``devices.csv`` says which image shows what
(one row per image, training and test; a split column tells them apart). Without it, a dataset is byte for byte
what the generator wrote before devices existed.

    python -m scripts.synthetic --out DIR --n 200 --seed 0 [--size 1024 | --rows R --cols C] [--uncompressed]
        [--devices [--drain_positive P --drain_negative P]]
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.siim import rle
from scripts.siim.datalist import TRAIN_IMAGE_DIR
from scripts.siim.rle_csv import rows_from_annotations, write_rle_csv
from scripts.synthetic.anatomy import render_chest
from scripts.synthetic.devices import DEVICE_COLUMNS, DeviceOptions, DevicesDrawn
from scripts.synthetic.dicom_writer import write_radiograph
from scripts.utils.files import write_csv

TEST_IMAGE_DIR = "dicom-images-test"
CSV_NAME = "train-rle.csv"
DEVICES_CSV_NAME = "devices.csv"
#: Annotations per positive image in the stage-2 training set (12,047 images, 2,669 positive).
ANNOTATIONS_PER_POSITIVE = {1: 2045, 2: 447, 3: 112, 4: 40, 5: 18, 6: 3, 7: 1, 8: 2, 10: 1}
POSITIVE_SHARE = 2669 / 12047
PIXEL_SPACINGS = (0.139, 0.143, 0.168, 0.194311)
# The UID roots the SIIM files use for studies (.2), series (.3) and instances (.4).
UID_ROOT = "1.2.276.0.7230010.3.1.{kind}.8323329.{number}.{time}.{suffix}"

__all__ = ["DEVICES_CSV_NAME", "POSITIVE_SHARE", "SyntheticCase", "generate_dataset", "synthetic_case"]


@dataclass
class SyntheticCase:
    """One generated image: where it went, its annotations (RLE strings, empty list when negative) and the devices
    drawn on it (None when the dataset has none)."""

    image_id: str
    path: Path
    annotations: list[str]
    devices: DevicesDrawn | None = None


def synthetic_case(
    out_dir: Path,
    index: int,
    seed: int,
    rows: int,
    cols: int,
    positive_share: float,
    jpeg_quality: int | None,
    image_dir: str = TRAIN_IMAGE_DIR,
    lesion_contrast: float = 1.0,
    lesion_scale: float = 1.0,
    devices: DeviceOptions | None = None,
) -> SyntheticCase:
    """Render and write image ``index`` of a dataset; deterministic in (seed, index, image_dir)."""
    stream = 0 if image_dir == TRAIN_IMAGE_DIR else 1
    rng = np.random.default_rng([seed, stream, index])
    n_regions = _draw_region_count(rng) if rng.random() < positive_share else 0
    chest = render_chest(rng, rows, cols, n_regions, lesion_contrast, lesion_scale, devices)
    number = 1000 + 3 * index + stream  # unique within a dataset, like the SIIM numbering
    stamp = 1517875000 + int(rng.integers(0, 30000))
    study, series, sop = (
        UID_ROOT.format(kind=kind, number=number, time=stamp, suffix=int(rng.integers(1, 999999))) for kind in (2, 3, 4)
    )
    patient = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    path = out_dir / image_dir / study / series / f"{sop}.dcm"
    write_radiograph(
        path,
        chest.image,
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=series,
        patient_id=patient,
        patient_age=int(rng.integers(10, 80)),
        patient_sex=str(rng.choice(["M", "F"])),
        view_position=str(rng.choice(["PA", "AP"], p=[0.6, 0.4])),
        pixel_spacing=float(rng.choice(PIXEL_SPACINGS)),
        jpeg_quality=jpeg_quality,
    )
    return SyntheticCase(sop, path, [rle.encode(region) for region in chest.regions], chest.devices)


def generate_dataset(
    out_dir: str | os.PathLike,
    n: int = 200,
    seed: int = 0,
    rows: int = 1024,
    cols: int = 1024,
    n_test: int = 0,
    positive_share: float = POSITIVE_SHARE,
    jpeg_quality: int | None = 95,
    csv_style: str = "stage1",
    workers: int = 1,
    lesion_contrast: float = 1.0,
    lesion_scale: float = 1.0,
    devices: DeviceOptions | None = None,
) -> list[SyntheticCase]:
    """Write a SIIM-format dataset of ``n`` training images (and ``n_test`` unannotated test images), with the
    ``devices`` given (none by default).

    Returns the training cases in CSV order.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 <= positive_share <= 1.0:
        raise ValueError(f"positive_share must lie in [0, 1], got {positive_share}")
    out_dir = Path(out_dir)
    common = (seed, rows, cols, positive_share, jpeg_quality)
    jobs = [(out_dir, i, *common, TRAIN_IMAGE_DIR, lesion_contrast, lesion_scale, devices) for i in range(n)]
    jobs += [(out_dir, i, *common, TEST_IMAGE_DIR, lesion_contrast, lesion_scale, devices) for i in range(n_test)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            cases = list(pool.map(_run_job, jobs, chunksize=4))
    else:
        cases = [_run_job(job) for job in jobs]
    train = cases[:n]
    if devices is not None:
        splits = [TRAIN_IMAGE_DIR] * n + [TEST_IMAGE_DIR] * n_test
        device_rows = ([case.image_id, split, *case.devices.row().values()] for case, split in zip(cases, splits))
        write_csv(out_dir / DEVICES_CSV_NAME, ["ImageId", "split", *DEVICE_COLUMNS], device_rows)
    annotations = {case.image_id: case.annotations for case in train}
    write_rle_csv(out_dir / CSV_NAME, rows_from_annotations(annotations), style=csv_style)
    return train


def _run_job(job: tuple) -> SyntheticCase:
    return synthetic_case(*job)


def _draw_region_count(rng: np.random.Generator) -> int:
    counts = np.array(list(ANNOTATIONS_PER_POSITIVE))
    weights = np.array(list(ANNOTATIONS_PER_POSITIVE.values()), dtype=float)
    return int(rng.choice(counts, p=weights / weights.sum()))
