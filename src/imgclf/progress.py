"""Progress that reads well anywhere: a tqdm bar on a terminal, log lines elsewhere.

A job whose stderr is a file (SLURM, nohup, ``> train.out``) would otherwise collect every frame of every bar
as carriage-return-joined text, with the epoch summaries glued to the end of one very long line. There, a
long task (one that has run for ``QUIET_SECONDS``) logs a plain line at each tenth of its work instead, and
a short one logs nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")
QUIET_SECONDS = 10.0  # a task shorter than this logs no progress lines
STEPS = 10  # lines per long task: one at each tenth


def on_terminal() -> bool:
    """Whether stderr (where tqdm draws) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class LineProgress:
    """tqdm's interface (iterate, ``update``, ``set_postfix``, ``close``) written as occasional log lines."""

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        clock: Any = time.perf_counter,
    ) -> None:
        self.iterable, self.desc, self.unit, self.clock = iterable, desc, unit, clock
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.initial = initial
        self.start = clock()
        self.postfix = ""
        self.next_mark = self._mark_after(initial)

    def _mark_after(self, n: int) -> int:
        if not self.total:
            return 0
        step = max(1, self.total // STEPS)
        return (n // step + 1) * step

    def __iter__(self) -> Iterator[T]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n >= self.next_mark and self.n < self.total:
            self.next_mark = self._mark_after(self.n)
            self._line()

    def _line(self) -> None:
        elapsed = self.clock() - self.start
        if elapsed < QUIET_SECONDS:
            return
        done = self.n - self.initial
        # a slow task reads better in seconds per item (a cache of large photos, frozen backbones on a CPU)
        pace = (
            f"{done / elapsed:.1f} {self.unit}/s" if done >= elapsed else f"{elapsed / max(done, 1):.1f} s/{self.unit}"
        )
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        log.info("%s: %d/%s %s%s, %s%s", self.desc, self.n, self.total or "?", self.unit, share, pace, postfix)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        """Nothing to clear: the epoch's own summary line follows."""


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
) -> Any:
    """A progress indicator over ``iterable`` (or updated by hand): tqdm on a terminal, else ``LineProgress``."""
    if enabled and not on_terminal():
        return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=False, disable=not enabled)
