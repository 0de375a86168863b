"""Process-level settings that make CPU training faster.

PyTorch's CPU tensors come from the C library's malloc. With glibc's defaults, a large block
freed at the end of a training step goes back to the operating system and the next step
faults in fresh zeroed pages again: on a small CNN at 64 px that was 1.4 million page faults
and most of the wall time spent in the kernel. Keeping freed memory inside the process removes
that (``benchmarks/malloc_tuning.py`` prints the speed-up); the cost is that the process keeps
its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4  # glibc mallopt parameters
SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 256 << 20}  # no mmap: large blocks stay reusable


def tune_malloc() -> bool:
    """Ask glibc to keep freed memory for reuse; returns whether it applied (Linux/glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    applied = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    if not applied:
        log.debug("glibc refused a mallopt setting; memory tuning is partial")
    return applied
