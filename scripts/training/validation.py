"""When training validates: every ``val_interval`` epochs (MONAI's ``ValidationHandler``), and always after the last
epoch, so that a run shorter than ``val_interval`` still scores, and saves, its model."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.engines import Evaluator

__all__ = ["ValidateLastEpoch"]


class ValidateLastEpoch:
    """Run ``validator`` after the trainer's last epoch unless ``ValidationHandler(interval)`` just did.

    Args:
        validator: the evaluator ``ValidationHandler`` runs.
        interval: that handler's ``interval`` (``val_interval``), in epochs.
    """

    def __init__(self, validator: Evaluator, interval: int) -> None:
        if int(interval) < 1:
            raise ValueError(f"val_interval must be a whole number of epochs >= 1, got {interval}")
        self.validator, self.interval = validator, int(interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._unvalidated_last_epoch), self)

    def _unvalidated_last_epoch(self, engine: Engine, epoch: int) -> bool:
        return epoch == engine.state.max_epochs and epoch % self.interval != 0

    def __call__(self, engine: Engine) -> None:
        self.validator.run(engine.state.epoch)
