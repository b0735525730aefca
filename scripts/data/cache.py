"""The training cache: compact forms of images and labels, and a ``CacheDataset`` that fails cleanly.

The deterministic transforms end with :class:`ImageToUint8d` and :class:`PackMaskd`, so the cache holds a quarter of
a float32 image and an eighth of a uint8 label; the crop, the device-side batch preparation and inference turn them
back (docs/README.md gives the memory figures).

:class:`CacheDataset` is MONAI's, except that an image that fails while the cache fills stops the other loading
threads before the error goes on: MONAI's thread pool leaves them running, and a daemon thread still inside a torch
operation when Python exits is ended by the interpreter's finalisation in the middle of C++ code, which aborts the
process ("terminate called without an active exception", exit 134) instead of exiting with the error.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor

import monai.data
import numpy as np
import torch
from monai.transforms import MapTransform
from monai.utils import TransformBackends, convert_to_numpy, optional_import

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["CacheDataset", "ImageToUint8d", "Uint8ToFloatd", "PackMaskd", "unpack_mask"]


class CacheDataset(monai.data.CacheDataset):
    """``monai.data.CacheDataset`` whose cache fill, when one item fails, cancels the items not started and waits
    for the running ones before raising, so no loading thread outlives the error."""

    def _fill_cache(self, indices=None) -> list:
        if self.cache_num <= 0:
            return []
        if indices is None:
            indices = list(range(self.cache_num))
        pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="cache")
        try:
            futures = [pool.submit(self._load_cache_item, index) for index in indices]
            if self.progress and has_tqdm:
                futures = tqdm(futures, total=len(indices), desc="Loading dataset")
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class ImageToUint8d(MapTransform):
    """``[0, 1]`` float image -> uint8 (``round(255 x)``), metadata kept: a compact form to cache.

    One byte per pixel instead of float32's four.
    :class:`Uint8ToFloatd` turns it back into float32 in ``[0, 1]`` (to within 1/510).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if isinstance(img, torch.Tensor):
                d[key] = (img.float().clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)
            else:
                d[key] = np.round(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
        return d


class Uint8ToFloatd(MapTransform):
    """uint8 image (as :class:`ImageToUint8d` caches it) -> float32 in ``[0, 1]``; float images pass unchanged."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.dtype in (torch.uint8, np.uint8):
                d[key] = img.float() / 255.0 if isinstance(img, torch.Tensor) else np.asarray(img, np.float32) / 255.0
        return d


class PackMaskd(MapTransform):
    """Binary mask -> 8 pixels per byte along its last axis (``np.packbits``): an eighth of a uint8 label.

    :func:`unpack_mask` (numpy or torch, any device) restores it given the last axis' length;
    :class:`scripts.data.crop.RandForegroundCropd` crops it directly and
    :class:`scripts.training.prepare_batch.ConvertOnDevice` unpacks a validation batch on the device.
    """

    backend = [TransformBackends.NUMPY]

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = np.packbits(convert_to_numpy(d[key]) != 0, axis=-1)
        return d


def unpack_mask(bits: np.ndarray | torch.Tensor, length: int) -> np.ndarray | torch.Tensor:
    """Inverse of :class:`PackMaskd`: the uint8 0/1 mask whose last axis has ``length`` pixels."""
    if bits.shape[-1] != (length + 7) // 8:
        raise ValueError(f"a packed mask of {bits.shape[-1]} bytes per line cannot hold {length} pixels")
    if isinstance(bits, torch.Tensor):
        shifts = torch.arange(7, -1, -1, device=bits.device, dtype=torch.uint8)
        unpacked = (bits.unsqueeze(-1) >> shifts) & 1
        return unpacked.reshape(*bits.shape[:-1], -1)[..., :length]
    return np.unpackbits(bits, axis=-1, count=length)
