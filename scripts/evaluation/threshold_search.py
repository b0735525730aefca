"""Grid search of the triplet thresholds (``scripts.evaluation.triplet``), jointly with the image gate's
threshold (``scripts.inference.gating``) when the probabilities carry a gate, on a validation set; the grid is
``triplet_grid`` in ``configs/evaluate.json``.

One pass over the data keeps, per image, only the numbers every grid point needs: the count of pixels above each
``top``, the intersection with the truth and the predicted area above each ``bottom``, and the gate's probability.
Any (top, min_area, bottom, gate) is then scored exactly, without keeping a single probability map. Gate 0 is
"no gate", so the best score without the gate comes from the same search.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

from scripts.evaluation.triplet import REFERENCE_PIXELS, Triplet, save_triplet
from scripts.utils.distributed import is_main_process

logger = logging.getLogger(__name__)

__all__ = ["SearchRow", "TripletSearchMetric", "TripletSearchHandler"]

#: The gate thresholds searched when none are given: 0 (no gate) and 0.1 to 0.9.
DEFAULT_GATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class SearchRow(NamedTuple):
    """One grid point: the triple, the gate threshold (0: no gate) and the competition Dice they reach."""

    triplet: Triplet
    gate: float
    score: float


class TripletSearchMetric(CumulativeIterationMetric):
    """Collects per-image statistics of probability maps and finds the triple (and gate threshold) with the best
    competition Dice.

    Called like other MONAI metrics with ``(y_pred=probabilities, y=labels)``, batches ``(B, 1, ...)``, or
    ``(B, 2, ...)`` with the image gate's probability as channel 1 (``scripts.inference.gating``: the mask is
    emptied where the gate's largest value is below the gate threshold). :meth:`aggregate` returns the best score;
    :meth:`table` every grid point's; :meth:`best` the best row, and ``best(gate=False)`` the best without a gate.
    """

    def __init__(
        self, tops: Sequence[float], min_areas: Sequence[float], bottoms: Sequence[float], gates: Sequence[float] = DEFAULT_GATES
    ) -> None:
        super().__init__()
        self.tops, self.min_areas, self.bottoms = tuple(tops), tuple(min_areas), tuple(bottoms)
        self.gates = tuple(sorted({0.0, *(float(gate) for gate in gates)}))
        for name, values in (("tops", self.tops), ("min_areas", self.min_areas), ("bottoms", self.bottoms)):
            if not values:
                raise ValueError(f"TripletSearchMetric: {name} must not be empty")
        if not all(0.0 <= gate <= 1.0 for gate in self.gates):
            raise ValueError(f"TripletSearchMetric: gate thresholds lie in [0, 1], got {gates}")
        self.gated = False

    def reset(self) -> None:
        super().reset()
        self.gated = False

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y_pred.ndim >= 2 and y_pred.shape[1] == 2:  # channel 1: the image gate's probability
            self.gated = True
            gate = y_pred[:, 1].flatten(1).amax(dim=1).double()
            y_pred = y_pred[:, :1]
        else:
            gate = torch.ones(y_pred.shape[0], dtype=torch.float64, device=y_pred.device)
        if y is None or y_pred.shape != y.shape:
            raise ValueError("TripletSearchMetric needs probabilities (and optionally the gate's) and labels of one shape")
        prob = y_pred.flatten(1).float()
        truth = (y > 0.5).flatten(1)
        scale = torch.full((prob.shape[0],), prob.shape[1] / REFERENCE_PIXELS, device=prob.device)
        columns = [gate, scale, truth.sum(1)]
        columns += [(prob > top).sum(1) for top in self.tops]
        for bottom in self.bottoms:
            above = prob > bottom
            columns += [(above & truth).sum(1), above.sum(1)]
        return torch.stack([c.double() for c in columns], dim=1)

    def table(self) -> list[SearchRow]:
        """Every grid point's row, best first (the gate thresholds only when the probabilities carried a gate)."""
        stats = self.get_buffer()
        if not isinstance(stats, torch.Tensor) or stats.numel() == 0:
            return []
        stats = stats.reshape(-1, 3 + len(self.tops) + 2 * len(self.bottoms))
        gate, scale, true = stats[:, 0], stats[:, 1], stats[:, 2]
        rows = []
        for (t, top), min_area, (b, bottom), threshold in itertools.product(
            enumerate(self.tops), self.min_areas, enumerate(self.bottoms), self.gates if self.gated else (0.0,)
        ):
            confident = stats[:, 3 + t]
            intersection = stats[:, 3 + len(self.tops) + 2 * b]
            predicted = stats[:, 4 + len(self.tops) + 2 * b]
            empty = (confident < min_area * scale) | (gate < threshold)
            predicted = torch.where(empty, torch.zeros_like(predicted), predicted)
            intersection = torch.where(predicted == 0, torch.zeros_like(intersection), intersection)
            total = predicted + true
            dice = torch.where(total == 0, torch.ones_like(total), 2 * intersection / total.clamp(min=1))
            rows.append(SearchRow(Triplet(top=top, min_area=min_area, bottom=bottom), threshold, float(dice.mean())))
        # equal scores (to rounding): the lower gate threshold first, i.e. no gate unless it helps
        return sorted(rows, key=lambda row: (-round(row.score, 9), row.gate))

    def best(self, gate: bool = True) -> SearchRow:
        """The best row; with ``gate`` False the best with the gate off (threshold 0)."""
        rows = [row for row in self.table() if gate or row.gate == 0.0]
        if not rows:
            raise ValueError("TripletSearchMetric: no images seen")
        return rows[0]

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        rows = self.table()
        return torch.tensor(rows[0].score if rows else float("nan"))


class TripletSearchHandler(IgniteMetricHandler):
    """Runs :class:`TripletSearchMetric` in an evaluator and saves the best triple as JSON when the run completes.

    Args:
        output_path: where to save the triple (inference reads it from there); written atomically by rank 0.
        output_transform: as for other ignite metric handlers, giving ``(probabilities, labels)``.
        tops, min_areas, bottoms, gates: the grid.

    The file holds the best triple, ``competition_dice`` and every grid point as ``[top, min_area, bottom,
    min_component, gate, score]``; when the probabilities carried a gate, also its ``gate`` threshold (0: better
    without) and the best ``competition_dice_without_gate``.
    """

    def __init__(
        self,
        output_path: str | os.PathLike,
        tops: Sequence[float],
        min_areas: Sequence[float],
        bottoms: Sequence[float],
        gates: Sequence[float] = DEFAULT_GATES,
        output_transform=lambda x: x,
    ) -> None:
        self.output_path = output_path
        self.search = TripletSearchMetric(tops=tops, min_areas=min_areas, bottoms=bottoms, gates=gates)
        super().__init__(metric_fn=self.search, output_transform=output_transform, save_details=False)

    def compute(self):
        rows = self.search.table()
        if rows and is_main_process():
            best, ungated = self.search.best(), self.search.best(gate=False)
            grid = [[*vars(row.triplet).values(), row.gate, row.score] for row in rows]
            # a gate threshold only where there was a gate to tune: inference then keeps its own gate_threshold
            gated = {"gate": best.gate, "competition_dice_without_gate": ungated.score} if self.search.gated else {}
            save_triplet(self.output_path, best.triplet, competition_dice=best.score, **gated, grid=grid)
            logger.info(
                "best triplet %s, gate %s: competition Dice %.4f (%.4f without the gate) -> %s",
                best.triplet, best.gate, best.score, ungated.score, self.output_path,
            )  # fmt: skip
        return super().compute()
