"""Scores of pneumothorax segmentation, computed per image and reduced over a data set.

* ``competition_dice``: the SIIM-ACR score, the mean over images of 2|X∩Y| / (|X|+|Y|), where an image whose
  truth and prediction are both empty scores 1 and one where exactly one is empty scores 0.
* ``pixel_dice``: Dice of all pixels of all images pooled (dominated by the large pneumothoraces).
* ``sensitivity`` / ``specificity``: image level, "positive" = any foreground pixel.

:class:`ImageClassMetric` scores the image-level classifier (``configs/classifier.json``): its sensitivity and
specificity at a probability threshold, beside MONAI's ``ROCAUC``.

Each is a MONAI ``CumulativeIterationMetric`` (so distributed gathering and ``MetricsSaver`` details work),
wrapped for ignite by ``monai.handlers.IgniteMetricHandler`` in the configs.
"""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric

SCORES = ("competition_dice", "pixel_dice", "sensitivity", "specificity")

__all__ = ["SCORES", "ImageClassMetric", "PneumothoraxMetric", "competition_dice", "image_statistics"]


def image_statistics(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image ``[intersection, predicted pixels, true pixels]`` of binary batches ``(B, 1, ...)`` -> ``(B, 3)``."""
    if y_pred.shape != y.shape:
        raise ValueError(f"prediction shape {tuple(y_pred.shape)} differs from label shape {tuple(y.shape)}")
    pred = (y_pred > 0.5).flatten(1)
    truth = (y > 0.5).flatten(1)
    return torch.stack([(pred & truth).sum(1), pred.sum(1), truth.sum(1)], dim=1).double()


def competition_dice(stats: torch.Tensor) -> torch.Tensor:
    """Per-image competition Dice from :func:`image_statistics` rows."""
    intersection, predicted, true = stats.unbind(-1)
    both_empty = (predicted + true) == 0
    return torch.where(both_empty, torch.ones_like(intersection), 2 * intersection / (predicted + true).clamp(min=1))


class PneumothoraxMetric(CumulativeIterationMetric):
    """One of :data:`SCORES` over a data set.

    Per image it keeps ``[intersection, predicted, true]``; :meth:`aggregate` reduces them. :meth:`get_buffer`
    returns the per-image competition Dice ``(N, 1)``, which is what ``MetricsSaver`` writes as details.

    Args:
        score: one of :data:`SCORES`.
    """

    def __init__(self, score: str = "competition_dice") -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
        self.score = score

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError(f"{self.score} needs ground truth")
        return image_statistics(y_pred, y)

    def get_buffer(self):
        stats = self.image_statistics()
        return competition_dice(stats)[:, None] if stats is not None else None

    def image_statistics(self) -> torch.Tensor | None:
        """``(N, 3)`` rows of ``[intersection, predicted, true]`` of every image so far (all ranks)."""
        stats = super().get_buffer()
        return stats.reshape(-1, 3) if isinstance(stats, torch.Tensor) else None

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        stats = self.image_statistics()
        if stats is None or stats.numel() == 0:
            return torch.tensor(float("nan"))
        intersection, predicted, true = stats.unbind(-1)
        if self.score == "competition_dice":
            return competition_dice(stats).mean()
        if self.score == "pixel_dice":
            total = predicted.sum() + true.sum()
            return 2 * intersection.sum() / total if total > 0 else torch.tensor(1.0, dtype=stats.dtype)
        truly_positive, called_positive = true > 0, predicted > 0
        if self.score == "sensitivity":
            wanted, hits = truly_positive, called_positive & truly_positive
        else:
            wanted, hits = ~truly_positive, ~called_positive & ~truly_positive
        return hits.sum() / wanted.sum() if wanted.any() else torch.tensor(float("nan"))


class ImageClassMetric(CumulativeIterationMetric):
    """Sensitivity or specificity of image-level probabilities ``(B, 1)`` against labels ``(B, 1)``, calling an
    image positive when its probability is at least ``threshold`` (the gate's rule, ``gate_threshold``).

    Args:
        score: ``"sensitivity"`` or ``"specificity"``.
        threshold: the probability from which an image is called positive.
    """

    def __init__(self, score: str = "sensitivity", threshold: float = 0.5) -> None:
        super().__init__()
        if score not in ("sensitivity", "specificity"):
            raise ValueError(f"unknown image-level score {score!r}; expected sensitivity or specificity")
        self.score, self.threshold = score, float(threshold)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None or y_pred.shape != y.shape or y_pred.flatten(1).shape[1] != 1:
            raise ValueError(f"{self.score}: one probability and one label per image, got {tuple(y_pred.shape)}")
        return torch.cat([(y_pred >= self.threshold).flatten(1), (y > 0.5).flatten(1)], dim=1).double()

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        rows = self.get_buffer()
        if not isinstance(rows, torch.Tensor) or rows.numel() == 0:
            return torch.tensor(float("nan"))
        called, truth = rows.reshape(-1, 2).bool().unbind(-1)
        wanted = truth if self.score == "sensitivity" else ~truth
        hits = wanted & (called if self.score == "sensitivity" else ~called)
        return hits.sum() / wanted.sum() if wanted.any() else torch.tensor(float("nan"))
