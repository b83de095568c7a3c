"""Ignite event handlers the training config attaches that neither MONAI nor ignite provides as such."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

__all__ = ["EpochTimeLimit"]

logger = logging.getLogger(__name__)


class EpochTimeLimit:
    """Stop training at the end of the first epoch that finishes ``minutes`` after the run started.

    ignite's ``TimeLimit`` stops at the first iteration past the limit, in the middle of an epoch, so that
    epoch is never validated and a short budget may end without any best model (``models/model.pt``). This
    handler waits for the epoch's end: attached after the ``ValidationHandler`` (as in ``train.json``), the
    epoch is validated and checkpointed first, and the final checkpoint is written as for a completed run.

    Args:
        minutes: wall-time budget of one ``trainer.run()``, from its start.
    """

    def __init__(self, minutes: float | str) -> None:
        try:
            self.minutes = float(minutes)
        except (TypeError, ValueError):
            self.minutes = float("nan")
        if not self.minutes > 0:
            raise ValueError(f"max_minutes must be a positive number of minutes, got {minutes!r}")
        self.started = time.monotonic()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def start(self, engine: Engine) -> None:
        self.started = time.monotonic()

    def check(self, engine: Engine) -> None:
        elapsed = (time.monotonic() - self.started) / 60
        if elapsed >= self.minutes:
            logger.info(f"stopping after epoch {engine.state.epoch}: {elapsed:.1f} of {self.minutes:g} minutes used")
            engine.terminate()
