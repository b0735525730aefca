"""The inferer of whole-image models: resize the batch to the size the network was trained at, run the inner
inferer there, and bring the logits back to the image's own size (``scripts.data.resize``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer, SimpleInferer

from scripts.data.resize import image_size_pair, resize_image

__all__ = ["ResizedInferer", "window_size"]


def window_size(image_size: int | Sequence[int] | None, full_resolution: Sequence[int]) -> list[int]:
    """The sliding window's ROI: the whole resized image, or ``full_resolution``'s crops when not resizing."""
    pair = image_size_pair(image_size)
    return list(pair) if pair is not None else list(full_resolution)


class ResizedInferer(Inferer):
    """``inferer`` (default: the whole image at once) on inputs resized to ``size``; logits resized back
    (bilinear) to the input's size. With ``size`` None it is ``inferer`` itself."""

    def __init__(self, size: int | Sequence[int] | None, inferer: Inferer | None = None) -> None:
        super().__init__()
        self.size = image_size_pair(size)
        self.inferer = inferer if inferer is not None else SimpleInferer()

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs) -> torch.Tensor:
        if self.size is None or tuple(inputs.shape[-2:]) == self.size:
            return self.inferer(inputs, network, *args, **kwargs)
        logits = self.inferer(resize_image(inputs, self.size).to(inputs.dtype), network, *args, **kwargs)
        return resize_image(logits, inputs.shape[-2:]).to(logits.dtype)
