"""DoubleU-Net (Jha et al., CBMS 2020): two U-Nets in sequence, the second refining what the first found, as one of
the SIIM-ACR projects used it.

Network 1 is a U-Net on a pretrained-style encoder (here any ``FlexibleUNet`` backbone, by default the ResNet34 in
torchvision's layout; the paper's VGG19 is not among MONAI's networks) with atrous spatial pyramid pooling on its
deepest features (stride 32) and squeeze-and-excitation (MONAI's ``ChannelSELayer``) after each decoder stage. Its
mask, as a probability, multiplies the input image; network 2, a U-Net of its own (convolution blocks with
squeeze-and-excitation, ASPP), segments that product, its decoder taking network 1's skip connections beside its own
at strides 8, 4 and 2 (at stride 1, its own only).

The ASPP is MONAI's ``SimpleASPP``: four branches at dilations 1, 2, 4 and 6, without the paper's image-pooling
branch. The paper outputs both masks side by side and supervises each. The bundle's losses, metrics and inferers take
one logit map, so the output is network 2's logits; network 1 learns through them (its probabilities gate network 2's
input). Each decoder stage is brought to its skip's size, so any size of at least 16 pixels a side works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer, Convolution, SimpleASPP
from torch.nn import functional

from scripts.networks.encoders import backbone_encoder
from scripts.networks.image_head import image_head_for, with_image_logit

__all__ = ["DoubleUNet"]


def _conv_block(spatial_dims: int, in_channels: int, out_channels: int) -> torch.nn.Sequential:
    """Two 3 x 3 convolutions (batch norm, ReLU) and squeeze-and-excitation, the paper's block."""
    return torch.nn.Sequential(
        Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, norm="batch", act="relu"),
        Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, norm="batch", act="relu"),
        ChannelSELayer(spatial_dims, out_channels, r=min(8, out_channels)),
    )


def _aspp(spatial_dims: int, in_channels: int, out_channels: int) -> SimpleASPP:
    """Four parallel branches (1 x 1 and 3 x 3 at dilations 2, 4, 6) fused into ``out_channels``."""
    if out_channels % 4:
        raise ValueError(f"DoubleUNet: ASPP widths must be multiples of 4, not {out_channels}")
    return SimpleASPP(spatial_dims, in_channels, out_channels // 4, acti_type="relu")


class _UpStage(torch.nn.Module):
    """Upsample to the first skip's size, concatenate the skips (each brought to that size), convolution block."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = _conv_block(spatial_dims, in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        size = skips[0].shape[2:]
        parts = [functional.interpolate(x, size=size, mode="bilinear", align_corners=False)]
        for skip in skips:  # network 1's features at odd sizes can differ from network 2's by a pixel
            parts.append(skip if skip.shape[2:] == size else functional.interpolate(skip, size=size, mode="bilinear", align_corners=False))
        return self.block(torch.cat(parts, dim=1))


class DoubleUNet(torch.nn.Module):
    """DoubleU-Net: a ``FlexibleUNet`` backbone U-Net (ASPP, SE) whose mask gates the input of a second U-Net.

    Args:
        spatial_dims: 2 (radiographs; the blocks are 2-D).
        in_channels, out_channels: as MONAI's networks take them.
        backbone: network 1's encoder, a ``FlexibleUNet`` backbone name (``resnet34-imagenet``, ``efficientnet-b0``...).
        pretrained: start that encoder from ImageNet weights (downloaded; ``encoder_weights`` loads a saved file).
        decoder_channels: the widths of network 1's four decoder stages at strides 16, 8, 4, 2 and of its
            full-resolution stage.
        encoder2_channels: the widths of network 2's encoder blocks at strides 1, 2, 4, 8; its decoder mirrors them.
        aspp_channels: the widths of network 1's and network 2's ASPP outputs (multiples of 4).
        image_head: also return an image-level logit from network 1's deepest features as channel 1
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
        encoder2_channels: Sequence[int] = (32, 64, 128, 256),
        aspp_channels: Sequence[int] = (256, 256),
        image_head: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"DoubleUNet: built for 2-D images (spatial_dims 2), not {spatial_dims}")
        if len(decoder_channels) != 5 or len(encoder2_channels) != 4 or len(aspp_channels) != 2:
            raise ValueError("DoubleUNet: decoder_channels takes five widths, encoder2_channels four, aspp_channels two")
        # network 1's encoder: features at strides 2, 4, 8, 16, 32
        self.encoder, skips = backbone_encoder("DoubleUNet", backbone, spatial_dims, in_channels, pretrained)
        self.aspp1 = _aspp(spatial_dims, skips[-1], aspp_channels[0])
        widths = [aspp_channels[0], *decoder_channels]
        self.decoder1 = torch.nn.ModuleList(
            _UpStage(spatial_dims, widths[index], skips[-2 - index], widths[index + 1]) for index in range(4)
        )
        self.full_resolution1 = _conv_block(spatial_dims, widths[4], widths[5])
        self.head1 = Convolution(spatial_dims, widths[5], out_channels, kernel_size=1, conv_only=True)

        widths2 = list(encoder2_channels)
        self.encoder2 = torch.nn.ModuleList(
            _conv_block(spatial_dims, in_channels if index == 0 else widths2[index - 1], widths2[index]) for index in range(4)
        )
        self.pool = torch.nn.MaxPool2d(2, ceil_mode=True)  # rounds up, as network 1's strided convolutions do
        self.aspp2 = _aspp(spatial_dims, widths2[-1], aspp_channels[1])
        # network 2's decoder at strides 8, 4, 2 takes network 1's features at those strides too; at stride 1, its own only
        skips1 = [skips[2], skips[1], skips[0], 0]
        up_widths = [aspp_channels[1], *reversed(widths2)]
        self.decoder2 = torch.nn.ModuleList(
            _UpStage(spatial_dims, up_widths[index], widths2[3 - index] + skips1[index], up_widths[index + 1])
            for index in range(4)
        )
        self.head2 = Convolution(spatial_dims, widths2[0], out_channels, kernel_size=1, conv_only=True)
        self.image_head = image_head_for("DoubleUNet", image_head, skips[-1], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = self.aspp1(features[4])
        for index, stage in enumerate(self.decoder1):
            y = stage(y, [features[3 - index]])
        y = functional.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
        mask1 = self.head1(self.full_resolution1(y))

        z = x * torch.sigmoid(mask1).amax(dim=1, keepdim=True)  # the first mask's probability gates the image
        skips2: list[torch.Tensor] = []
        for index, block in enumerate(self.encoder2):
            z = block(z if index == 0 else self.pool(z))
            skips2.append(z)
        z = self.aspp2(self.pool(z))
        skips1 = [features[2], features[1], features[0]]
        for index, stage in enumerate(self.decoder2):
            z = stage(z, [skips2[3 - index], skips1[index]] if index < 3 else [skips2[0]])
        if self.image_head is not None:
            return with_image_logit(self.head2(z), self.image_head(features[4]))
        return self.head2(z)
