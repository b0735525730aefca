"""Post-processing of pneumothorax probability maps: the SIIM winners' triplet thresholding.

The bundle's triple is written once, as ``triplet`` in ``configs/common.json``; evaluation saves a tuned one next to
the weights (``thresholds.json``), which inference prefers.

With probability map ``p``: if fewer than ``min_area`` pixels have ``p > top``, the image is called empty;
otherwise the mask is ``p > bottom``. Optionally connected components smaller than ``min_component`` pixels are
dropped. Areas are given in pixels of a 1024 x 1024 image (the challenge's size) and scaled by the image's area,
so the same triple means the same thing on a 2500 x 2000 radiograph or a 512 x 512 one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from scipy import ndimage

from scripts.utils.files import write_json

REFERENCE_PIXELS = 1024 * 1024

__all__ = ["Triplet", "TripletThreshold", "TripletThresholdd", "load_gate", "load_triplet", "save_triplet", "tuned_triplet"]


@dataclass(frozen=True)
class Triplet:
    """(top, min_area, bottom) of triplet thresholding, areas at 1024 x 1024; min_component likewise (0: off)."""

    top: float
    min_area: float
    bottom: float
    min_component: float = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.bottom <= 1.0 or not 0.0 <= self.top <= 1.0:
            raise ValueError(f"triplet thresholds must lie in [0, 1], got top={self.top}, bottom={self.bottom}")
        if self.min_area < 0 or self.min_component < 0:
            raise ValueError(f"triplet areas must be >= 0, got min_area={self.min_area}, min_component={self.min_component}")


class TripletThreshold(Transform):
    """Probability map (any leading channel dims, spatial dims last two) -> binary mask of the same shape (float).

    Args:
        top, min_area, bottom, min_component: see :class:`Triplet`.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, top: float, min_area: float, bottom: float, min_component: float = 0) -> None:
        self.triplet = Triplet(top=top, min_area=min_area, bottom=bottom, min_component=min_component)

    def __call__(self, prob: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        t = self.triplet
        scale = float(prob.shape[-1] * prob.shape[-2]) / REFERENCE_PIXELS
        confident = int((prob > t.top).sum())
        if confident < t.min_area * scale:
            return prob * 0
        mask = prob > t.bottom
        if t.min_component > 0:
            mask = _drop_small_components(mask, t.min_component * scale)
        return mask.to(prob.dtype) if isinstance(prob, torch.Tensor) else mask.astype(prob.dtype)


class TripletThresholdd(MapTransform):
    """Dictionary wrapper of :class:`TripletThreshold`."""

    backend = TripletThreshold.backend

    def __init__(
        self,
        keys: KeysCollection,
        top: float,
        min_area: float,
        bottom: float,
        min_component: float = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = TripletThreshold(top=top, min_area=min_area, bottom=bottom, min_component=min_component)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.threshold(d[key])
        return d


def save_triplet(path: str | os.PathLike, triplet: Triplet, **extra) -> Path:
    """Write a triple (and any extra facts, e.g. the score it reached) as JSON, atomically."""
    write_json(path, {**asdict(triplet), **extra})
    return Path(path)


def load_triplet(path: str | os.PathLike, default: Mapping) -> dict:
    """The triple saved by evaluation at ``path`` as keyword arguments, or ``default`` (the config's) if no file is
    there."""
    path = Path(path)
    if not path.is_file():
        return asdict(Triplet(**default))
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return asdict(Triplet(**{key: saved[key] for key in ("top", "min_area", "bottom", "min_component") if key in saved}))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a valid thresholds file: {error}") from error


def tuned_triplet(path: str | os.PathLike) -> dict:
    """The triple evaluation tuned and saved at ``path``; an error naming the file when there is none (a model
    scored on a held-out set brings the thresholds of its own validation fold, never the config's defaults)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no tuned thresholds; evaluate the model on its own fold first (evaluate.json)")
    return load_triplet(path, default={})


def load_gate(path: str | os.PathLike, default: float) -> float:
    """The image gate's threshold saved by evaluation at ``path`` (``gate``, 0 for no gate), or ``default`` (the
    config's ``gate_threshold``) if no file is there or it predates the gate."""
    path = Path(path)
    if not path.is_file():
        return float(default)
    try:
        gate = float(json.loads(path.read_text(encoding="utf-8")).get("gate", default))
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a valid thresholds file: {error}") from error
    if not 0.0 <= gate <= 1.0:
        raise ValueError(f"{path}: the gate threshold {gate} is not in [0, 1]")
    return gate


def _drop_small_components(mask, min_pixels: float):
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    out = np.zeros_like(array, dtype=bool)
    for index in np.ndindex(array.shape[:-2]):
        labels, count = ndimage.label(array[index])
        if count:
            sizes = np.bincount(labels.ravel())
            keep = sizes >= min_pixels
            keep[0] = False
            out[index] = keep[labels]
    return torch.from_numpy(out).to(mask.device) if isinstance(mask, torch.Tensor) else out
