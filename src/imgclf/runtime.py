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
import os
import sys
from pathlib import Path

import torch

from imgclf.errors import ConfigError

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


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA, else Apple MPS, else CPU), ``cpu``, ``cuda[:N]`` or ``mps``; a clear error when
    the named device is not there."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but torch sees no CUDA GPU; use device=auto or device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device=mps but Apple's MPS backend is not available; use device=auto or device=cpu")
    return torch.device(name)


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; 0 elsewhere): the interpreter, imports and Hydra's start,
    which a user's clock counts and ``trainer.budget`` must too."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
