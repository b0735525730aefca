"""The data pipeline per CPU core (each training preprocessing stage, and the textbook MONAI chain for comparison),
the on-device augmentation, and the RLE against a per-pixel loop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from scripts.benchmark.common import bundle_config, calls_per_second

__all__ = ["data_pipeline_per_core", "reference_cpu_augmentation", "rle_speed"]


def reference_cpu_augmentation(crop: int) -> list:
    """The textbook MONAI chain the bundle's split augmentation replaced, all on the CPU (for comparison only)."""
    from monai.transforms import (
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandGridDistortiond,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    from scripts.data.cache import Uint8ToFloatd

    both, size = ["image", "label"], [crop, crop]
    return [
        RandCropByPosNegLabeld(both, "label", size, pos=2, neg=1, num_samples=1, allow_smaller=True),
        SpatialPadd(both, size),
        Uint8ToFloatd("image"),
        RandFlipd(both, prob=0.5, spatial_axis=0),
        RandAffined(both, prob=0.5, rotate_range=0.17, scale_range=[0.1, 0.1], translate_range=[16, 16], mode=["bilinear", "nearest"]),
        RandGridDistortiond(both, prob=0.2, num_cells=5, distort_limit=(-0.1, 0.1), mode=["bilinear", "nearest"]),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
        RandScaleIntensityd("image", prob=0.3, factors=0.15),
        RandShiftIntensityd("image", prob=0.3, offsets=0.08),
        RandGaussianNoised("image", prob=0.2, std=0.02),
    ]


def data_pipeline_per_core(args, overrides: dict, data_dir: Path) -> dict:
    """Images/s on one core for each stage of the training preprocessing, and of the on-device augmentation."""
    from monai.data import list_data_collate
    from monai.transforms import Compose

    from scripts.data.cache import unpack_mask
    from scripts.siim.datalist import load_fold

    torch.set_num_threads(1)
    items = load_fold(str(data_dir), fold=0)["training"][: args.pipeline_images]
    parser = bundle_config("train.json", overrides)
    deterministic = parser.get_parsed_content("train#deterministic_transforms")
    load, normalize_and_label = deterministic[:2], deterministic[2:]  # LoadImaged, EnsureChannelFirstd | the rest
    loader_part = Compose(parser.get_parsed_content("train#random_transforms"))
    reference = Compose(reference_cpu_augmentation(args.crop))

    def timed(stage, inputs):
        start = time.perf_counter()
        outputs = [stage(item) for item in inputs]
        speed = round(len(inputs) / (time.perf_counter() - start), 1)
        return [out[0] if isinstance(out, list) else out for out in outputs], speed

    results = {}
    decoded, results["decode"] = timed(Compose(load), [dict(item) for item in items])
    cached, results["normalise + label (cached once)"] = timed(Compose(normalize_and_label), decoded)
    crops, results["crop + draw parameters (loader)"] = timed(loader_part, cached)
    unpacked = [{**item, "label": unpack_mask(item["label"], item["image"].shape[-1])} for item in cached]
    _, results["MONAI chain on the CPU (reference)"] = timed(reference, unpacked)
    device = parser.get_parsed_content("device")
    prepare = parser.get_parsed_content("train#prepare_batch")
    batch = list_data_collate(crops[: args.batch])
    batches_per_s = calls_per_second(lambda: prepare(batch, device, True), 3, device)
    results[f"augment on {device.type} (per image, batched)"] = round(batches_per_s * len(batch["image"]), 1)
    torch.set_num_threads(os.cpu_count() or 1)
    return results


def _loop_encode(mask: np.ndarray) -> str:
    """The straightforward reference: a Python walk over the pixels in column-major order."""
    rows, cols = mask.shape
    pairs, previous_end, start, position = [], 0, -1, 0
    for x in range(cols):
        for y in range(rows):
            if mask[y, x]:
                if start < 0:
                    start = position
            elif start >= 0:
                pairs += [start - previous_end, position - start]
                previous_end, start = position, -1
            position += 1
    if start >= 0:
        pairs += [start - previous_end, position - start]
    return " ".join(map(str, pairs)) if pairs else "-1"


def _loop_decode(encoded: str, rows: int, cols: int) -> np.ndarray:
    flat = np.zeros(rows * cols, dtype=bool)
    values = [int(v) for v in encoded.split()]
    position = 0
    for start, length in zip(values[0::2], values[1::2]):
        position += start
        for k in range(length):
            flat[position + k] = True
        position += length
    return flat.reshape(cols, rows).T


def rle_speed(size: int, repeats: int = 20) -> dict:
    from scripts.siim import rle
    from scripts.synthetic.anatomy import render_case

    _, regions = render_case(np.random.default_rng(7), size, size, n_regions=3)
    mask = np.logical_or.reduce(regions)
    encoded = rle.encode(mask)

    def per_call(fn, n):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return 1000 * (time.perf_counter() - start) / n

    result = {
        "mask": f"{size}x{size}, {int(mask.sum())} px, {len(encoded.split()) // 2} runs",
        "encode_ms": round(per_call(lambda: rle.encode(mask), repeats), 3),
        "decode_ms": round(per_call(lambda: rle.decode(encoded, mask.shape), repeats), 3),
        "loop_encode_ms": round(per_call(lambda: _loop_encode(mask), 1), 1),
        "loop_decode_ms": round(per_call(lambda: _loop_decode(encoded, size, size), 1), 1),
    }
    if _loop_encode(mask) != encoded or not np.array_equal(_loop_decode(encoded, size, size), mask):
        raise AssertionError("the per-pixel reference disagrees with scripts.siim.rle")
    return result
