"""Atomic checkpoint writes and safe reads.

A checkpoint is written to a temporary file in the same folder, flushed, fsynced and then
renamed over the old one, so a kill at any moment leaves either the old or the new file, never
a torn one. Every checkpoint holds only tensors and plain Python values and loads with
``weights_only=True``: nothing in it is ever executed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.atomic import remove_orphan_temps, write_atomic  # noqa: F401  (re-exported)
from imgclf.errors import CheckpointError

log = logging.getLogger(__name__)

LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` so that a crash never leaves a torn file.

    Raises:
        CheckpointError: the file could not be written (for example the disk is full); the
            previous file at ``path`` is left untouched.
    """
    path = Path(path)
    try:
        write_atomic(path, lambda f: torch.save(payload, f))
    except OSError as exc:
        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(
            f"could not write checkpoint {path}: {exc.strerror or exc} ({free / 2**20:.0f} MiB free in "
            f"{path.parent}; the file size limit of this process may be lower: ulimit -f); the previous file is "
            "kept. Free some space (or write elsewhere: paths.experiments=<folder on a larger disk>), then run "
            "the same command to resume"
        ) from exc


def file_stamp(path: str | Path) -> tuple[int, int, int, str]:
    """What tells one version of a file from another: inode, size, mtime (ns) and SHA-256 of the content.
    Every checkpoint write is a rename of a new file, so a replaced checkpoint never has the stamp of the old."""
    path = Path(path)
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return info.st_ino, info.st_size, info.st_mtime_ns, digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupt, a git-LFS pointer or
            not an imgclf checkpoint; the message names the path, its size and the cause.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path.resolve()}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER))
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if head == LFS_POINTER:
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is a git-LFS pointer, not the file: run `git lfs pull`"
        )
    damaged = failed_crc(path)  # torch.load does not verify the zip CRC: a flipped bit would load silently
    if damaged is not None:
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is damaged: its part '{damaged}' no longer matches the checksum "
            "written with it (a disk, memory or copy error changed the file after it was saved). Use another "
            "checkpoint of the run (best.pt or last.pt), a backup, or train again"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt zips and pickles
        raise CheckpointError(f"checkpoint {path} ({size} bytes) cannot be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path} ({size} bytes) is not an imgclf checkpoint (no 'model' entry)")
    bad = first_non_finite(payload["model"])
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} holds non-finite values in '{bad}'")
    return payload


def failed_crc(path: Path) -> str | None:
    """The first member of a zip checkpoint whose CRC-32 does not match its bytes, else None (also for files
    that are not zips, e.g. torch's legacy format: torch.load then reports what it can)."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return None  # a damaged directory: torch.load's own error says more


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding a NaN or infinity, else None.

    Every checkpoint asks, so the common answer comes from one multi-tensor norm per dtype and device (a NaN or an
    infinity makes its tensor's norm non-finite): 25 ms instead of 600 ms for transfer's three backbones. Only when
    a norm is not finite (or a norm of huge finite values overflowed) is each tensor checked, to name it.
    """
    if _all_finite([tensor for tensor in state.values() if tensor.is_floating_point()]):
        return None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    try:
        return all(bool(torch.isfinite(torch.stack(torch._foreach_norm(group))).all()) for group in groups.values())
    except RuntimeError:  # a dtype the multi-tensor norm does not take: the per-tensor check answers
        return False


def rng_states() -> dict[str, Any]:
    """The state of every global random generator, as plain values and tensors."""
    np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_kind, torch.from_numpy(np_keys.copy()), int(np_pos), int(np_gauss), float(np_cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved."""
    random.setstate(_as_tuple(states["python"]))
    kind, keys, pos, gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():  # a machine with fewer GPUs restores those it has
        for index, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
