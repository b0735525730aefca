"""UNet++ (MONAI's ``BasicUNetPlusPlus``) as a network of one output, as the loss, the sliding window, the metric
and the exports take it: MONAI's returns a list (its deep-supervision heads, or one)."""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNetPlusPlus

__all__ = ["UNetPlusPlus"]


class UNetPlusPlus(torch.nn.Module):
    """``BasicUNetPlusPlus`` (its arguments, ``deep_supervision`` excepted) returning its final output alone."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        if kwargs.pop("deep_supervision", False):
            raise ValueError("UNetPlusPlus: deep_supervision gives several outputs; the bundle trains one")
        self.net = BasicUNetPlusPlus(**kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]
