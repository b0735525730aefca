"""An image-level "pneumothorax or not" head on a segmentation network's deepest features, as the 4th-place SIIM-ACR
U-Net had one on its encoder: pooled features -> linear -> one logit per image, trained jointly with the mask
(``scripts.training.image_loss``).

A network with the head returns two channels: channel 0 is the mask's logit map, channel 1 the image's logit
broadcast over the map. Everything that takes a logit map (the sliding window, the resized inferer, flip TTA, the
ensembles, the exports) carries channel 1 along unchanged; the post-processing splits it off
(``scripts.inference.gating``). Over sliding windows, channel 1 holds each window's verdict blended where windows
overlap; its maximum is the image's.

A definition asks for the head with ``"image_head": true`` (``--network_config#image_head true``); it is recorded
with the network, so evaluation, inference and export rebuild it. MONAI's ``FlexibleUNet`` (the ResNet,
SE-ResNeXt and EfficientNet U-Nets) and ``AttentionUnet`` (the default, head on its bottleneck) are built as the
subclasses here; ``AttentionEncoderUNet`` and ``DoubleUNet`` take the argument themselves. The state dict of a
network with the head is that of the same network without it plus ``image_head.*``, so a plain checkpoint starts a
network with the head (``init_weights``) and all but the head's weights carry over.
"""

from __future__ import annotations

import inspect

import torch
from monai.networks.nets import AttentionUnet, FlexibleUNet
from monai.networks.nets.attentionunet import AttentionLayer
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

__all__ = ["GatedAttentionUnet", "GatedFlexibleUNet", "ImageHead", "gated_target", "image_head_for", "with_image_logit"]



class ImageHead(torch.nn.Module):
    """Feature map ``(B, C, ...)`` -> image logit ``(B, 1)``: average- and max-pooled features, then a linear layer
    (a pneumothorax can be a thin rim, which the average alone dilutes)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2 * channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        flat = features.flatten(2)
        return self.linear(torch.cat([flat.mean(dim=2), flat.amax(dim=2)], dim=1))


def with_image_logit(mask_logits: torch.Tensor, image_logit: torch.Tensor) -> torch.Tensor:
    """``(B, 1, ...)`` mask logits and ``(B, 1)`` image logits -> ``(B, 2, ...)``, the image's logit as channel 1."""
    shape = [image_logit.shape[0], 1] + [1] * (mask_logits.dim() - 2)
    image_map = image_logit.to(mask_logits.dtype).reshape(shape).expand_as(mask_logits[:, :1])
    return torch.cat([mask_logits, image_map], dim=1)


class GatedFlexibleUNet(FlexibleUNet):
    """MONAI's ``FlexibleUNet`` (its arguments) with an :class:`ImageHead` on the encoder's deepest features."""

    def __init__(self, *args, image_head: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _refuse_without_head("FlexibleUNet", image_head, kwargs)
        channels = FLEXUNET_BACKBONE.register_dict[self.backbone]["feature_channel"][-1]
        self.image_head = ImageHead(channels)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.encoder(inputs)
        mask_logits = self.segmentation_head(self.decoder(features, self.skip_connect))
        return with_image_logit(mask_logits, self.image_head(features[-1]))


class _DownThen(torch.nn.Sequential):
    """An ``AttentionLayer``'s submodule (down-convolution, then the next level), passing on the bottleneck's
    features beside the level's output; its children keep the names ``0`` and ``1`` of the ``Sequential`` it was."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self[1](self[0](x))


class _TappedLayer(AttentionLayer):
    """An ``AttentionLayer`` above the bottom: its own output and the bottleneck's features from below."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        lower, bottleneck = self.submodule(x)
        fromlower = self.upconv(lower)
        attended = self.attention(g=fromlower, x=x)
        return self.merge(torch.cat((attended, fromlower), dim=1)), bottleneck


class _TappedBottom(AttentionLayer):
    """The bottom ``AttentionLayer``: its submodule is the bottleneck convolution, whose output it passes on."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        bottleneck = self.submodule(x)
        fromlower = self.upconv(bottleneck)
        attended = self.attention(g=fromlower, x=x)
        return self.merge(torch.cat((attended, fromlower), dim=1)), bottleneck


class GatedAttentionUnet(AttentionUnet):
    """MONAI's ``AttentionUnet`` (its arguments) with an :class:`ImageHead` on its bottleneck.

    MONAI nests the levels (each ``AttentionLayer`` calls the next inside a ``Sequential``); here each level is
    given a class whose ``forward`` also returns the bottleneck's features, with the same children, so the state
    dict and the computation of the mask are MONAI's own.
    """

    def __init__(self, *args, image_head: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _refuse_without_head("AttentionUnet", image_head, kwargs)
        layer = self.model[1]
        while isinstance(layer.submodule, torch.nn.Sequential):
            layer.__class__ = _TappedLayer
            layer.submodule.__class__ = _DownThen
            layer = layer.submodule[1]
        layer.__class__ = _TappedBottom
        self.model.__class__ = torch.nn.ModuleList  # its parts are called in turn by forward (TorchScript checks types)
        self.image_head = ImageHead(self.channels[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoded, bottleneck = self.model[1](self.model[0](x))
        return with_image_logit(self.model[2](decoded), self.image_head(bottleneck))


def image_head_for(name: str, image_head: bool, channels: int, out_channels: int) -> ImageHead | None:
    """The head of a network of our own (``name``, in errors) on features of ``channels``, or None without it."""
    if not image_head:
        return None
    _refuse_without_head(name, True, {"out_channels": out_channels})
    return ImageHead(channels)


def _refuse_without_head(name: str, image_head: bool, arguments: dict) -> None:
    if not image_head:
        raise ValueError(f"{name}: the gated network is the one with the image head (image_head true)")
    if arguments.get("out_channels", 1) != 1:
        raise ValueError(f"{name}: the image head goes with one mask channel, not out_channels {arguments['out_channels']}")


_GATED = {FlexibleUNet: GatedFlexibleUNet, AttentionUnet: GatedAttentionUnet}


def gated_target(target, name: str):
    """The network class to build for a definition with ``"image_head": true`` whose target is ``target`` (named
    ``name`` there): the subclass above for MONAI's networks, else ``target`` itself if it takes ``image_head``.

    Raises:
        ValueError: ``target`` has no image head.
    """
    if target in _GATED:
        return _GATED[target]
    try:
        takes_it = "image_head" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes_it = False
    if not takes_it:
        supported = "FlexibleUNet, AttentionUnet, scripts.networks.attention_encoder_unet.AttentionEncoderUNet, " \
                    "scripts.networks.double_unet.DoubleUNet"
        raise ValueError(f"network {name}: has no image head (image_head true works with {supported})")
    return target
