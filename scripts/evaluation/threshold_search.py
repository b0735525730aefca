"""Grid search of the triplet thresholds (``scripts.evaluation.triplet``) on a validation set; the grid is
``triplet_grid`` in ``configs/evaluate.json``.

One pass over the data keeps, per image, only the numbers every grid point needs: the count of pixels above each
``top``, and the intersection with the truth and the predicted area above each ``bottom``. Any (top, min_area,
bottom) is then scored exactly, without keeping a single probability map.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

from scripts.evaluation.triplet import REFERENCE_PIXELS, Triplet, save_triplet
from scripts.utils.distributed import is_main_process

logger = logging.getLogger(__name__)

__all__ = ["TripletSearchMetric", "TripletSearchHandler"]


class TripletSearchMetric(CumulativeIterationMetric):
    """Collects per-image statistics of probability maps and finds the triple with the best competition Dice.

    Called like other MONAI metrics with ``(y_pred=probabilities, y=labels)``, batches ``(B, 1, ...)``.
    :meth:`aggregate` returns the best score; :meth:`table` every grid point's score; :meth:`best` the triple.
    """

    def __init__(self, tops: Sequence[float], min_areas: Sequence[float], bottoms: Sequence[float]) -> None:
        super().__init__()
        self.tops, self.min_areas, self.bottoms = tuple(tops), tuple(min_areas), tuple(bottoms)
        for name, values in (("tops", self.tops), ("min_areas", self.min_areas), ("bottoms", self.bottoms)):
            if not values:
                raise ValueError(f"TripletSearchMetric: {name} must not be empty")

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None or y_pred.shape != y.shape:
            raise ValueError("TripletSearchMetric needs probabilities and labels of the same shape")
        prob = y_pred.flatten(1).float()
        truth = (y > 0.5).flatten(1)
        scale = torch.full((prob.shape[0],), prob.shape[1] / REFERENCE_PIXELS, device=prob.device)
        columns = [scale, truth.sum(1)]
        columns += [(prob > top).sum(1) for top in self.tops]
        for bottom in self.bottoms:
            above = prob > bottom
            columns += [(above & truth).sum(1), above.sum(1)]
        return torch.stack([c.double() for c in columns], dim=1)

    def table(self) -> list[tuple[Triplet, float]]:
        """``(triple, competition Dice)`` for every grid point, best first."""
        stats = self.get_buffer()
        if not isinstance(stats, torch.Tensor) or stats.numel() == 0:
            return []
        stats = stats.reshape(-1, 2 + len(self.tops) + 2 * len(self.bottoms))
        scale, true = stats[:, 0], stats[:, 1]
        rows = []
        for (t, top), min_area, (b, bottom) in itertools.product(
            enumerate(self.tops), self.min_areas, enumerate(self.bottoms)
        ):
            confident = stats[:, 2 + t]
            intersection = stats[:, 2 + len(self.tops) + 2 * b]
            predicted = stats[:, 3 + len(self.tops) + 2 * b]
            predicted = torch.where(confident < min_area * scale, torch.zeros_like(predicted), predicted)
            intersection = torch.where(predicted == 0, torch.zeros_like(intersection), intersection)
            total = predicted + true
            dice = torch.where(total == 0, torch.ones_like(total), 2 * intersection / total.clamp(min=1))
            rows.append((Triplet(top=top, min_area=min_area, bottom=bottom), float(dice.mean())))
        return sorted(rows, key=lambda row: -row[1])

    def best(self) -> tuple[Triplet, float]:
        rows = self.table()
        if not rows:
            raise ValueError("TripletSearchMetric: no images seen")
        return rows[0]

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        rows = self.table()
        return torch.tensor(rows[0][1] if rows else float("nan"))


class TripletSearchHandler(IgniteMetricHandler):
    """Runs :class:`TripletSearchMetric` in an evaluator and saves the best triple as JSON when the run completes.

    Args:
        output_path: where to save the triple (inference reads it from there); written atomically by rank 0.
        output_transform: as for other ignite metric handlers, giving ``(probabilities, labels)``.
        tops, min_areas, bottoms: the grid.
    """

    def __init__(
        self,
        output_path: str | os.PathLike,
        tops: Sequence[float],
        min_areas: Sequence[float],
        bottoms: Sequence[float],
        output_transform=lambda x: x,
    ) -> None:
        self.output_path = output_path
        self.search = TripletSearchMetric(tops=tops, min_areas=min_areas, bottoms=bottoms)
        super().__init__(metric_fn=self.search, output_transform=output_transform, save_details=False)

    def compute(self):
        rows = self.search.table()
        if rows and is_main_process():
            triplet, score = rows[0]
            save_triplet(self.output_path, triplet, competition_dice=score, grid=[[*vars(t).values(), s] for t, s in rows])
            logger.info("best triplet %s: competition Dice %.4f -> %s", triplet, score, self.output_path)
        return super().compute()
