"""``python -m scripts.synthetic``: write a synthetic dataset in the exact SIIM-ACR format (see
``scripts.synthetic.dataset``)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from scripts.synthetic.dataset import POSITIVE_SHARE, generate_dataset
from scripts.synthetic.devices import DeviceOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.synthetic",
        description="Write a synthetic dataset in the exact SIIM-ACR format (DICOM tree + train-rle.csv)."
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=200, help="training images (default 200)")
    parser.add_argument("--n_test", type=int, default=0, help="unannotated images in dicom-images-test (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=1024, help="square side in pixels (default 1024)")
    parser.add_argument("--rows", type=int, default=None, help="image rows (overrides --size)")
    parser.add_argument("--cols", type=int, default=None, help="image columns (overrides --size)")
    parser.add_argument("--positive_share", type=float, default=POSITIVE_SHARE, help="share of positive images")
    parser.add_argument("--uncompressed", action="store_true", help="Explicit VR Little Endian instead of JPEG Baseline")
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--csv_style", choices=("stage1", "stage2"), default="stage1")
    parser.add_argument(
        "--lesion_contrast", type=float, default=1.0, help="pneumothorax visibility (1: subtle as on real films)"
    )
    parser.add_argument(
        "--lesion_scale", type=float, default=1.0, help="multiplies pneumothorax areas (1: SIIM-like sizes)"
    )
    parser.add_argument(
        "--devices",
        action="store_true",
        help="draw chest drains, ECG leads, central lines, markers, burned-in text, collimation and softer edges "
        "(and write devices.csv); without it the dataset is what it always was",
    )
    defaults = DeviceOptions()
    for name, default, meaning in (
        ("drain_positive", defaults.drain_positive, "share of pneumothorax images with a chest drain"),
        ("drain_negative", defaults.drain_negative, "share of normal images with a chest drain"),
        ("drain_same_side", defaults.drain_same_side, "share of drains on the side of the pneumothorax"),
    ):
        parser.add_argument(f"--{name}", type=float, default=None, help=f"with --devices: {meaning} (default {default})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    rows, cols = args.rows or args.size, args.cols or args.size
    drain = {k: getattr(args, k) for k in ("drain_positive", "drain_negative", "drain_same_side")}
    drain = {k: v for k, v in drain.items() if v is not None}
    if drain and not args.devices:
        parser.error(f"--{next(iter(drain))} needs --devices")
    try:
        devices = DeviceOptions(**drain) if args.devices else None
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    cases = generate_dataset(
        args.out,
        n=args.n,
        seed=args.seed,
        rows=rows,
        cols=cols,
        n_test=args.n_test,
        positive_share=args.positive_share,
        jpeg_quality=None if args.uncompressed else args.jpeg_quality,
        csv_style=args.csv_style,
        workers=args.workers,
        lesion_contrast=args.lesion_contrast,
        lesion_scale=args.lesion_scale,
        devices=devices,
    )
    positives = sum(bool(case.annotations) for case in cases)
    seconds = time.perf_counter() - start
    print(
        f"{args.out}: {len(cases)} training images ({positives} positive, "
        f"{sum(len(c.annotations) for c in cases)} annotations), {args.n_test} test images, "
        f"{rows}x{cols}, {seconds:.1f} s"
    )
    if devices is not None:
        drains = sum(bool(case.devices.drain_side) for case in cases)
        with_drain = sum(bool(case.devices.drain_side) for case in cases if case.annotations)
        print(f"devices: {drains} training images with a chest drain ({with_drain} of the {positives} positive)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
