"""The training crop: ``RandCropByPosNegLabeld`` + ``SpatialPadd`` in one cheap step, on cached uint8 images and
bit-packed labels.

MONAI's ``RandCropByPosNegLabeld`` builds the index arrays of every foreground and background pixel on each call;
:class:`RandForegroundCropd` draws the same centres (a foreground pixel with probability ``pos / (pos + neg)``,
any pixel otherwise) without them, and unpacks only the crop's window of a packed label. The crop is a copy, so the
cache behind it is never modified.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_numpy

from scripts.data.cache import unpack_mask

__all__ = ["RandForegroundCropd"]


class RandForegroundCropd(Randomizable, MapTransform):
    """Random ``spatial_size`` crop of ``keys``, centred on a foreground pixel of ``label_key`` with probability
    ``pos / (pos + neg)`` (when there is one), on any pixel otherwise; padded with zeros (evenly on both sides) where
    the image is smaller than the crop. Channel-first 2-D arrays; the output is a new ``torch.Tensor`` of the input's
    dtype, so a cached uint8 image stays uint8 and is never modified.

    ``packed_keys`` hold masks packed by :class:`scripts.data.cache.PackMaskd` (the compact label cache), shaped
    like ``image_key``: only the crop's window is unpacked (to uint8 0/1), and the whole mask only to draw a
    foreground centre.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        spatial_size: Sequence[int],
        pos: float = 1.0,
        neg: float = 1.0,
        packed_keys: KeysCollection = (),
        image_key: str = "image",
    ) -> None:
        MapTransform.__init__(self, keys)
        if pos < 0 or neg < 0 or pos + neg <= 0:
            raise ValueError(f"RandForegroundCropd: pos and neg must be >= 0 and not both 0, got {pos}, {neg}")
        self.label_key = label_key
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.pos_ratio = pos / (pos + neg)
        self.packed_keys = {packed_keys} if isinstance(packed_keys, str) else set(packed_keys)
        self.image_key = image_key

    def randomize(self, label, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """A crop centre (one index per axis of ``spatial``); ``label`` may be a callable giving the mask (or None
        for a mask known to be empty), called only for a foreground-centred crop."""
        if self.R.rand() < self.pos_ratio:
            mask = label() if callable(label) else label
            if mask is not None:
                foreground = np.flatnonzero(convert_to_numpy(mask).reshape(-1, *spatial).any(axis=0))
                if foreground.size:
                    return np.unravel_index(foreground[self.R.randint(foreground.size)], spatial)
        return tuple(self.R.randint(size) for size in spatial)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        label = d[self.label_key]
        if self.label_key in self.packed_keys:
            spatial = tuple(d[self.image_key].shape[1:])
            bits = convert_to_numpy(label)
            centre = self.randomize(lambda: unpack_mask(bits, spatial[-1]) if bits.any() else None, spatial)
        else:
            spatial = tuple(label.shape[1:])
            centre = self.randomize(label, spatial)
        if len(spatial) != len(self.spatial_size):
            raise ValueError(f"RandForegroundCropd: a {len(self.spatial_size)}-D crop of a {len(spatial)}-D image")
        starts = [min(max(c - s // 2, 0), max(n - s, 0)) for c, s, n in zip(centre, self.spatial_size, spatial)]
        window = tuple(slice(start, start + s) for start, s in zip(starts, self.spatial_size))
        for key in self.key_iterator(d):
            array = d[key]
            tensor = array.as_tensor() if hasattr(array, "as_tensor") else torch.as_tensor(np.asarray(array))
            packed = key in self.packed_keys
            crop = _unpack_window(tensor, window, spatial[-1]) if packed else tensor[(slice(None), *window)]
            missing = [s - n for s, n in zip(self.spatial_size, crop.shape[1:])]
            if any(missing):
                pads = [p for m in reversed(missing) for p in (m // 2, m - m // 2)]  # last axis first, as F.pad
                crop = F.pad(crop, pads)
            # a slice of the cache is copied (so the cache is never modified); unpacked or padded crops are new
            d[key] = crop if packed or any(missing) else crop.clone(memory_format=torch.contiguous_format)
        return d


def _unpack_window(bits: torch.Tensor, window: tuple[slice, ...], length: int) -> torch.Tensor:
    """The ``window`` of a mask packed along its last axis (of ``length`` pixels), unpacked to uint8 0/1."""
    last = window[-1]
    stop = min(last.stop, length)
    first_byte, last_byte = last.start // 8, (stop + 7) // 8
    lines = bits[(slice(None), *window[:-1], slice(first_byte, last_byte))].numpy()
    unpacked = np.unpackbits(lines, axis=-1)
    offset = last.start - 8 * first_byte
    return torch.from_numpy(np.ascontiguousarray(unpacked[..., offset : offset + stop - last.start]))
