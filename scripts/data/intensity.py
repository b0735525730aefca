"""Radiograph intensities: any bit depth and photometric interpretation to ``[0, 1]`` with bright bone."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy

__all__ = ["NormalizeRadiograph", "NormalizeRadiographd"]


class NormalizeRadiograph(Transform):
    """Bring a radiograph of any bit depth and photometric interpretation to float32 in ``[0, 1]``, bright bone.

    MONOCHROME1 images (high values = dark) are inverted first, and so are MONOCHROME2 images whose
    PresentationLUTShape is ``INVERSE`` (shown inverted). The two are one inversion, not two: the standard gives
    a MONOCHROME1 image the shape INVERSE (PS3.3, the DX and CR image modules), and it is displayed once inverted.
    Then:

    * ``mode="percentile"`` (default): the ``lower``/``upper`` percentiles of the image map to 0 and 1, clipped,
      which makes 8-bit SIIM files and 10-16 bit files from other sources (often using a fraction of their range)
      look alike;
    * ``mode="bits"``: divide by ``2**bits_stored - 1``, the full range the file can hold.

    Called with ``(image, photometric, bits_stored, lut_shape)``; ``bits_stored=None`` falls back to the image
    maximum.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    modes = ("percentile", "bits")

    def __init__(self, mode: str = "percentile", lower: float = 0.5, upper: float = 99.5) -> None:
        if mode not in self.modes:
            raise ValueError(f"NormalizeRadiograph mode must be one of {self.modes}, got {mode!r}")
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"NormalizeRadiograph needs 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.mode, self.lower, self.upper = mode, lower, upper

    def __call__(
        self,
        img: torch.Tensor | np.ndarray,
        photometric: str = "MONOCHROME2",
        bits_stored: int | None = None,
        lut_shape: str | None = None,
    ) -> torch.Tensor | np.ndarray:
        out = img.float() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.float32)
        full_scale = float(2**bits_stored - 1) if bits_stored else float(out.max())
        if str(photometric).upper() not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(f"a greyscale radiograph is MONOCHROME1 or MONOCHROME2, not {photometric!r}")
        if str(photometric).upper() == "MONOCHROME1" or str(lut_shape or "").strip().upper() == "INVERSE":
            out = full_scale - out  # one inversion: a MONOCHROME1 image carries INVERSE as the standard asks
        if self.mode == "bits":
            low, high = 0.0, full_scale
        else:
            low, high = self._percentiles(out)
        scale = 1.0 / max(high - low, 1e-6)
        if isinstance(out, torch.Tensor):
            return ((out - low) * scale).clamp_(0.0, 1.0)
        return np.clip((out - low) * scale, 0.0, 1.0)

    def _percentiles(self, img: torch.Tensor | np.ndarray) -> tuple[float, float]:
        # A regular 1-in-16 subsample gives the same percentiles to within a grey level, for a fraction of the cost.
        sample = convert_to_numpy(img)[..., ::4, ::4].ravel()
        low, high = np.percentile(sample, [self.lower, self.upper])
        return float(low), float(high)


class NormalizeRadiographd(MapTransform):
    """Dictionary wrapper of :class:`NormalizeRadiograph`.

    Reads ``PhotometricInterpretation``, ``BitsStored`` and ``PresentationLUTShape`` from the image's metadata, where
    ``scripts.data.reader.RadiographReader`` puts them (absent: MONOCHROME2, the image maximum, IDENTITY).
    """

    backend = NormalizeRadiograph.backend

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "percentile",
        lower: float = 0.5,
        upper: float = 99.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeRadiograph(mode=mode, lower=lower, upper=upper)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = getattr(img, "meta", {})
            d[key] = self.normalizer(
                img,
                photometric=meta.get("PhotometricInterpretation", "MONOCHROME2"),
                bits_stored=meta.get("BitsStored"),
                lut_shape=meta.get("PresentationLUTShape"),
            )
        return d
