"""The engines' ``prepare_batch``: what happens to a batch between the data loader and the network, on the device.

Batches leave the loader compact (uint8 images; validation labels packed into bits, ``scripts.data.cache``) and
become float32 on the training device, in the memory format of the engine's ``to_kwargs`` (e.g. channels_last).

* :class:`AugmentOnDevice` (training): also applies the batch's augmentation parameters
  (``scripts.training.augmentation``);
* :class:`ConvertOnDevice` (validation): only moves and converts; it never augments.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.engines.utils import PrepareBatch

from scripts.data.cache import unpack_mask
from scripts.training.augmentation import PARAMS_KEY, augment_batch
from scripts.utils.flags import switches

__all__ = ["AugmentOnDevice", "ConvertOnDevice"]


class ConvertOnDevice(PrepareBatch):
    """``prepare_batch`` for MONAI's ``SupervisedEvaluator`` (validation): move ``image`` and ``label`` to the device,
    turn a uint8 image into float32 in ``[0, 1]`` there and the label into float32, and return ``(image, label)``
    in the memory format of ``to_kwargs``.

    Args:
        image_key, label_key: batch keys.
        packed_label: the label comes packed by :class:`scripts.data.cache.PackMaskd` (validation's compact cache)
            and is unpacked on the device.
    """

    @switches(packed_label="packed_label")
    def __init__(self, image_key: str = "image", label_key: str = "label", packed_label: bool = False) -> None:
        self.image_key, self.label_key = image_key, label_key
        self.packed_label = packed_label

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        memory_format = kwargs.pop("memory_format", torch.contiguous_format)
        image, label = self.convert(batchdata, device, non_blocking)
        image, label = self.transform(batchdata, image, label)
        if kwargs:  # any other ``to_kwargs`` (e.g. a dtype) apply to the converted batch
            image, label = image.to(**kwargs), label.to(**kwargs)
        if label.dim() == image.dim():  # a label map; an image-level label (B, 1) has no layout
            label = label.contiguous(memory_format=memory_format)
        return image.contiguous(memory_format=memory_format), label

    def convert(self, batchdata: Mapping, device, non_blocking: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's image and label on ``device`` as float32."""
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking)
        label = batchdata[self.label_key].to(device=device, non_blocking=non_blocking)
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if self.packed_label:
            label = unpack_mask(label, image.shape[-1])
        return image, label.float()

    def transform(self, batchdata: Mapping, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What happens to the converted batch (nothing, in validation)."""
        return image, label


class AugmentOnDevice(ConvertOnDevice):
    """``prepare_batch`` for MONAI's ``SupervisedTrainer``: :class:`ConvertOnDevice`, then the batch's
    :class:`~scripts.training.augmentation.AugmentationParamsd` parameters applied on the device, to the image and
    to a label map alike (an image-level label, ``(B, 1)``, stays as it is). A batch without parameters is only
    moved and converted.

    Args:
        image_key, label_key, packed_label: as :class:`ConvertOnDevice`.
        params_key: batch key of the parameters.
    """

    def __init__(
        self, image_key: str = "image", label_key: str = "label", params_key: str = PARAMS_KEY, packed_label: bool = False
    ) -> None:
        super().__init__(image_key=image_key, label_key=label_key, packed_label=packed_label)
        self.params_key = params_key

    def transform(self, batchdata: Mapping, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = batchdata.get(self.params_key)
        if params is None:
            return image, label
        seed = int(params["noise_seed"].sum()) % (2**63 - 1)  # a CPU tensor: no device sync
        if label.dim() != image.dim():  # an image-level label (the classifier's): nothing of it to move
            return augment_batch(image, None, params, noise_seed=seed)[0], label
        return augment_batch(image, label, params, noise_seed=seed)
