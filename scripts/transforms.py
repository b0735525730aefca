"""MONAI transforms between SIIM annotations and MONAI-loaded radiographs.

Orientation is the subtle part. An RLE mask decodes in image orientation ``(rows, cols)`` (as pydicom's
``pixel_array``), while ``LoadImaged(reader=RadiographReader())`` returns the transpose, ``(cols, rows)``. These
transforms do that transpose in one place each way:

* :class:`RLEToMask` / :class:`RLEToMaskd`: annotation strings -> ``(1, cols, rows)`` label aligned with the image;
  :class:`LabelToMaskd` also takes a label image file (MONAI Label's saved labels);
* :class:`MaskToRLE` / :class:`MaskToRLEd`: a ``(1, cols, rows)`` or ``(cols, rows)`` prediction -> RLE string;
* :class:`NormalizeRadiograph` / :class:`NormalizeRadiographd`: MONOCHROME1 inversion and 8-16 bit inputs to
  ``[0, 1]``;
* :func:`radiograph_loading`: the image preprocessing that training, validation and inference share (one place,
  so that inference sees exactly what the model was validated on).

As in MONAI, each array transform does the work and its dictionary wrapper applies it to ``keys``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from os import PathLike

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, LoadImage, LoadImaged, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy

from scripts import rle
from scripts.dicom_io import RadiographReader

#: Label files a training item's ``label`` may name instead of RLE strings (MONAI Label's saved labels).
LABEL_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".png")

__all__ = [
    "to_image_orientation",
    "ImageToUint8d",
    "Uint8ToFloatd",
    "PackMaskd",
    "unpack_mask",
    "LabelToMaskd",
    "radiograph_loading",
    "RLEToMask",
    "RLEToMaskd",
    "MaskToRLE",
    "MaskToRLEd",
    "NormalizeRadiograph",
    "NormalizeRadiographd",
]


class RLEToMask(Transform):
    """Decode SIIM annotations into one label aligned with a MONAI-loaded image.

    Called with ``(annotations, spatial_shape)``: ``annotations`` is one RLE string or a sequence of them (several
    annotations of one image are combined by union, never summed; ``[]`` or ``"-1"`` is empty), and
    ``spatial_shape`` is the image's MONAI spatial shape ``(cols, rows)``. Returns a ``(1, cols, rows)`` array of
    ``dtype`` (uint8 by default: compact to cache).
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, dtype: np.dtype | type = np.uint8) -> None:
        self.dtype = dtype

    def __call__(self, annotations: str | Sequence[str], spatial_shape: Sequence[int]) -> np.ndarray:
        if len(spatial_shape) != 2:
            raise ValueError(f"RLEToMask needs a 2-D (cols, rows) spatial shape, got {tuple(spatial_shape)}")
        cols, rows = (int(n) for n in spatial_shape)
        if isinstance(annotations, str):
            annotations = [annotations]
        mask = np.zeros((rows, cols), dtype=bool)
        for annotation in annotations:
            mask |= rle.decode(annotation, (rows, cols))
        return mask.T[None].astype(self.dtype, order="C")  # C order: later crops and scans read it row by row


class RLEToMaskd(MapTransform):
    """Dictionary wrapper of :class:`RLEToMask`: replaces each key's annotation strings with a label tensor.

    The spatial shape, affine and metadata come from ``ref_key`` (the loaded image), so spatial transforms that
    follow move image and label together.

    Args:
        keys: keys holding annotation strings (``"label"``).
        ref_key: key of the MONAI-loaded image the label must align with.
        dtype: label dtype.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = RLEToMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        dtype: np.dtype | type = np.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.converter = RLEToMask(dtype=dtype)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        reference = d[self.ref_key]
        spatial_shape = tuple(reference.shape[-2:])
        for key in self.key_iterator(d):
            try:
                mask = self.to_mask(d[key], spatial_shape)
            except ValueError as error:
                source = getattr(reference, "meta", {}).get("filename_or_obj", self.ref_key)
                raise ValueError(f"{source}: annotation in {key!r} does not fit the image: {error}") from error
            if isinstance(reference, MetaTensor):
                meta = {k: v for k, v in reference.meta.items() if k != "affine"}
                d[key] = MetaTensor(torch.from_numpy(mask), affine=reference.affine.clone(), meta=meta)
            else:
                d[key] = torch.from_numpy(mask)
        return d

    def to_mask(self, value: object, spatial_shape: tuple[int, ...]) -> np.ndarray:
        return self.converter(value, spatial_shape)


class LabelToMaskd(RLEToMaskd):
    """Training labels of either kind as one ``(1, cols, rows)`` mask aligned with the loaded image.

    * SIIM annotations (a list of RLE strings, ``"-1"``) as :class:`RLEToMaskd`;
    * a label image file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.png``), as MONAI Label saves corrected labels: loaded
      with MONAI's ``LoadImage`` (so a label written from a MONAI-loaded prediction, or by a viewer from the same
      DICOM, comes back in the image's ``(cols, rows)`` layout), non-zero = pneumothorax.

    Raises ``ValueError`` naming the image when a label file's shape is not the image's.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loader = LoadImage(image_only=True, ensure_channel_first=False)

    def to_mask(self, value: object, spatial_shape: tuple[int, ...]) -> np.ndarray:
        if not (isinstance(value, (str, PathLike)) and str(value).lower().endswith(LABEL_FILE_SUFFIXES)):
            return super().to_mask(value, spatial_shape)
        array = np.squeeze(convert_to_numpy(self.loader(value)))
        if array.shape != tuple(spatial_shape):
            raise ValueError(f"label file {value} has shape {array.shape}, the image {tuple(spatial_shape)}")
        return (array > 0).astype(self.converter.dtype, order="C")[None]


