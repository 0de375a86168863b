"""The figures of a new best epoch, drawn at most a tenth of the time: on cached features a head epoch takes a second
and its confusion matrix and mistakes grid three (measured on transfer's head on 2 loaded cores: 34 s of 92)."""

from __future__ import annotations

import time
from collections.abc import Callable

from imgclf.reporting.outputs import Outputs

SHARE = 0.1  # of the wall time, at most, spent drawing new-best figures


class FigureThrottle:
    """Draws a new best's figures (``draw(epoch, outputs)``) when the time since the last drawing is at least
    ``(1 - SHARE) / SHARE`` times what that drawing took; otherwise keeps the newest best and draws it at
    :meth:`flush` (the end of a stage), so the best epoch of a run always has its figures."""

    def __init__(self, draw: Callable[[int, Outputs], None], clock: Callable[[], float] = time.perf_counter) -> None:
        self._draw, self._clock = draw, clock
        self._pending: tuple[int, Outputs] | None = None
        self._ready_at = float("-inf")

    def new_best(self, epoch: int, outputs: Outputs) -> None:
        self._pending = (epoch, outputs)
        if self._clock() >= self._ready_at:
            self.flush()

    def flush(self) -> None:
        if self._pending is None:
            return
        (epoch, outputs), self._pending = self._pending, None
        start = self._clock()
        self._draw(epoch, outputs)
        took = self._clock() - start
        self._ready_at = self._clock() + took * (1 - SHARE) / SHARE
