"""The training loss of a network with or without an image-level head (``scripts.networks.image_head``).

With one output channel it is the mask's loss (DiceFocal). With two, channel 1 is the image's logit: the loss adds
``image_weight`` times the binary cross-entropy of that logit against "this crop shows pneumothorax" (any labelled
pixel in it), so the head learns the question the gate asks at inference.
"""

from __future__ import annotations

import torch
from torch.nn import functional

__all__ = ["MaskAndImageLoss", "image_logits", "image_targets"]


def image_logits(pred: torch.Tensor) -> torch.Tensor:
    """``(B, 2, ...)`` network output -> ``(B,)`` image logits (channel 1, constant over the map)."""
    return pred[:, 1].flatten(1).mean(dim=1)


def image_targets(label: torch.Tensor) -> torch.Tensor:
    """``(B, 1, ...)`` masks -> ``(B,)`` float: 1 where the image (crop) has any pneumothorax pixel."""
    return (label.flatten(1) > 0.5).any(dim=1).float()


class MaskAndImageLoss(torch.nn.Module):
    """``mask_loss(pred[:, :1], label)`` plus, for a two-channel ``pred``, ``image_weight`` x BCE of the image logit.

    Args:
        mask_loss: the segmentation loss (``DiceFocalLoss`` in ``configs/train.json``).
        image_weight: the weight of the image-level term (``image_loss_weight``); 0 trains the head not at all.
    """

    def __init__(self, mask_loss: torch.nn.Module, image_weight: float = 1.0) -> None:
        super().__init__()
        if not 0 <= float(image_weight) < float("inf"):
            raise ValueError(f"image_loss_weight must be a number >= 0, not {image_weight}")
        self.mask_loss, self.image_weight = mask_loss, float(image_weight)

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if pred.shape[1] == 1:
            return self.mask_loss(pred, label)
        if pred.shape[1] != 2:
            raise ValueError(f"the loss takes a mask logit map and optionally an image logit, not {pred.shape[1]} channels")
        loss = self.mask_loss(pred[:, :1], label)
        image = functional.binary_cross_entropy_with_logits(image_logits(pred).float(), image_targets(label))
        return loss + self.image_weight * image
