"""MONAI Label's label files to DICOM SEG and back, for the MONAI Label app on a DICOMweb datastore.

highdicom, which writes and reads the bundle's SEGs, needs pydicom 3; MONAI Label's environment has pydicom 2. So
the app (``label_app/pacs_datastore.py``) runs this module with the bundle's own Python (``$BUNDLE_PYTHON``, the
environment ``scripts.serving.label_server`` runs in):

    python -m scripts.serving.label_seg to-seg --image image.dcm --label label.nii.gz --out seg.dcm
    python -m scripts.serving.label_seg to-label --seg seg.dcm --out label.nii.gz [--segment N]

A label file is what MONAI Label saves and serves (``.nii.gz``, ``.nii``, ``.nrrd`` or ``.png``), in the layout
MONAI loads the DICOM in, ``(cols, rows)``: the bundle's inference writes its masks so, and ``LabelToMaskd``
trains on them so. A SEG written here is marked as a person's annotation (segment algorithm type MANUAL), so that
the datastore can tell it from the SEGs the bundle's own inference stores (AUTOMATIC), which are not training data.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pydicom

from scripts.data.labels import to_image_orientation
from scripts.inference.dicom_seg import read_segmentation_mask, write_segmentation
from scripts.utils.files import atomic_open

__all__ = ["label_to_seg", "seg_to_label"]


def label_to_seg(image: str | os.PathLike, label: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the label file ``label`` of the radiograph ``image`` as a MANUAL DICOM SEG ``out`` (atomically).

    Raises:
        ValueError: the label's shape is not the image's, naming both.
    """
    from monai.transforms import LoadImage

    source = pydicom.dcmread(image, stop_before_pixels=True)
    array = np.squeeze(np.asarray(LoadImage(image_only=True, ensure_channel_first=False)(str(label))))
    mask = to_image_orientation(array)
    expected = (int(source.Rows), int(source.Columns))
    if mask.shape != expected:
        raise ValueError(f"label file {label} has shape {array.shape}, the image {image} (cols, rows) "
                         f"{expected[::-1]}")  # fmt: skip
    write_segmentation(out, source, (mask > 0).astype(np.uint8), manual=True)
    return Path(out)


def seg_to_label(seg: str | os.PathLike, out: str | os.PathLike, segment: int = 1) -> Path:
    """Write segment ``segment`` (the pneumothorax) of the SEG ``seg`` as a uint8 NIfTI label ``out`` in
    ``(cols, rows)``."""
    import nibabel as nib

    mask = read_segmentation_mask(seg, segment_number=segment)
    image = nib.Nifti1Image(np.ascontiguousarray(mask.T, dtype=np.uint8), np.eye(4))
    with atomic_open(out, "wb") as handle:
        handle.write(gzip.compress(image.to_bytes()) if str(out).endswith(".gz") else image.to_bytes())
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.serving.label_seg", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to_seg = commands.add_parser("to-seg", help="label file -> DICOM SEG")
    to_seg.add_argument("--image", required=True)
    to_seg.add_argument("--label", required=True)
    to_seg.add_argument("--out", required=True)
    to_label = commands.add_parser("to-label", help="DICOM SEG -> label file")
    to_label.add_argument("--seg", required=True)
    to_label.add_argument("--segment", type=int, default=1, help="the pneumothorax segment's number")
    to_label.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "to-seg":
            label_to_seg(args.image, args.label, args.out)
        else:
            seg_to_label(args.seg, args.out, args.segment)
    except Exception as error:  # one line for the app's log and its HTTP answer
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
