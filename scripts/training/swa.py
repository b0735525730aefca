"""Stochastic weight averaging (Izmailov et al. 2018) as an ignite handler of the trainer.

For the last ``epochs`` epochs of a run, :class:`StochasticWeightAveraging` keeps PyTorch's
``torch.optim.swa_utils.AveragedModel`` of the network (one snapshot at the end of each of those epochs) and drives
the learning rate with ``SWALR``: from where the run's own schedule had brought it, annealed over
``anneal_epochs`` to ``lr`` and held there. When training completes it recomputes the averaged network's
batch-norm statistics on training batches (the averaged weights never saw any: ``update_bn`` takes plain image
batches, MONAI's engines give dictionaries, so the trainer's own ``prepare_batch`` turns one into the other) and
writes the averaged weights as a plain ``state_dict`` beside the best model (``models/model_swa.pt``), with a
record that names its network (``models/model_swa.json``), so that evaluation and inference take it like any
checkpoint (``--checkpoints "['models/model_swa.pt']"``).

Its state (the average so far and SWALR's) is part of the training checkpoint (it joins ``TrainingCheckpoint``
through ``keep_with_run`` when attached), so a killed run resumes to the same averaged weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from scripts.networks.definition import record_path
from scripts.training.checkpoints import keep_with_run, save_model
from scripts.utils.distributed import is_main_process, unwrap
from scripts.utils.flags import switches

logger = logging.getLogger(__name__)

__all__ = ["StochasticWeightAveraging"]


class StochasticWeightAveraging:
    """Average the network's weights over the last ``epochs`` epochs of training (none: ``epochs`` 0).

    Args:
        network: the trained network (wrappers are removed).
        optimizer: its optimizer, whose learning rate SWALR sets during those epochs.
        path: where the averaged weights go (``models/model_swa.pt``); their record goes beside it.
        epochs: how many final epochs of the trainer's ``max_epochs`` are averaged (one snapshot at the end of
            each); 0 turns SWA off.
        lr: the learning rate SWALR takes the run to (``swa_lr``) and holds.
        anneal_epochs: epochs over which it gets there (0: at once); ``anneal_strategy`` ``"cos"`` or ``"linear"``.
        bn_batches: training batches for the batch-norm statistics (null: one epoch of the training loader).
        warmup_epochs: the run's warm-up, which the averaged epochs must not overlap.
        schedule_cycles: the run's warm-restart cycles (``snapshot_cycles``); SWA, which sets the rate of the last
            epochs itself, is refused with more than one.
        resume: the run resumes (its average comes back with the training checkpoint); a run that does not
            removes an earlier run's averaged weights at ``path`` when it starts, so they are never taken for its own.
        image_size: the whole-image size the network trains at (null: crops), recorded like the best model's.
    """

    @switches(resume="resume")
    def __init__(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        path: str | os.PathLike,
        epochs: int,
        lr: float,
        anneal_epochs: int = 1,
        anneal_strategy: str = "cos",
        bn_batches: int | None = None,
        warmup_epochs: int = 0,
        schedule_cycles: int = 1,
        resume: bool = False,
        image_size=None,
    ) -> None:
        epochs, anneal_epochs = int(epochs), int(anneal_epochs)
        if epochs < 0:
            raise ValueError(f"swa_epochs {epochs}: must be >= 0 (0: no SWA)")
        if anneal_epochs < 0 or anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"swa_anneal_epochs {anneal_epochs} / strategy {anneal_strategy!r}: need >= 0 and 'cos' or 'linear'")
        if epochs and not float(lr) > 0:
            raise ValueError(f"swa_lr {lr}: must be > 0")
        if bn_batches is not None and int(bn_batches) < 1:
            raise ValueError(f"swa_bn_batches {bn_batches}: must be >= 1, or null for one epoch")
        if epochs and int(schedule_cycles) > 1:
            raise ValueError(
                f"swa_epochs {epochs} with snapshot_cycles {schedule_cycles}: both set the rate of the last epochs; choose one"
            )
        self.network, self.optimizer, self.path = network, optimizer, Path(path)
        self.epochs, self.warmup_epochs, self.resume = epochs, int(warmup_epochs), resume
        self.lr, self.anneal_epochs, self.anneal_strategy = float(lr), anneal_epochs, anneal_strategy
        self.bn_batches = None if bn_batches is None else int(bn_batches)
        self.image_size = image_size
        self.first_epoch: int | None = None  # max_epochs - epochs + 1, known when the trainer starts
        self.averaged: AveragedModel | None = None
        self.scheduler: SWALR | None = None
        self.averaged_from: int | None = None

    @property
    def enabled(self) -> bool:
        return self.epochs > 0

    def attach(self, engine: Engine) -> None:
        keep_with_run(engine, "swa", self)  # off too: its (empty) state says so, and a stale one is noticed
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._plan)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_STARTED, self._hold_lr)
        # after the run's own scheduler has stepped (it comes first in train#handlers): what is logged is what is used
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._hold_lr)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._snapshot)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def _settings(self) -> dict:
        return {"first_epoch": self.first_epoch, "lr": self.lr, "anneal_epochs": self.anneal_epochs, "anneal_strategy": self.anneal_strategy}

    def _plan(self, engine: Engine) -> None:
        """When the trainer starts: the averaged epochs from its own ``max_epochs`` (which MONAI Label, for one,
        sets on the trainer alone), and no earlier run's averaged weights left to be taken for this run's."""
        max_epochs = int(engine.state.max_epochs)
        if self.epochs > max_epochs - self.warmup_epochs:
            raise ValueError(
                f"swa_epochs {self.epochs}: more than the {max_epochs - self.warmup_epochs} epochs after the warm-up "
                f"(max_epochs {max_epochs}, warmup_epochs {self.warmup_epochs})"
            )
        self.first_epoch = max_epochs - self.epochs + 1
        if not self.resume and is_main_process():
            for stale in (self.path, record_path(self.path)):
                if stale.is_file():
                    stale.unlink()
                    logger.info("SWA: removed %s of an earlier run", stale)

    def _averaging(self, engine: Engine) -> bool:
        return self.first_epoch is not None and engine.state.epoch >= self.first_epoch

    def _build(self, epoch: int) -> None:
        network = unwrap(self.network)
        self.averaged = AveragedModel(network, device=next(network.parameters()).device)
        # SWALR's first step keeps each group's learning rate where the run's schedule left it
        self.scheduler = SWALR(self.optimizer, swa_lr=self.lr, anneal_epochs=self.anneal_epochs, anneal_strategy=self.anneal_strategy)
        self.averaged_from = epoch

    def _start(self, engine: Engine) -> None:
        if self._averaging(engine) and self.scheduler is None:
            self._build(engine.state.epoch)
            logger.info(
                "SWA: epochs %d-%d are averaged, the learning rate taken from %g to %g",
                engine.state.epoch, engine.state.max_epochs, self.optimizer.param_groups[0]["lr"], self.lr,
            )  # fmt: skip

    def _hold_lr(self, _engine: Engine | None = None) -> None:
        """The run's own scheduler keeps stepping after every iteration; during SWA, SWALR's rate is the one used."""
        if self.scheduler is not None:
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr

    def _snapshot(self, engine: Engine) -> None:
        if self.averaged is None or not self._averaging(engine):
            return
        self.averaged.update_parameters(unwrap(self.network))
        self._hold_lr()  # SWALR anneals from its own last rate, not from whatever the run's scheduler set
        self.scheduler.step()
        self._hold_lr()

    @property
    def snapshots(self) -> int:
        return 0 if self.averaged is None else int(self.averaged.n_averaged)

    def finish(self, engine: Engine) -> None:
        """Recompute the averaged network's batch-norm statistics and write it (rank 0)."""
        if not is_main_process():
            return
        if not self.snapshots:
            logger.warning(
                "SWA: nothing averaged (training ended after epoch %d, before SWA's first epoch %s); %s not written",
                engine.state.epoch, self.first_epoch, self.path,
            )  # fmt: skip
            return
        device = next(self.averaged.parameters()).device
        # in the precision training ran in, as MONAI's trainer does (autocast on CUDA only)
        amp = getattr(engine, "amp", False) and device.type == "cuda"
        precision = torch.autocast("cuda", **getattr(engine, "amp_kwargs", {})) if amp else contextlib.nullcontext()
        with torch.no_grad(), precision:
            update_bn(self._bn_images(engine), self.averaged)
        record = {"swa": {"first_epoch": self.averaged_from, "last_epoch": engine.state.epoch, "snapshots": self.snapshots}}
        save_model(self.network, self.path, record, image_size=self.image_size, weights_of=self.averaged.module)
        logger.info("SWA: the mean of %d snapshots (epochs %d-%d) saved as %s", self.snapshots, self.averaged_from, engine.state.epoch, self.path)

    def _bn_images(self, engine: Engine) -> Iterator[torch.Tensor]:
        """Image batches for ``update_bn``: the trainer's loader through its own ``prepare_batch`` (dictionaries in,
        ``(image, label)`` on the device out), so the statistics come from what training fed the network."""
        loader: Iterable = engine.data_loader
        batches = loader if self.bn_batches is None else islice(_repeat(loader), self.bn_batches)
        for batch in batches:
            image, *_ = engine.prepare_batch(batch, engine.state.device, engine.non_blocking, **getattr(engine, "to_kwargs", {}))
            yield image

    def state_dict(self) -> dict:
        if self.averaged is None:
            return {}
        return {"averaged": self.averaged.state_dict(), "scheduler": self.scheduler.state_dict(),
                "settings": self._settings(), "averaged_from": self.averaged_from}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if not self.enabled:
            logger.warning("SWA: the training checkpoint holds an average of epochs from %s on; swa_epochs 0 leaves it unused", state.get("averaged_from"))
            return
        saved = state.get("settings", {})
        if saved != self._settings():
            raise ValueError(
                f"SWA: the training checkpoint averaged with {saved}, this run would with {self._settings()}: "
                "resume with the run's own swa_* settings and max_epochs"
            )
        self._build(int(state["averaged_from"]))
        self.averaged.load_state_dict(state["averaged"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._hold_lr()


def _repeat(loader: Iterable) -> Iterator:
    while True:
        yield from loader
