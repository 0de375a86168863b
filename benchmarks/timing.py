"""What the benchmarks share: the best of several timed runs, and reads that come from the disk, not the page cache."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def evict(paths: Iterable[str | Path], sync: bool = False) -> None:
    """Drop the files' pages from the page cache, so the next read comes from the disk (``sync``: flush first)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            if sync:
                os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def best_of(repeats: int, run: Callable[[], object], before: Callable[[], None] = lambda: None) -> float:
    """The shortest of ``repeats`` timed calls of ``run`` (``before`` runs untimed ahead of each)."""
    times = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)
