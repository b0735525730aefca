"""Where the network looked: Grad-CAM heatmaps (``monai.visualize.GradCAM``) of the mask and of the image gate.

The target of the mask's map is the pneumothorax logit summed over the image (channel 0); that of the gate's, a
headed network's image logit (channel 1, ``scripts.networks.image_head``). Grad-CAM weighs a layer's feature maps
by the mean gradient of the target and keeps the positive part, upsampled to the input: a decoder layer at half
resolution localises the mask's evidence; the gate only sees the encoder's deepest features, so its map comes from
there. :func:`default_layer` picks both per network family; ``heatmap_layer`` names another.

:class:`HeatmapMaker` runs on a copy of the network (the hooks Grad-CAM needs never touch the one inference
runs), one forward and one backward pass per image, at the size the network takes (``image_size``, or the image's
own); :func:`blend` lays the map on the radiograph as an RGB picture at the image's size. Inference writes them with
``--write_heatmaps true`` (``heatmaps/<ImageId>.png``), and one DICOM's is a command::

    python -m scripts.inference.heatmaps --dicom image.dcm --ckpt_dir models --out heatmap.png [--method occlusion]

``method="occlusion"`` (``heatmap_method``) uses ``monai.visualize.OcclusionSensitivity`` instead: the same target
scored with each of about 15 x 15 overlapping windows (an eighth of the image a side) replaced by the image's mean,
the map being how much the score fell. It needs no layer and sees what Grad-CAM's upsampled features blur, but
costs some 200 forward passes per image: for single images and small sets, not a folder of full-size films.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from scripts.data.resize import image_size_pair, resize_image

__all__ = ["HEATMAP_METHODS", "HeatmapMaker", "blend", "default_layer", "heatmap_maker", "maker_for_checkpoint"]

HEATMAP_METHODS = ("gradcam", "occlusion")

#: The decoder layer (about half resolution) whose features explain the mask, per network class.
#: (The gated subclasses of ``scripts.networks.image_head`` have their MONAI parent's layers.)
_MASK_LAYERS = {
    "AttentionUnet": ("model.1.submodule.1.merge", "model.1.merge"),
    "FlexibleUNet": ("decoder.blocks.3",),
    "AttentionEncoderUNet": ("stages.3",),
    "DoubleUNet": ("decoder2.2",),
    "UNetPlusPlus": ("net.upcat_1_3",),
}


def default_layer(network: torch.nn.Module, target: str = "mask") -> str:
    """The layer whose Grad-CAM explains ``target`` (``"mask"`` or ``"gate"``) for ``network``.

    The mask's: a decoder layer at about half resolution (:data:`_MASK_LAYERS`), else the last convolution of the
    network. The gate's: the deepest encoder stage (``encoder.layer4``, EfficientNet's last block, AttentionUnet's
    bottleneck), what the image head pools.

    Raises:
        ValueError: no layer fits (the message says to name one with ``heatmap_layer``).
    """
    names = {name for name, _ in network.named_modules()}
    kind = type(network).__name__
    if target == "mask":
        for name in _MASK_LAYERS.get(kind.removeprefix("Gated"), ()):
            if name in names:
                return name
        convolutions = [name for name, module in network.named_modules() if isinstance(module, torch.nn.Conv2d)]
        if convolutions:
            return convolutions[-1]
    elif target == "gate":
        if "encoder.layer4" in names:  # the ResNet and SE-ResNeXt backbones
            return "encoder.layer4"
        blocks = getattr(getattr(network, "encoder", None), "_blocks", None)
        if blocks is not None:  # EfficientNet
            return f"encoder._blocks.{len(blocks) - 1}"
        if kind == "GatedAttentionUnet":  # down the nested levels to the bottleneck convolution
            layer, path = network.model[1], "model.1"
            while isinstance(layer.submodule, torch.nn.Sequential):
                layer, path = layer.submodule[1], f"{path}.submodule.1"
            return f"{path}.submodule"
    else:
        raise ValueError(f"heatmap target {target!r}: mask or gate")
    raise ValueError(f"{kind}: no default layer for the {target}'s heatmap; name one with heatmap_layer")


class _Score(torch.nn.Module):
    """The network's output reduced to one score per image, as Grad-CAM's "class" 0."""

    def __init__(self, network: torch.nn.Module, channel: int) -> None:
        super().__init__()
        self.network, self.channel = network, channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.network(x)[:, self.channel].flatten(1)  # channel 1 exists: HeatmapMaker checks for the head
        return (score.sum(dim=1) if self.channel == 0 else score.mean(dim=1))[:, None]


class HeatmapMaker:
    """Grad-CAM (or occlusion sensitivity) of ``network`` (copied) for the mask (``target="mask"``) or the gate
    (``"gate"``).

    Args:
        network: a segmentation network (a member of an ensemble: its first).
        target: ``"mask"`` or ``"gate"``.
        layer: the layer to explain (default :func:`default_layer`); Grad-CAM only.
        image_size: the size the network takes whole images at (null: the image's own).
        device: where it runs.
        method: ``"gradcam"`` or ``"occlusion"``.
    """

    def __init__(self, network: torch.nn.Module, target: str = "mask", layer: str | None = None, image_size=None,
                 device: str | torch.device = "cpu", method: str = "gradcam") -> None:  # fmt: skip
        from monai.visualize import GradCAM

        if method not in HEATMAP_METHODS:
            raise ValueError(f"heatmap_method {method!r}: expected one of {HEATMAP_METHODS}")

        network = getattr(network, "networks", [network])[0]  # an ensemble (AveragedProbabilities): its first member
        if target == "gate" and getattr(network, "image_head", None) is None:
            raise ValueError(f"the gate's heatmap needs a network with an image head (image_head true), not a plain {type(network).__name__}")
        self.network = copy.deepcopy(network).to(device).float().eval()
        self.layer = layer or default_layer(self.network, target)
        if self.layer not in {name for name, _ in self.network.named_modules()}:
            raise ValueError(f"heatmap_layer {self.layer!r}: {type(self.network).__name__} has no such layer")
        self.size, self.device, self.method = image_size_pair(image_size), device, method
        self.score = _Score(self.network, 1 if target == "gate" else 0)
        self.cam = GradCAM(
            nn_module=_Score(self.network, 1 if target == "gate" else 0),
            target_layers=f"network.{self.layer}",
            postprocessing=_scaled,  # MONAI's default normaliser maps the hottest point to 0
        )

    def __call__(self, image: torch.Tensor) -> np.ndarray:
        """``(1, W, H)`` image as the bundle loads it (MONAI's layout) -> ``(W, H)`` float32 heatmap in [0, 1]."""
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        x = torch.as_tensor(image, dtype=torch.float32, device=self.device)[None]
        shape = tuple(x.shape[-2:])
        if self.size is not None and shape != self.size:
            x = resize_image(x, self.size)
        if self.method == "occlusion":
            heat = self._occlusion(x)
        else:
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*inplace.*")
                warnings.filterwarnings("ignore", message="Full backward hook is firing")  # the input needs no gradient
                heat = self.cam(x, class_idx=0)
        if tuple(heat.shape[-2:]) != shape:
            heat = resize_image(heat, shape)
        return heat[0, 0].detach().clamp(0, 1).cpu().numpy().astype(np.float32)


    @torch.no_grad()
    def _occlusion(self, x: torch.Tensor) -> torch.Tensor:
        """How much the score falls when each part of ``x`` is hidden (windows of an eighth of the image, half
        overlapping, filled with the image's mean), scaled to [0, 1]."""
        from monai.visualize import OcclusionSensitivity

        window = [max(4, side // 8) for side in x.shape[-2:]]
        occlusion = OcclusionSensitivity(self.score, mask_size=window, n_batch=16, verbose=False, mode="mean_img",
                                         overlap=0.5, activate=False)  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence")  # inside MONAI's indexing
            occluded, _ = occlusion(x)  # the score with the window around each pixel hidden, (B, 1, H, W)
        occluded = occluded.as_tensor() if hasattr(occluded, "as_tensor") else occluded
        if occluded.ndim == x.ndim + 1:  # MONAI versions that keep a trailing class axis
            occluded = occluded[..., 0]
        fall = (self.score(x)[:, :, None, None] - occluded).clamp(min=0)
        return _scaled(fall)


def heatmap_maker(enabled, network, target: str = "mask", layer: str | None = None, image_size=None, device="cpu",
                  method: str = "gradcam"):  # fmt: skip
    """The :class:`HeatmapMaker` inference's ``--write_heatmaps true`` asks for, or None (``inference.json``)."""
    from scripts.utils.flags import as_flag

    if not as_flag(enabled, "write_heatmaps"):
        return None
    return HeatmapMaker(network, target=target, layer=layer, image_size=image_size, device=device, method=method)


def _scaled(heat: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1], its hottest point 1 (all zero: nothing in that layer raised the score)."""
    flat = heat.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    span = torch.where(high > low, high - low, torch.ones_like(high))
    return ((flat - low[:, None]) / span[:, None]).reshape(heat.shape)


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Grey ``image`` (values in [0, 1]) with ``heat`` ([0, 1], same shape) laid over it in a blue-cyan-yellow-red
    ramp (most of jet, ending at pure red) -> ``(H, W, 3)`` uint8; where the map is 0 the radiograph shows through
    unchanged."""
    grey = np.clip(np.asarray(image, dtype=np.float32), 0, 1)[..., None].repeat(3, axis=2)
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0, 1)
    position = 4 * 0.875 * heat
    ramp = np.stack([np.clip(1.5 - np.abs(position - centre), 0, 1) for centre in (3, 2, 1)], axis=2)
    weight = (alpha * heat)[..., None]
    return np.round((grey * (1 - weight) + ramp * weight) * 255).astype(np.uint8)


def maker_for_checkpoint(checkpoint: str | os.PathLike, target: str = "mask", layer: str | None = None,
                         method: str = "gradcam"):  # fmt: skip
    """``(HeatmapMaker, load)`` for one checkpoint outside a bundle run: its recorded network with its weights, and
    the transform that loads ``{"image": DICOM path}`` as inference does (``configs/common.json``'s image_loading)."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from scripts.data.cache import Uint8ToFloatd
    from scripts.networks.definition import image_size_for, network_for
    from scripts.training.checkpoints import load_weights

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[2] / "configs" / "common.json"))
    network = load_weights(network_for(checkpoint, parser.get_parsed_content("network_config")), checkpoint)
    maker = HeatmapMaker(network, target=target, layer=layer, image_size=image_size_for([checkpoint]), method=method)
    return maker, Compose([*parser.get_parsed_content("image_loading"), Uint8ToFloatd("image")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.inference.heatmaps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dicom", required=True, help="one DICOM radiograph")
    parser.add_argument("--ckpt_dir", default="models", help="where model.pt and its model.json are")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint (default <ckpt_dir>/model.pt)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--target", choices=("mask", "gate"), default="mask")
    parser.add_argument("--layer", default=None, help="the layer to explain (default: per network family)")
    parser.add_argument("--method", choices=HEATMAP_METHODS, default="gradcam")
    args = parser.parse_args(argv)
    from scripts.data.labels import to_image_orientation
    from scripts.inference.outputs import save_png

    checkpoint = Path(args.checkpoint or Path(args.ckpt_dir) / "model.pt")
    maker, load = maker_for_checkpoint(checkpoint, target=args.target, layer=args.layer, method=args.method)
    image = load({"image": args.dicom})["image"]
    heat = maker(image.as_tensor())
    save_png(Path(args.out), blend(to_image_orientation(image[0].numpy()), to_image_orientation(heat)))
    how = f"Grad-CAM of the {args.target} at {maker.layer}" if args.method == "gradcam" else f"occlusion sensitivity of the {args.target}"
    print(f"{args.out}: {how}, {heat.shape[1]} x {heat.shape[0]} pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
