"""Whole radiographs resized to one size, as some SIIM-ACR projects trained (256, 512, 768), beside the default
full-resolution crops.

* :func:`image_size_pair`: ``image_size`` as the configs give it (null, an int, or two ints) -> None or a pair;
* :class:`ResizeWholed`: the training transform: image (bilinear, antialiased; a uint8 image stays uint8) and
  label (nearest) resized to that size before they are cached, so the cache holds the small images;
* validation, evaluation and inference resize in the inferer instead (``scripts.networks.resized``) and bring the
  logits back to the image's own size, so metrics, thresholds and every output are at the DICOM's size.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import TransformBackends
from torch.nn import functional

__all__ = ["ResizeWholed", "image_size_pair", "resize_image", "resize_mask"]


def image_size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``image_size`` (null: full resolution, ``512``, or ``[512, 512]``) as None or a pair of positive ints.

    Raises:
        ValueError: anything else, naming it.
    """
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        values = [size] * 2
    elif isinstance(size, Sequence) and not isinstance(size, str):
        values = list(size)
    else:
        values = []
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"image_size {size!r}: null (full resolution), a positive int or two of them")
    return int(values[0]), int(values[1])


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A ``(..., H, W)`` image resized bilinearly with antialiasing (a fair average when shrinking)."""
    shape = image.shape
    flat = image.reshape(-1, 1, *shape[-2:]).float()
    out = functional.interpolate(flat, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out.reshape(*shape[:-2], *out.shape[-2:])


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A ``(..., H, W)`` mask resized by nearest neighbour (pixel centres), its dtype kept."""
    shape = mask.shape
    flat = mask.reshape(-1, 1, *shape[-2:]).to(torch.uint8)
    out = functional.interpolate(flat, size=tuple(size), mode="nearest-exact")
    return out.reshape(*shape[:-2], *out.shape[-2:]).to(mask.dtype)


class ResizeWholed(MapTransform):
    """Resize ``image_keys`` (bilinear, uint8 kept as uint8) and ``label_keys`` (nearest) to ``size``; with
    ``size`` None (full-resolution training) nothing changes."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, keys, size: int | Sequence[int] | None, label_keys: Sequence[str] = ("label",), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size = image_size_pair(size)
        self.label_keys = set(label_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if self.size is None:
            return d
        for key in self.key_iterator(d):
            value = d[key]
            tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value.as_tensor() if isinstance(value, MetaTensor) else value)
            if key in self.label_keys:
                out = resize_mask(tensor, self.size)
            else:
                out = resize_image(tensor, self.size)
                if tensor.dtype == torch.uint8:
                    out = out.round_().clamp_(0, 255).to(torch.uint8)
            if isinstance(value, MetaTensor):
                out = MetaTensor(out, meta=dict(value.meta))
            elif isinstance(value, np.ndarray):
                out = out.numpy()
            d[key] = out
        return d
