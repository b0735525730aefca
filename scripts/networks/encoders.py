"""Encoders MONAI's ``FlexibleUNet`` lacks, registered as its backbones when this module is imported, and how an
encoder starts from ImageNet weights (downloaded, or from a saved file on an offline machine).

* ``resnet18-imagenet``, ``resnet34-imagenet``: ResNets in torchvision's layout (a 7 x 7 stem, projection
  shortcuts, no bias in them), the encoders of the SIIM-ACR U-Nets. MONAI's own ``resnet18`` / ``resnet34``
  backbones follow MedicalNet instead (parameter-free "A" shortcuts, which TorchScript cannot compile and ImageNet
  weights do not fit); ``resnet50`` and deeper are already in torchvision's layout in MONAI.
* ``seresnext50``: MONAI's ``SEResNext50`` (32 x 4d, 7 x 7 stem) as an encoder; ImageNet weights come in the
  layout of Cadene's ``pretrainedmodels`` (``se_resnext50_32x4d-a260b3a4.pth``), which
  :meth:`SEResNeXt50Encoder.own_layout` renames to MONAI's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.blocks.squeeze_and_excitation import SEResNeXtBottleneck
from monai.networks.nets import FLEXUNET_BACKBONE
from monai.networks.nets.resnet import ResNet, ResNetFeatures
from monai.networks.nets.senet import SE_NET_MODELS, SENet

__all__ = ["ImageNetResNetEncoder", "SEResNeXt50Encoder", "backbone_encoder", "fit_state_dict"]

logger = logging.getLogger(__name__)

#: torchvision's ImageNet weights (IMAGENET1K_V1) of the ResNets in its layout; no torchvision needed to read them.
_TORCHVISION_URLS = {
    "resnet18-imagenet": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34-imagenet": "https://download.pytorch.org/models/resnet34-b627a593.pth",
}


def fit_state_dict(module: torch.nn.Module, saved: Mapping[str, torch.Tensor], source: str) -> dict:
    """``saved`` reduced to ``module``'s state dict: keys it lacks (a classifier's) left out, and a first
    convolution saved for 3 input channels (RGB) summed over them for a 1-channel module, the usual way grey images
    use colour weights. Batch-norm counters (``num_batches_tracked``) a file lacks keep the module's.

    Raises:
        ValueError: ``saved`` leaves one of ``module``'s weights unset or of another shape (naming ``source`` and
            the first such key).
    """
    state = {}
    for key, tensor in module.state_dict().items():
        if key not in saved and key.endswith("num_batches_tracked"):
            state[key] = tensor  # a batch-norm counter, absent from files saved before PyTorch 0.4.1
            continue
        if key not in saved:
            raise ValueError(f"{source}: no {key}, which the {type(module).__name__} needs")
        value = saved[key]
        rgb_for_grey = value.ndim == tensor.ndim > 2 and value.shape[1] == 3 and tensor.shape[1] == 1
        if rgb_for_grey and value.shape[0] == tensor.shape[0]:
            value = value.sum(dim=1, keepdim=True)  # RGB weights for a grey image
        if tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(f"{source}: {key} is {tuple(value.shape)}, the encoder's {tuple(tensor.shape)}")
        state[key] = value
    return state


class _Pretrained:
    """Start an encoder from its ImageNet weights: a download (``pretrained=True``, cached by ``torch.hub`` in
    ``$TORCH_HOME/hub/checkpoints``, so a copy of the file there serves an offline machine too) or a saved state
    dict (``encoder_weights``, :func:`scripts.networks.definition.load_encoder_weights`)."""

    @classmethod
    def own_layout(cls, saved: Mapping[str, torch.Tensor]) -> dict:
        """``saved`` with its keys in this encoder's layout (the published files' layout is this one)."""
        return dict(saved)

    def start_from(self, saved: Mapping[str, torch.Tensor], source: str) -> None:
        state = fit_state_dict(self, self.own_layout(saved), source)
        self.load_state_dict(state)
        logger.info("encoder weights loaded from %s (%d tensors)", source, len(state))

    def download_weights(self, url: str, check_hash: bool = False) -> None:
        """``url``'s state dict (``weights_only``); ``check_hash``: a download must match the SHA-256 prefix in the
        file's name (torchvision's convention; a file already in the cache is taken as it is)."""
        try:
            saved = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, weights_only=True, check_hash=check_hash
            )
        except Exception as error:
            raise ValueError(
                f"{type(self).__name__}: pretrained weights cannot be downloaded from {url} ({type(error).__name__}: "
                f"{error}); offline, put that file in {torch.hub.get_dir()}/checkpoints or give it as encoder_weights"
            ) from None
        self.start_from(saved, url)


class ImageNetResNetEncoder(_Pretrained, ResNet, BaseEncoder):
    """A ResNet (basic blocks) in torchvision's layout, giving ``FlexibleUNet`` its five feature maps."""

    backbone_names = ["resnet18-imagenet", "resnet34-imagenet"]
    _layers = {"resnet18-imagenet": [2, 2, 2, 2], "resnet34-imagenet": [3, 4, 6, 3]}

    def __init__(self, model_name: str, pretrained: bool = False, spatial_dims: int = 2, in_channels: int = 1):
        if model_name not in self._layers:
            raise ValueError(
                f"ImageNetResNetEncoder: unknown model {model_name!r}; expected one of {self.backbone_names}"
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
        if pretrained:
            self.download_weights(_TORCHVISION_URLS[model_name], check_hash=True)

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


#: Cadene's ``pretrainedmodels`` SE-ResNeXt keys -> MONAI's (per block: convN, bnN, se_module, downsample).
_CADENE_TO_MONAI = [
    (re.compile(r"^(layer[1-4]\.\d+\.)(conv\d)\.(\w+)$"), r"\1\2.conv.\3"),
    (re.compile(r"^(layer[1-4]\.\d+\.)bn(\d)\.(\w+)$"), r"\1conv\2.adn.N.\3"),
    (re.compile(r"^(layer[1-4]\.\d+\.)se_module\.fc1\.(\w+)$"), r"\1se_layer.fc.0.\2"),
    (re.compile(r"^(layer[1-4]\.\d+\.)se_module\.fc2\.(\w+)$"), r"\1se_layer.fc.2.\2"),
    (re.compile(r"^(layer[1-4]\.\d+\.)downsample\.0\.(\w+)$"), r"\1project.conv.\2"),
    (re.compile(r"^(layer[1-4]\.\d+\.)downsample\.1\.(\w+)$"), r"\1project.adn.N.\2"),
]


class SEResNeXt50Encoder(_Pretrained, SENet, BaseEncoder):
    """MONAI's SE-ResNeXt50 (32 x 4d) without its classifier, giving ``FlexibleUNet`` its five feature maps: the
    stem before its max-pool (stride 2) and the four stages (strides 4 to 32)."""

    backbone_names = ["seresnext50"]

    def __init__(self, model_name: str = "seresnext50", pretrained: bool = False, spatial_dims: int = 2, in_channels: int = 1):
        if model_name not in self.backbone_names:
            raise ValueError(f"SEResNeXt50Encoder: unknown model {model_name!r}; expected one of {self.backbone_names}")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            block=SEResNeXtBottleneck,
            layers=(3, 4, 6, 3),
            groups=32,
            reduction=16,
            dropout_prob=None,
            inplanes=64,
            downsample_kernel_size=1,
            input_3x3=False,
        )
        del self.adaptive_avg_pool, self.dropout, self.last_linear  # a classifier's; unused parameters upset DDP
        if pretrained:
            self.download_weights(SE_NET_MODELS["se_resnext50_32x4d"])

    @classmethod
    def own_layout(cls, saved: Mapping[str, torch.Tensor]) -> dict:
        """Cadene's layout renamed to MONAI's (the squeeze-excitation 1 x 1 convolutions become linear weights);
        a state dict already in MONAI's layout passes unchanged."""
        renamed = {}
        for key, value in saved.items():
            for pattern, replacement in _CADENE_TO_MONAI:
                if pattern.match(key):
                    if "se_module" in key and value.ndim > 1:
                        value = value.reshape(value.shape[0], value.shape[1])
                    key = pattern.sub(replacement, key)
                    break
            renamed[key] = value
        return renamed

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.layer0.relu1(self.layer0.bn1(self.layer0.conv1(x)))
        x1 = self.layer1(self.layer0.pool(stem))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [stem, x1, x2, x3, self.layer4(x3)]

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"model_name": "seresnext50", "pretrained": False, "spatial_dims": 2, "in_channels": 1}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(64, 256, 512, 1024, 2048)]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return cls.backbone_names


for _encoder in (ImageNetResNetEncoder, SEResNeXt50Encoder):
    if _encoder.backbone_names[0] not in FLEXUNET_BACKBONE.register_dict:
        FLEXUNET_BACKBONE.register_class(_encoder)


def backbone_encoder(
    network: str, backbone: str, spatial_dims: int, in_channels: int, pretrained: bool
) -> tuple[torch.nn.Module, list[int]]:
    """A ``FlexibleUNet`` backbone of five feature maps (strides 2 to 32) built for a network of our own, and the
    channels of those maps; ``network`` names that network in the errors."""
    if backbone not in FLEXUNET_BACKBONE.register_dict:
        raise ValueError(f"{network}: unknown backbone {backbone!r}; one of {sorted(FLEXUNET_BACKBONE.register_dict)}")
    encoder = FLEXUNET_BACKBONE.register_dict[backbone]
    if encoder["feature_number"] != 5:
        raise ValueError(f"{network}: needs a backbone of five feature maps, {backbone} has {encoder['feature_number']}")
    parameters = {**encoder["parameter"], "spatial_dims": spatial_dims, "in_channels": in_channels, "pretrained": pretrained}
    return encoder["type"](**parameters), list(encoder["feature_channel"])
