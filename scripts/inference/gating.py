"""The image-level gate: "is there a pneumothorax at all?", asked before a mask is kept.

About four in five SIIM radiographs show none, an empty prediction on them scores 1 and a single false-positive
pixel scores 0, so the seed projects let an image-level answer empty the mask. Two sources, either or both:

* the segmentation network's own head (``"image_head": true``, ``scripts.networks.image_head``): channel 1 of
  its output;
* separate classifiers (``configs/classifier.json``, e.g. trained on NIH ChestX-ray14): ``gate_checkpoints``.

:class:`GatedInferer` runs the segmentation inferer, then each classifier on the whole image at the size it was
trained at, and puts the mean of all the gates' probabilities in channel 1. :class:`ImageGated`, in the
post-processing after the sigmoid, splits channel 1 off as the image's probability (``image_prob``) and empties the
mask when that is below ``gate_threshold``. Without a gate, ``image_prob`` is the largest pixel probability of the
mask and nothing is emptied.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.transforms import MapTransform

from scripts.data.resize import image_size_pair, resize_image
from scripts.networks.definition import build_network, image_size_for, record_path, saved_network_config
from scripts.networks.image_head import with_image_logit
from scripts.training.checkpoints import load_weights

__all__ = ["GatedInferer", "ImageClassifiers", "ImageGated", "IMAGE_PROB_KEY"]

logger = logging.getLogger(__name__)

#: The key of the image's probability in the post-processed data (and ``GATED_KEY``: whether a gate gave it).
IMAGE_PROB_KEY = "image_prob"
GATED_KEY = "image_gated"


class ImageClassifiers(torch.nn.Module):
    """Image-level classifiers (``configs/classifier.json`` checkpoints): the mean of their probabilities.

    Each checkpoint is loaded into the network its record defines, and sees the whole image resized to the size it
    records (``image_size``, e.g. 512). ``forward`` takes ``(B, 1, H, W)`` radiographs, normalised as the bundle
    loads them, and returns ``(B, 1)`` probabilities.

    Raises:
        ValueError: a checkpoint has no record of its network, no image size, or weights that do not fit it.
    """

    def __init__(
        self,
        checkpoints: Sequence[str | os.PathLike],
        device: str | torch.device = "cpu",
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        super().__init__()
        if isinstance(checkpoints, (str, os.PathLike)):
            checkpoints = [checkpoints]
        self.checkpoints = [str(path) for path in checkpoints]
        self.networks = torch.nn.ModuleList()
        self.sizes: list[tuple[int, int]] = []
        for path in self.checkpoints:
            definition, size = saved_network_config(path), image_size_pair(image_size_for([path]))
            if definition is None or size is None:
                raise ValueError(
                    f"gate checkpoint {path}: its record ({record_path(path).name}) gives no network and image_size; "
                    "a gate is a classifier trained with configs/classifier.json"
                )
            network = load_weights(build_network(definition), path, device)
            self.networks.append(network.to(device, memory_format=memory_format).eval())
            self.sizes.append(size)
        logger.info("image gate: %d classifier(s) %s", len(self.networks), ", ".join(self.checkpoints))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = None
        for network, size, path in zip(self.networks, self.sizes, self.checkpoints):
            logits = network(resize_image(images, size).to(images.dtype))
            if logits.shape[1:] != (1,):
                raise ValueError(f"gate checkpoint {path}: one logit per image expected, got output {tuple(logits.shape)}")
            prob = torch.sigmoid(logits.float())
            total = prob if total is None else total + prob
        return total / len(self.networks)


class GatedInferer(Inferer):
    """``inferer`` (the segmentation one), then the gates' mean probability as channel 1 of its output.

    The segmentation network's own head counts as one gate (its channel 1, largest over the image: each sliding
    window judges its part), each of ``classifiers`` as one more. Without classifiers this is ``inferer`` itself.
    """

    def __init__(self, inferer: Inferer, classifiers: ImageClassifiers | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.inferer, self.classifiers, self.eps = inferer, classifiers, eps

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        out = self.inferer(inputs, network, *args, **kwargs)
        if self.classifiers is None or len(self.classifiers.networks) == 0:
            return out
        count = len(self.classifiers.networks)
        total = self.classifiers(inputs) * count
        if out.shape[1] == 2:
            total, count = total + torch.sigmoid(out[:, 1].float().flatten(1).amax(dim=1, keepdim=True)), count + 1
        return with_image_logit(out[:, :1], torch.logit(total / count, eps=self.eps))


def image_classifiers(checkpoints, device, memory_format) -> ImageClassifiers | None:
    """The classifiers of ``gate_checkpoints``, or None when there are none (the configs' ``gates``)."""
    if not checkpoints:
        return None
    return ImageClassifiers(checkpoints, device=device, memory_format=memory_format)


class ImageGated(MapTransform):
    """Split the gate off a ``(2, H, W)`` probability map and empty the mask when the image's probability is below
    ``threshold``; a ``(1, H, W)`` map is kept as it is.

    Sets ``image_prob`` (a float in [0, 1]: the gate's probability, or without a gate the mask's largest pixel
    probability) and ``image_gated`` (whether a gate gave it). ``threshold`` 0 keeps every mask.
    """

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"gate_threshold must lie in [0, 1], not {threshold}")
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = d[key]
            if prob.shape[0] not in (1, 2):
                image = d.get("image")
                source = image.meta.get("filename_or_obj", "?") if hasattr(image, "meta") else "?"
                raise ValueError(f"{source}: {key} holds {prob.shape[0]} channels, not a mask probability map and optionally the gate's")
            gated = prob.shape[0] == 2
            image_prob = float(prob[1].max() if gated else prob[0].max()) if prob[0].numel() else 0.0
            mask = prob[:1]
            if gated and image_prob < self.threshold:
                mask = mask * 0
            d[key], d[IMAGE_PROB_KEY], d[GATED_KEY] = mask, image_prob, gated
        return d
