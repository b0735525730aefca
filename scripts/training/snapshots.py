"""Snapshot ensembles of one training run: the end of each warm-restart cycle, or the run's best K epochs.

* :class:`WarmRestartsSchedule` is the run's learning-rate schedule (``lr_scheduler`` in ``train.json``): a linear
  warm-up, then ``cycles`` cosine cycles of equal length, each restarting at the peak rate and ending near zero
  (Loshchilov and Hutter's warm restarts, as Huang et al.'s snapshot ensembles use them). With one cycle it is
  MONAI's ``WarmupCosineSchedule``, the default.
* :class:`CycleSnapshots` (a trainer handler) saves the weights at the end of each cycle, where the rate is
  lowest: ``models/snapshots/cycle<k>.pt``.
* :class:`BestCheckpoints` (a validator handler) keeps the weights of the K best validated epochs:
  ``models/best/epoch<e>.pt``.

Each file is a plain ``state_dict`` with a record beside it naming its network, as ``models/model.pt`` is, and each
folder gets an ``ensemble.json``: the override that makes ``inference.json`` or ``evaluate.json`` run its
checkpoints as one ensemble, as the K-fold command's does.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch.optim.lr_scheduler import LambdaLR

from scripts.networks.definition import record_path
from scripts.training.checkpoints import save_model, write_ensemble_override
from scripts.utils.distributed import is_main_process
from scripts.utils.flags import switches

logger = logging.getLogger(__name__)

__all__ = ["BestCheckpoints", "CycleSnapshots", "WarmRestartsSchedule"]


class WarmRestartsSchedule(LambdaLR):
    """Linear warm-up over ``warmup_steps``, then ``cycles`` equal cosine cycles from the peak rate towards zero over
    the rest of ``t_total`` steps (stepped once per iteration); the warm-up belongs to the first cycle and must end
    before it does.

    Cycle ``k`` (0-based) covers steps ``[k * t_total / cycles, (k + 1) * t_total / cycles)``, so cycles end on epoch
    boundaries when ``max_epochs`` is a multiple of ``cycles``. Resuming restores the saved run's length and warm-up
    (as MONAI's schedule does); a saved run of another number of cycles is refused.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: float, t_total: int, cycles: int = 1, last_epoch: int = -1) -> None:
        # n_cycles, not MONAI's "cycles" (0.5 there: half a cosine), which a checkpoint of its schedule holds
        self.t_total, self.n_cycles = int(t_total), int(cycles)
        if self.n_cycles < 1 or self.t_total < self.n_cycles:
            raise ValueError(f"snapshot_cycles {cycles}: need at least 1, and no more than the run's {t_total} steps")
        self.warmup_steps = min(max(warmup_steps, 0), self.t_total)
        if self.n_cycles > 1 and self.warmup_steps >= self.t_total / self.n_cycles:
            raise ValueError(
                f"snapshot_cycles {self.n_cycles}: a cycle of {self.t_total / self.n_cycles:g} steps is no longer than the "
                f"warm-up ({self.warmup_steps:g} steps, warmup_epochs); use fewer cycles or a shorter warm-up"
            )
        super().__init__(optimizer, self.lr_lambda, last_epoch)

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("n_cycles", 1)  # a checkpoint of MONAI's WarmupCosineSchedule: one cycle
        if saved != self.n_cycles:
            raise ValueError(f"the training checkpoint's schedule has {saved} cycles: resume with --snapshot_cycles {saved}")
        super().load_state_dict(state_dict)

    def lr_lambda(self, step: int) -> float:
        length = self.t_total / self.n_cycles
        cycle = min(int(step // length), self.n_cycles - 1)
        start, end = cycle * length, (cycle + 1) * length
        if cycle == 0:
            if step < self.warmup_steps:
                return float(step) / float(max(1.0, self.warmup_steps))
            start = self.warmup_steps
        progress = (step - start) / max(1.0, end - start)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _clear(folder: Path, stem: str) -> None:
    """Remove an earlier run's ``<stem>*.pt`` / ``.json`` files and the ensemble files from ``folder``, saying so."""
    if not folder.is_dir():
        return
    for path in sorted([*folder.glob(f"{stem}*.pt"), *folder.glob(f"{stem}*.json"), folder / ENSEMBLE_FILE, folder / THRESHOLDS_FILE]):
        if path.is_file():
            path.unlink()
            logger.info("removed %s of an earlier run", path)


ENSEMBLE_FILE = "ensemble.json"
THRESHOLDS_FILE = "ensemble_thresholds.json"


class CycleSnapshots:
    """Save the network at the end of each of the schedule's ``cycles`` (none with one cycle: that is the run's
    final model), into ``folder/cycle<k>.pt`` with its record, and keep ``folder/ensemble.json`` naming them.

    Args:
        network: the trained network.
        folder: where the snapshots go (``models/snapshots``).
        cycles: the schedule's cycles (``snapshot_cycles``); ``max_epochs`` must be a multiple of it.
        max_epochs: the run's length, as the schedule has it; the trainer's must be the same.
        ckpt_dir: the bundle's ``ckpt_dir``; ``ensemble.json`` names the snapshots relative to it (``$@ckpt_dir``).
        resume: the run resumes; one that does not removes an earlier run's snapshots and ensemble files from
            ``folder`` when it starts (with one cycle too), so none is taken for this run's.
        image_size: the whole-image size the network trains at, recorded.
    """

    @switches(resume="resume")
    def __init__(self, network: torch.nn.Module, folder: str | os.PathLike, cycles: int, max_epochs: int,
                 ckpt_dir: str | os.PathLike, resume: bool = False, image_size=None) -> None:  # fmt: skip
        self.network, self.folder, self.ckpt_dir = network, Path(folder), Path(ckpt_dir)
        self.cycles, self.max_epochs, self.resume, self.image_size = int(cycles), int(max_epochs), resume, image_size
        if self.cycles > 1 and self.max_epochs % self.cycles:
            raise ValueError(f"snapshot_cycles {self.cycles}: max_epochs ({max_epochs}) must be a multiple of it, so each cycle ends with an epoch")
        self.cycle_epochs = self.max_epochs // max(1, self.cycles)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._plan)
        if self.cycles > 1:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.cycle_epochs), self)

    def _plan(self, engine: Engine) -> None:
        if self.cycles > 1 and engine.state.max_epochs != self.max_epochs:
            raise ValueError(
                f"snapshot_cycles {self.cycles}: the trainer runs {engine.state.max_epochs} epochs, the schedule's cycles "
                f"are of max_epochs {self.max_epochs}; set max_epochs, not the trainer's alone"
            )
        if not self.resume and is_main_process():
            _clear(self.folder, "cycle")

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        cycle = engine.state.epoch // self.cycle_epochs
        path = self.folder / f"cycle{cycle}.pt"
        record = {"snapshot": {"cycle": cycle, "of": self.cycles}, "epoch": engine.state.epoch}
        save_model(self.network, path, record, image_size=self.image_size)
        saved = [self.folder / f"cycle{k}.pt" for k in range(1, cycle + 1) if (self.folder / f"cycle{k}.pt").is_file()]
        write_ensemble_override(self.folder / ENSEMBLE_FILE, saved, self.ckpt_dir)
        logger.info("cycle %d of %d ended at epoch %d: saved %s", cycle, self.cycles, engine.state.epoch, path)


class BestCheckpoints:
    """Keep the weights of the ``k`` best validated epochs (higher key metric is better) in ``folder/epoch<e>.pt``
    with their records, removing an epoch's files once ``k`` better ones are kept, and keep ``folder/ensemble.json``
    naming them, best first. Off with ``k`` 1 (``models/model.pt`` is the best one).

    A run that is not resumed starts the folder afresh at its first validation (an earlier run's epochs and
    ensemble files there are removed, with ``k`` 1 too; not at construction, where a config that only mentions this
    handler would change files, nor at the validator's STARTED, which is every validation); a resumed one goes on
    from the epochs kept there.
    """

    @switches(resume="resume")
    def __init__(self, network: torch.nn.Module, folder: str | os.PathLike, k: int, ckpt_dir: str | os.PathLike,
                 resume: bool = False, image_size=None) -> None:  # fmt: skip
        self.network, self.folder, self.ckpt_dir = network, Path(folder), Path(ckpt_dir)
        self.k, self.resume, self.image_size = int(k), resume, image_size
        if self.k < 1:
            raise ValueError(f"keep_best {k}: must be >= 1 (1: only models/model.pt)")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _kept(self) -> list[tuple[float, int]]:
        kept = []
        for record in self.folder.glob("epoch*.json"):
            saved = json.loads(record.read_text(encoding="utf-8"))
            if record.with_suffix(".pt").is_file():
                kept.append((float(saved["score"]), int(saved["epoch"])))
        return sorted(kept, key=lambda item: (-item[0], item[1]))

    def _remove(self, epoch: int) -> None:
        for path in (self.folder / f"epoch{epoch}.pt", record_path(self.folder / f"epoch{epoch}.pt")):
            path.unlink(missing_ok=True)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        if not self.resume:
            _clear(self.folder, "epoch")
            self.resume = True
        name = getattr(engine.state, "key_metric_name", None)
        score = float(engine.state.metrics.get(name, float("nan"))) if name else float("nan")
        if self.k < 2 or math.isnan(score):
            return
        epoch = engine.state.epoch  # the trainer's: MONAI's ValidationHandler runs the validator at the global epoch
        before = self._kept()
        kept = [item for item in before if item[1] != epoch]  # an epoch validated again replaces itself
        if len(kept) < self.k or score > kept[self.k - 1][0]:
            path = self.folder / f"epoch{epoch}.pt"
            record = {"metric": name, "score": score, "epoch": epoch}
            save_model(self.network, path, record, image_size=self.image_size)
            kept.append((score, epoch))
        kept.sort(key=lambda item: (-item[0], item[1]))
        for _, dropped in kept[self.k :]:  # also what a lower keep_best on resuming leaves over
            self._remove(dropped)
        if kept[: self.k] != before or not (self.folder / ENSEMBLE_FILE).is_file():
            best = [self.folder / f"epoch{e}.pt" for _, e in kept[: self.k]]
            write_ensemble_override(self.folder / ENSEMBLE_FILE, best, self.ckpt_dir)
