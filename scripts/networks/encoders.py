"""Encoders MONAI's ``FlexibleUNet`` lacks, registered as its backbones when this module is imported.

* ``resnet18-imagenet``, ``resnet34-imagenet``: ResNets in torchvision's layout (a 7 x 7 stem, projection
  shortcuts, no bias in them), the encoders of the SIIM-ACR U-Nets. MONAI's own ``resnet18`` / ``resnet34``
  backbones follow MedicalNet instead (parameter-free "A" shortcuts, which TorchScript cannot compile and ImageNet
  weights do not fit); ``resnet50`` and deeper are already in torchvision's layout in MONAI.
"""

from __future__ import annotations

from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FLEXUNET_BACKBONE
from monai.networks.nets.resnet import ResNet, ResNetFeatures

__all__ = ["ImageNetResNetEncoder"]


class ImageNetResNetEncoder(ResNet, BaseEncoder):
    """A ResNet (basic blocks) in torchvision's layout, giving ``FlexibleUNet`` its five feature maps."""

    backbone_names = ["resnet18-imagenet", "resnet34-imagenet"]
    _layers = {"resnet18-imagenet": [2, 2, 2, 2], "resnet34-imagenet": [3, 4, 6, 3]}

    def __init__(self, model_name: str, pretrained: bool = False, spatial_dims: int = 2, in_channels: int = 1):
        if model_name not in self._layers:
            raise ValueError(
                f"ImageNetResNetEncoder: unknown model {model_name!r}; expected one of {self.backbone_names}"
            )
        if pretrained:
            raise ValueError(
                f"{model_name}: pretrained weights are not downloaded for this encoder; give a saved torchvision "
                "state dict as encoder_weights (network_config#encoder_weights)"
            )
        super().__init__(
            block="basic",
            layers=self._layers[model_name],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            feed_forward=False,
            bias_downsample=False,
        )

    forward = ResNetFeatures.forward  # the stem's output and the four stages' outputs

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [
            {"model_name": name, "pretrained": False, "spatial_dims": 2, "in_channels": 1}
            for name in cls.backbone_names
        ]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(64, 64, 128, 256, 512)] * len(cls.backbone_names)

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5] * len(cls.backbone_names)

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return cls.backbone_names


if ImageNetResNetEncoder.backbone_names[0] not in FLEXUNET_BACKBONE.register_dict:
    FLEXUNET_BACKBONE.register_class(ImageNetResNetEncoder)