def to_image_orientation(array: np.ndarray | torch.Tensor) -> np.ndarray:
    """A MONAI-oriented ``(cols, rows)`` or ``(1, cols, rows)`` array as a ``(rows, cols)`` numpy view.

    Raises:
        ValueError: any other shape (several channels, 3-D), naming it.
    """
    array = convert_to_numpy(array)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"expected a (cols, rows) or (1, cols, rows) array, got shape {array.shape}")
    return array.T


class MaskToRLE(Transform):
    """Encode a MONAI-oriented mask (``(cols, rows)``, optionally with one leading channel) as an SIIM RLE string.

    Values above ``threshold`` are foreground, so a binary mask or a probability map both work. Returns ``"-1"``
    for an empty mask.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def __call__(self, mask: np.ndarray | torch.Tensor) -> str:
        return rle.encode(to_image_orientation(mask) > self.threshold)


class MaskToRLEd(MapTransform):
    """Dictionary wrapper of :class:`MaskToRLE`: writes each key's RLE string to ``<key><postfix>``.

    The mask itself stays, so writers can still save it.
    """

    backend = MaskToRLE.backend

    def __init__(
        self, keys: KeysCollection, threshold: float = 0.5, postfix: str = "_rle", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.encoder = MaskToRLE(threshold=threshold)
        self.postfix = postfix

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.postfix}"] = self.encoder(d[key])
        return d


class NormalizeRadiograph(Transform):
    """Bring a radiograph of any bit depth and photometric interpretation to float32 in ``[0, 1]``, bright bone.

    MONOCHROME1 images (high values = dark) are inverted first. Then:

    * ``mode="percentile"`` (default): the ``lower``/``upper`` percentiles of the image map to 0 and 1, clipped,
      which makes 8-bit SIIM files and 10-16 bit files from other sources (often using a fraction of their range)
      look alike;
    * ``mode="bits"``: divide by ``2**bits_stored - 1``, the full range the file can hold.

    Called with ``(image, photometric, bits_stored)``; ``bits_stored=None`` falls back to the image maximum.
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
        self, img: torch.Tensor | np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None
    ) -> torch.Tensor | np.ndarray:
        out = img.float() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.float32)
        full_scale = float(2**bits_stored - 1) if bits_stored else float(out.max())
        if str(photometric).upper() == "MONOCHROME1":
            out = full_scale - out
        elif str(photometric).upper() != "MONOCHROME2":
            raise ValueError(f"a greyscale radiograph is MONOCHROME1 or MONOCHROME2, not {photometric!r}")
        if self.mode == "bits":
            low, high = 0.0, full_scale
        else:
            low, high = self._percentiles(out)
        scale = 1.0 / max(high - low, 1e-6)
        if isinstance(out, torch.Tensor):
            return ((out - low) * scale).clamp_(0.0, 1.0)
        return np.clip((out - low) * scale, 0.0, 1.0)

    def _percentiles(self, img: torch.Tensor | np.ndarray) -> tuple[float, float]:
        # A regular 1-in-16 subsample gives the same percentiles to within a grey level at a tenth of the cost.
        sample = convert_to_numpy(img)[..., ::4, ::4].ravel()
        low, high = np.percentile(sample, [self.lower, self.upper])
        return float(low), float(high)


class NormalizeRadiographd(MapTransform):
    """Dictionary wrapper of :class:`NormalizeRadiograph`.

    Reads ``PhotometricInterpretation`` and ``BitsStored`` from the image's metadata, where
    ``scripts.dicom_io.RadiographReader`` puts them (absent: MONOCHROME2 and the image maximum).
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
                img, photometric=meta.get("PhotometricInterpretation", "MONOCHROME2"), bits_stored=meta.get("BitsStored")
            )
        return d


class ImageToUint8d(MapTransform):
    """``[0, 1]`` float image -> uint8 (``round(255 x)``), metadata kept: a compact form to cache.

    A cached 1024 x 1024 radiograph takes 1 MB instead of 4 MB as float32 (12,000 of them: 12 GB instead of 48 GB).
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
    """Binary mask -> 8 pixels per byte along its last axis (``np.packbits``): a 1024 x 1024 label caches in 128 kB
    instead of 1 MB, so 12,000 training images take 13.5 GB with their uint8 images instead of 24 GB.

    :func:`unpack_mask` (numpy or torch, any device) restores it given the last axis' length;
    :class:`scripts.batch_augmentation.RandForegroundCropd` crops it directly and
    :class:`scripts.batch_augmentation.AugmentOnDevice` unpacks a validation batch on the device.
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


def radiograph_loading(keys: KeysCollection = "image", mode: str = "percentile", compact: bool = False) -> list[MapTransform]:
    """Load DICOM radiographs as ``(1, cols, rows)`` images in ``[0, 1]``: the deterministic image preprocessing.

    ``LoadImaged`` with :class:`scripts.dicom_io.RadiographReader` (pydicom, the tags normalisation needs, a clear
    error for RGB / multi-frame / pixel-less files), ``EnsureChannelFirstd``, :class:`NormalizeRadiographd`, and
    with ``compact=True`` :class:`ImageToUint8d` (uint8, to cache; follow it with :class:`Uint8ToFloatd`).
    ``configs/train.json`` (training and validation) and ``configs/inference.json`` both use this list, so the
    network sees the same input in all three.
    """
    return [
        LoadImaged(keys=keys, reader=RadiographReader(), image_only=True),
        EnsureChannelFirstd(keys=keys),
        NormalizeRadiographd(keys=keys, mode=mode),
        *([ImageToUint8d(keys=keys)] if compact else []),
    ]
