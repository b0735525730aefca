"""An Attention U-Net on a pretrained-style encoder: attention gates on the skip connections of a U-Net whose
encoder is a ``FlexibleUNet`` backbone (by default the ResNet34 in torchvision's layout), as one of the SIIM-ACR
projects built it.

Each decoder stage upsamples the deeper features to the size of the skip (any input size works, no multiple of 32
needed), lets an attention gate (MONAI's ``AttentionBlock``, gated by those upsampled features) weight the skip
connection, and fuses both with two 3 x 3 convolutions; the last stage is brought to the input's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets.attentionunet import AttentionBlock
from torch.nn import functional

from scripts.networks.encoders import backbone_encoder
from scripts.networks.image_head import image_head_for, with_image_logit

__all__ = ["AttentionEncoderUNet"]


class _GatedStage(torch.nn.Module):
    """Upsample to the skip's size, gate the skip by the upsampled features, fuse both."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, norm="batch", act="relu")
        self.gate = AttentionBlock(spatial_dims, f_int=max(skip_channels // 2, 1), f_g=out_channels, f_l=skip_channels)
        self.fuse = torch.nn.Sequential(
            Convolution(spatial_dims, out_channels + skip_channels, out_channels, kernel_size=3, norm="batch", act="relu"),
            Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, norm="batch", act="relu"),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.reduce(functional.interpolate(x, size=skip.shape[2:], mode="nearest"))
        return self.fuse(torch.cat([up, self.gate(up, skip)], dim=1))


class AttentionEncoderUNet(torch.nn.Module):
    """Attention-gated U-Net decoder on a ``FlexibleUNet`` backbone (``encoder``, five feature maps).

    Args:
        spatial_dims, in_channels, out_channels: as MONAI's networks take them.
        backbone: a ``FlexibleUNet`` backbone name (``resnet34-imagenet``, ``seresnext50``, ``efficientnet-b0``...).
        pretrained: start the encoder from ImageNet weights (downloaded; ``encoder_weights`` loads a saved file).
        decoder_channels: the widths of the four gated stages and of the full-resolution stage.
        image_head: also return an image-level logit from the deepest features as channel 1
            (``scripts.networks.image_head``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        backbone: str = "resnet34-imagenet",
        pretrained: bool = False,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        image_head: bool = False,
    ) -> None:
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError("AttentionEncoderUNet: needs five decoder channels")
        # the encoder: five feature maps, at strides 2 to 32
        self.encoder, skips = backbone_encoder("AttentionEncoderUNet", backbone, spatial_dims, in_channels, pretrained)
        widths = [skips[-1], *decoder_channels]
        self.stages = torch.nn.ModuleList(
            _GatedStage(spatial_dims, widths[index], skips[-2 - index], widths[index + 1]) for index in range(4)
        )
        self.full_resolution = torch.nn.Sequential(
            Convolution(spatial_dims, widths[4], widths[5], kernel_size=3, norm="batch", act="relu"),
            Convolution(spatial_dims, widths[5], widths[5], kernel_size=3, norm="batch", act="relu"),
        )
        self.head = Convolution(spatial_dims, widths[5], out_channels, kernel_size=1, conv_only=True)
        self.image_head = image_head_for("AttentionEncoderUNet", image_head, skips[-1], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = features[4]
        for index, stage in enumerate(self.stages):
            y = stage(y, features[3 - index])
        y = functional.interpolate(y, size=x.shape[2:], mode="nearest")
        mask_logits = self.head(self.full_resolution(y))
        if self.image_head is not None:
            return with_image_logit(mask_logits, self.image_head(features[4]))
        return mask_logits
