"""MONAI transforms between SIIM annotations and MONAI-loaded radiographs: the orientation rule.

An RLE mask decodes in image orientation ``(rows, cols)`` (as pydicom's ``pixel_array``), while
``LoadImaged(reader=RadiographReader())`` returns the transpose, ``(cols, rows)``. The transpose is done here, in
one place each way:

* :class:`RLEToMask` / :class:`RLEToMaskd`: annotation strings -> ``(1, cols, rows)`` label aligned with the image;
  :class:`LabelToMaskd` also takes a label image file (MONAI Label's saved labels);
* :class:`MaskToRLE`: a ``(1, cols, rows)`` or ``(cols, rows)`` mask -> RLE string (inference's writer encodes its
  masks with it);
* :func:`to_image_orientation`: a MONAI-oriented array as ``(rows, cols)``, for every file written in image
  orientation (PNG masks, DICOM SEG, overlays).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from os import PathLike

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy

from scripts.siim import rle
from scripts.siim.datalist import LABEL_FILE_SUFFIXES

__all__ = ["to_image_orientation", "LabelToMaskd", "RLEToMask", "RLEToMaskd", "MaskToRLE"]


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


class ImageLabeld(MapTransform):
    """The image-level label of a datalist item: ``keys`` become a ``(1,)`` float32 array, 1.0 where the item's
    ``positive_key`` (``"positive"``, which the SIIM and NIH datalists give every item) is true.

    Raises ``ValueError`` naming the image when the item does not say whether it is positive.
    """

    def __init__(self, keys: KeysCollection, positive_key: str = "positive") -> None:
        super().__init__(keys, allow_missing_keys=True)  # the keys are made here
        self.positive_key = positive_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        positive = d.get(self.positive_key)
        if not isinstance(positive, (bool, np.bool_)):
            raise ValueError(f"{d.get('image', '?')}: the item has no true/false {self.positive_key!r} for an image label")
        for key in self.keys:
            d[key] = np.array([1.0 if positive else 0.0], dtype=np.float32)
        return d


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
