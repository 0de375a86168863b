"""Where training stands, and the one rule for what counts as better.

Plain Python only (no torch): the leaderboard ranks runs with :func:`is_better` too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def is_better(value: float, best: float | None, mode: str) -> bool:
    """A finite ``value`` that strictly beats ``best`` in direction ``mode`` (``max`` or ``min``); NaN never wins."""
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # batches done in the unfinished epoch (after an interrupt)
    best: float | None = None  # best monitored value so far (never NaN)
    best_epoch: int = 0
    partial: dict[str, float] = field(default_factory=dict)  # Totals of the unfinished epoch
    bad_epochs: int = 0  # epochs since the monitored value last improved by min_delta
    stopped_early: bool = False
    budget: dict[str, Any] | None = None  # trainer.budget's plan and the seconds spent (training.budget.Budget)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def end_epoch(self, epoch: int, value: float, mode: str, min_delta: float) -> bool:
        """Record finished ``epoch`` whose monitored value is ``value``; returns whether it is a new best.

        The early-stopping counter restarts only on an improvement by more than ``min_delta``.
        """
        threshold = None if self.best is None else self.best + (min_delta if mode == "max" else -min_delta)
        self.bad_epochs = 0 if is_better(value, threshold, mode) else self.bad_epochs + 1
        self.epoch, self.step, self.partial = epoch, 0, {}
        improved = is_better(value, self.best, mode)
        if improved:
            self.best, self.best_epoch = value, epoch
        return improved


class Interrupted(Exception):
    """Training stopped on request after a step; ``last.pt`` holds the state.

    Attributes:
        exit_code: the process exit status the signal asks for (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Diverged(Exception):
    """Too many non-finite losses in a row, or a non-finite weight: training cannot go on with these settings."""
