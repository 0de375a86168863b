"""``trainer.budget``: a run that plans its own length to end on time, its schedule completed.

A fixed epoch count is right for one folder on one machine; cutting a run with a timeout stops its learning-rate
schedule half-way. With a budget the run measures itself and decides how many epochs fit:

1. After a few warm optimizer steps of the first epoch it trains (the caches are built by then), the seconds
   per step give a first estimate of an epoch (its validation estimated as a third of a training step per
   batch); the budget left after the time already spent (start-up, decoding, caching) becomes the planned
   number of epochs, at most ``epochs``.
2. After each epoch the estimate is the measured epoch (training, validation, checkpoints: everything between
   two epochs), blended with the one before, and the plan is made again: a machine that slows down gets a
   shorter plan, one that speeds up a longer one.
3. Every plan is handed to the :class:`~imgclf.training.scheduler.Scheduler` as the optimizer steps left, over
   which it lays the rest of its schedule without a jump in the learning rate.

The plan and the seconds spent are saved in checkpoints (:meth:`Budget.state`): a resumed run goes on with the
budget that was left, not a new one. Under torchrun rank 0 measures and every rank takes its plan.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from imgclf.errors import ConfigError

log = logging.getLogger(__name__)

WARM_STEPS = 3  # optimizer steps left out of the first measurement (first-call overheads, allocator warm-up)
MEASURED_STEPS = 10  # then this many steps are timed (fewer when the epoch is shorter)
VALIDATION_SHARE = 1 / 3  # a validation batch against a training step (forward only), for the first estimate
BLEND = 0.5  # weight of the newest epoch in the running estimate of an epoch's seconds


class Budget:
    """The minutes a run may take, and the epochs it plans into them.

    Args:
        minutes: the run's budget (``trainer.budget``).
        max_epochs: the plan never goes beyond this many epochs (``epochs``).
        steps_per_epoch: optimizer steps of one epoch.
        val_batches: validation batches of one epoch (for the first estimate only).
        on_plan: told the optimizer steps left whenever a plan is made (``Scheduler.plan``).
        agree: rank 0's value on every rank (``Distributed.broadcast``; the identity in one process).
        started: ``time.perf_counter()`` when this process began the run (its start-up counts).
        state: :meth:`state` of the interrupted run this one resumes.
    """

    def __init__(
        self,
        minutes: float,
        *,
        max_epochs: int,
        steps_per_epoch: int,
        val_batches: int,
        on_plan: Callable[[int], None],
        agree: Callable[[Any], Any] = lambda value: value,
        started: float | None = None,
        state: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.seconds = 60.0 * check_minutes(minutes)
        self.max_epochs = max_epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.val_batches = val_batches
        self.on_plan, self.agree, self.clock = on_plan, agree, clock
        self.started = clock() if started is None else started
        state = state or {}
        self.spent_before = float(state.get("spent", 0.0))  # seconds of the processes before this one
        self.epochs: int | None = state.get("epochs")  # the plan: epochs in all, None until measured
        self.epoch_seconds: float | None = state.get("epoch_seconds")
        self._steps = 0  # optimizer steps of this process
        self._timer: float | None = None
        self._measured = False  # this process has timed its own steps (a resumed run plans from its own speed)

    def spent(self) -> float:
        """Seconds the run has taken so far, every process of it together."""
        return self.spent_before + self.clock() - self.started

    def state(self) -> dict[str, Any]:
        return {
            "minutes": self.seconds / 60,
            "spent": self.spent(),
            "epochs": self.epochs,
            "epoch_seconds": self.epoch_seconds,
        }

    def planned(self) -> int:
        """The epochs in all: the plan, or ``max_epochs`` until there is one."""
        return self.max_epochs if self.epochs is None else self.epochs

    def begin(self, done: int, steps_done: int) -> None:
        """Hand the scheduler the steps left before the first measurement: the plan a resumed run saved, or
        ``max_epochs`` (the schedule as without a budget, until the first plan a few steps in)."""
        self.on_plan(max((self.planned() - done) * self.steps_per_epoch - steps_done, 1))

    def after_step(self, done: int, step_in_epoch: int) -> None:
        """After each optimizer step (``step_in_epoch`` of the epoch after ``done`` finished ones): the first
        steps of this process are timed, and the first plan is made from them."""
        self._steps += 1
        if self._measured:
            return
        warm = min(WARM_STEPS, self.steps_per_epoch - 2)  # a short epoch: fewer, so a plan comes before its end
        measured = min(MEASURED_STEPS, self.steps_per_epoch - 1 - warm)
        if warm < 1 or measured < 1:
            return  # an epoch of one or two steps: planned at its end
        if self._steps == warm:
            self._timer = self.clock()
        elif self._timer is not None and self._steps == warm + measured:
            step = (self.clock() - self._timer) / measured
            epoch = step * (self.steps_per_epoch + VALIDATION_SHARE * self.val_batches)
            left = max(self.steps_per_epoch - step_in_epoch, 0)
            self._plan(done, epoch, in_epoch=(left * step, step_in_epoch))

    def end_epoch(self, done: int, seconds: float) -> None:
        """After epoch ``done`` (its ``seconds``: training, validation and checkpoints): plan again."""
        blended = seconds if self.epoch_seconds is None else BLEND * seconds + (1 - BLEND) * self.epoch_seconds
        self._plan(done, blended, in_epoch=None)

    def _plan(self, done: int, epoch_seconds: float, in_epoch: tuple[float, int] | None) -> None:
        """Plan from an epoch's estimated seconds; ``in_epoch``: (seconds, steps done) of the epoch under way."""
        self._measured = True
        epoch_seconds, spent = self.agree((max(epoch_seconds, 1e-6), self.spent()))
        first = self.epochs is None
        finishing, steps_done = in_epoch if in_epoch is not None else (0.0, 0)
        current = done + (1 if in_epoch is not None else 0)  # epochs done when the one under way ends
        left = self.seconds - spent - finishing
        if first and current <= 1 and left < 0:
            raise ConfigError(
                f"trainer.budget={self.seconds / 60:g} is too small for one epoch: {spent:.0f} s are spent and an "
                f"epoch takes about {epoch_seconds:.0f} s; the smallest budget that trains one epoch is "
                f"trainer.budget={math.ceil((spent + finishing) / 60 + 0.05 * epoch_seconds / 60)} (minutes), or "
                "trainer.budget=null for the fixed `epochs`"
            )
        # the schedule ends with the plan: a plan that meant to go on gets one more epoch to complete it (at most
        # one epoch over the budget) rather than stopping with the learning rate half-way down
        least = max(current, 1, done + 1 if self.epochs is not None and self.epochs > done else 0)
        epochs = min(self.max_epochs, max(least, current + math.floor(max(left, 0.0) / epoch_seconds)))
        if epochs != self.epochs:
            log.info(
                "budget %g min: %s %d epochs of %d steps, about %.1f s each (%.0f s spent)%s",
                self.seconds / 60,
                "plan" if first else "new plan",
                epochs,
                self.steps_per_epoch,
                epoch_seconds,
                spent,
                "; at most `epochs`" if epochs == self.max_epochs else "",
            )
        self.epochs = epochs
        self.on_plan(max((epochs - done) * self.steps_per_epoch - steps_done, 1))


def check_minutes(minutes: Any) -> float:
    """``trainer.budget`` as a number of minutes, or a :class:`ConfigError` naming the key."""
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not minutes > 0 or math.isinf(minutes):
        raise ConfigError(f"trainer.budget must be a positive number of minutes (or null: no budget), got {minutes!r}")
    return float(minutes)
