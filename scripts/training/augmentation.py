"""Training augmentation in two halves: parameters drawn per image in the data loader, applied per batch on the device.

The loader workers only crop (``scripts.data.crop``) and draw each image's random parameters
(:class:`AugmentationParamsd`); the trainer's ``prepare_batch`` (``scripts.training.prepare_batch.AugmentOnDevice``)
applies them to the whole batch on the training device with :func:`augment_batch`: one ``grid_sample`` for
flip + affine + grid distortion, then contrast, intensity scale and shift, and noise. The textbook MONAI chain of
``Rand*`` transforms does the same work per image on the CPU, which cannot feed a GPU (``python -m
scripts.benchmark`` measures both; docs/README.md has the figures).

All randomness is drawn through MONAI's ``Randomizable`` interface inside the loader, so it follows
``set_determinism`` and :class:`scripts.data.sampling.SeededDataset` (one seed per image and epoch): the same seed
gives the same training batches whatever the number of workers, and a resumed run repeats them exactly.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Randomizable

__all__ = ["AugmentationParamsd", "augment_batch", "sampling_grid", "PARAMS_KEY"]

#: Where :class:`AugmentationParamsd` stores an image's parameters and ``AugmentOnDevice`` finds the batch's.
PARAMS_KEY = "augment"


class AugmentationParamsd(Randomizable):
    """Draw one image's augmentation parameters into ``data["augment"]`` (applied later by :func:`augment_batch`).

    The defaults are the bundle's augmentation; each part is applied with its own probability, as MONAI's
    ``Rand*`` transforms of the same names would apply it:

    * flip of spatial axis ``flip_axis`` (0: left-right in MONAI's orientation of a radiograph);
    * affine: rotation by ``U(-rotate_range, rotate_range)`` radians, scale ``1 + U(-s, s)`` per axis, translation
      ``U(-t, t)`` pixels per axis, about the crop's centre;
    * grid distortion: each axis cut into ``grid_cells`` cells whose widths are scaled by ``1 + U(*grid_limit)``
      and renormalised, a piecewise-linear warp as in ``RandGridDistortiond``;
    * contrast: ``((x - min) / range) ** gamma * range + min`` with ``gamma ~ U(*gamma)``;
    * intensity scale ``x * (1 + U(-f, f))`` and shift ``x + U(-o, o)``;
    * Gaussian noise of standard deviation ``U(0, noise_std)``.

    Output tensors: ``flip`` (2 bools: whether each spatial axis is flipped), ``matrix`` (2 x 2), ``translate`` (2), ``grid`` (2 x ``grid_cells + 1``
    node positions in ``[0, 1]``), ``gamma``, ``scale``, ``shift``, ``noise_std`` (float32) and ``noise_seed``
    (int64). Parameters that are not applied hold their identity value.
    """

    def __init__(
        self,
        flip_prob: float = 0.5,
        flip_axis: int = 0,
        affine_prob: float = 0.5,
        rotate_range: float = 0.17,
        scale_range: Sequence[float] = (0.1, 0.1),
        translate_range: Sequence[float] = (16.0, 16.0),
        grid_prob: float = 0.2,
        grid_cells: int = 5,
        grid_limit: Sequence[float] = (-0.1, 0.1),
        contrast_prob: float = 0.3,
        gamma: Sequence[float] = (0.7, 1.5),
        scale_intensity_prob: float = 0.3,
        scale_intensity: float = 0.15,
        shift_intensity_prob: float = 0.3,
        shift_intensity: float = 0.08,
        noise_prob: float = 0.2,
        noise_std: float = 0.02,
        key: str = PARAMS_KEY,
    ) -> None:
        if flip_axis not in (0, 1):
            raise ValueError(f"AugmentationParamsd: flip_axis must be 0 or 1 (a 2-D spatial axis), got {flip_axis}")
        if grid_cells < 1:
            raise ValueError(f"AugmentationParamsd: grid_cells must be >= 1, got {grid_cells}")
        if not -1.0 < grid_limit[0] <= grid_limit[1]:
            raise ValueError(f"AugmentationParamsd: grid_limit must be an interval above -1, got {tuple(grid_limit)}")
        self.flip_prob, self.flip_axis = flip_prob, flip_axis
        self.affine_prob, self.rotate_range = affine_prob, rotate_range
        self.scale_range, self.translate_range = tuple(scale_range), tuple(translate_range)
        self.grid_prob, self.grid_cells, self.grid_limit = grid_prob, grid_cells, tuple(grid_limit)
        self.contrast_prob, self.gamma = contrast_prob, tuple(gamma)
        self.scale_intensity_prob, self.scale_intensity = scale_intensity_prob, scale_intensity
        self.shift_intensity_prob, self.shift_intensity = shift_intensity_prob, shift_intensity
        self.noise_prob, self.noise_std = noise_prob, noise_std
        self.key = key

    def _chance(self, prob: float) -> bool:
        return bool(self.R.rand() < prob)

    def randomize(self, data=None) -> dict[str, torch.Tensor]:
        matrix, translate = np.eye(2), np.zeros(2)
        if self._chance(self.affine_prob):
            angle = self.R.uniform(-self.rotate_range, self.rotate_range)
            scale = 1.0 + np.array([self.R.uniform(-s, s) for s in self.scale_range])
            rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            matrix = rotation @ np.diag(scale)
            translate = np.array([self.R.uniform(-t, t) for t in self.translate_range])
        nodes = np.tile(np.linspace(0.0, 1.0, self.grid_cells + 1), (2, 1))
        if self._chance(self.grid_prob):
            widths = 1.0 + self.R.uniform(*self.grid_limit, size=(2, self.grid_cells))
            nodes[:, 1:] = np.cumsum(widths, axis=1) / widths.sum(axis=1, keepdims=True)
        flip = self._chance(self.flip_prob)
        gamma = self.R.uniform(*self.gamma) if self._chance(self.contrast_prob) else 1.0
        scale_i = 1.0 + self.R.uniform(-self.scale_intensity, self.scale_intensity) if self._chance(self.scale_intensity_prob) else 1.0
        shift_i = self.R.uniform(-self.shift_intensity, self.shift_intensity) if self._chance(self.shift_intensity_prob) else 0.0
        noise = self.R.uniform(0.0, self.noise_std) if self._chance(self.noise_prob) else 0.0
        return {
            "flip": torch.tensor([flip and self.flip_axis == 0, flip and self.flip_axis == 1]),
            "matrix": torch.as_tensor(matrix, dtype=torch.float32),
            "translate": torch.as_tensor(translate, dtype=torch.float32),
            "grid": torch.as_tensor(nodes, dtype=torch.float32),
            "gamma": torch.tensor(gamma, dtype=torch.float32),
            "scale": torch.tensor(scale_i, dtype=torch.float32),
            "shift": torch.tensor(shift_i, dtype=torch.float32),
            "noise_std": torch.tensor(noise, dtype=torch.float32),
            "noise_seed": torch.tensor(int(self.R.randint(2**31 - 1)), dtype=torch.int64),
        }

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        d[self.key] = self.randomize()
        return d


def _warp_axis(nodes: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel-centre coordinates of an axis of ``size`` pixels under the piecewise-linear warps ``nodes`` (B, K + 1),
    in ``[0, 1]``: (B, size)."""
    cells = nodes.shape[1] - 1
    u = (torch.arange(size, device=nodes.device, dtype=nodes.dtype) + 0.5) / size
    position = u * cells
    index = position.floor().clamp(0, cells - 1).long()
    frac = (position - index)[None]
    return nodes[:, index] * (1 - frac) + nodes[:, index + 1] * frac


def sampling_grid(params: Mapping[str, torch.Tensor], spatial: tuple[int, int]) -> torch.Tensor:
    """``grid_sample`` grid (B, H, W, 2) mapping each output pixel to its source: grid warp, then affine about the
    centre, then flip (the inverse order of the image operations flip -> affine -> distort)."""
    n0, n1 = spatial
    w0 = _warp_axis(params["grid"][:, 0], n0)[:, :, None] * n0  # (B, n0, 1), pixels
    w1 = _warp_axis(params["grid"][:, 1], n1)[:, None, :] * n1  # (B, 1, n1)
    p0, p1 = torch.broadcast_tensors(w0 - n0 / 2, w1 - n1 / 2)
    m, t = params["matrix"][:, :, :, None, None], params["translate"][:, :, None, None]
    q0 = m[:, 0, 0] * p0 + m[:, 0, 1] * p1 + n0 / 2 + t[:, 0]
    q1 = m[:, 1, 0] * p0 + m[:, 1, 1] * p1 + n1 / 2 + t[:, 1]
    flip = params["flip"].bool()[:, :, None, None]
    q0 = torch.where(flip[:, 0], n0 - q0, q0)
    q1 = torch.where(flip[:, 1], n1 - q1, q1)
    # grid_sample, align_corners=False: -1 and 1 are the outer edges; the last entry indexes the last axis.
    return torch.stack((2 * q1 / n1 - 1, 2 * q0 / n0 - 1), dim=-1)


def _active_parts(params: Mapping[str, torch.Tensor]) -> tuple[bool, bool, bool]:
    """Whether any image of the batch is moved (flip, affine, grid), re-contrasted, or given noise."""
    nodes = torch.as_tensor(np.linspace(0.0, 1.0, params["grid"].shape[-1]), dtype=torch.float32)  # as drawn
    nodes = nodes.to(params["grid"].device)
    identity = torch.eye(2, device=params["matrix"].device)
    spatial = bool(
        params["flip"].any()
        or (params["matrix"] != identity).any()
        or (params["translate"] != 0).any()
        or (params["grid"] != nodes).any()
    )
    return spatial, bool((params["gamma"] != 1).any()), bool((params["noise_std"] > 0).any())


def augment_batch(
    image: torch.Tensor,
    label: torch.Tensor | None,
    params: Mapping[str, torch.Tensor],
    noise_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply a batch of :class:`AugmentationParamsd` parameters to float ``(B, C, H, W)`` images (bilinear) and
    labels (nearest), on their device. Spatial parts are skipped when no image of the batch needs them, so an
    identity batch returns its input unchanged."""
    if image.ndim != 4:
        raise ValueError(f"augment_batch: expected (B, C, H, W) images, got shape {tuple(image.shape)}")
    spatial_parts, contrast_parts, noise_parts = _active_parts(params)  # where the parameters are: the CPU in training
    params = {k: v.to(image.device, non_blocking=True) for k, v in params.items() if k != "noise_seed"}
    if spatial_parts:
        grid = sampling_grid(params, tuple(image.shape[2:]))
        image = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        if label is not None:
            label = F.grid_sample(label, grid.to(label.dtype), mode="nearest", padding_mode="zeros", align_corners=False)
    b = (-1, 1, 1, 1)
    if contrast_parts:
        gamma = params["gamma"].view(b).to(image.dtype)
        low = image.amin(dim=(1, 2, 3), keepdim=True)
        span = image.amax(dim=(1, 2, 3), keepdim=True) - low
        contrasted = ((image - low) / (span + 1e-7)).clamp_min(0) ** gamma * span + low
        image = torch.where(gamma != 1, contrasted, image)
    image = image * params["scale"].view(b).to(image.dtype) + params["shift"].view(b).to(image.dtype)
    if noise_parts:
        std = params["noise_std"].view(b).to(image.dtype)
        generator = torch.Generator(device=image.device).manual_seed(noise_seed)
        image = image + torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype) * std
    return image, label
