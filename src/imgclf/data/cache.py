"""Decode every image once: read, hash, decode, resize, and keep the uint8 result.

One pass over each file reads its bytes once, takes their SHA-1 (for splits.csv, duplicates
and leakage), decodes and resizes the image to the working size. The result is a uint8 array
of shape (N, size, size, 3) (height, width, RGB: what Pillow wraps without a copy, so that
augmentation can run in Pillow's C code) kept in memory or in a memory-mapped ``.npy`` file,
plus a report
(errors, original sizes, digests). Both are keyed by the file list (path, size, mtime), so a
changed, added or removed file invalidates them, and by ``LOADER_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from imgclf.experiment.atomic import write_text_atomic
from imgclf.data.images import RESIZE_MODES, fit, open_image
from imgclf.errors import DataError

log = logging.getLogger(__name__)

LOADER_VERSION = 2  # bump whenever decoding changes: every existing cache is then ignored
MODES = ("memory", "disk", "none")


@dataclass
class FileReport:
    """What one pass over a list of files found, index-aligned with ``paths``."""

    paths: list[str]
    errors: dict[int, str]
    sizes: list[list[int] | None]     # original width, height
    digests: list[str | None]         # SHA-1 of the file's bytes

    def good(self) -> list[int]:
        return [i for i in range(len(self.paths)) if i not in self.errors]


def decode_bytes(data: bytes, path: str, image_size: int, resize: str = "squash"
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image to (size, size, 3) uint8 (see :data:`RESIZE_MODES`); also returns its stored size."""
    img, original = open_image(path, data=data, draft=2 * image_size)
    return np.array(fit(img, image_size, resize), dtype=np.uint8), original  # a writable copy


def decode(path: str, image_size: int, resize: str = "squash") -> np.ndarray:
    """The uncached path: the same decoding as the cache, for one file: (size, size, 3) uint8."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_bytes(data, path, image_size, resize)[0]


def file_key(paths: Sequence[str]) -> str:
    """A hash of the file list with each file's size and modification time."""
    h = hashlib.sha256(f"imgclf-loader-{LOADER_VERSION}\n".encode())
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(f"{path}: {exc.strerror}; the file list changed while it was being read") from exc
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


class DecodeCache:
    """Decoded images and file reports, in memory or on disk.

    Args:
        folder: where ``disk`` mode keeps its files and where reports are kept (None: nowhere).
        mode: ``disk`` (memory-mapped, reused across runs), ``memory`` (decoded every run) or
            ``none`` (no images kept: decode on the fly; files are still checked once).
        workers: decoding threads (Pillow releases the GIL while decoding).
        progress: show progress bars.
    """

    def __init__(self, folder: str | Path | None, mode: str = "disk", workers: int | None = None,
                 progress: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}, got {mode!r}")
        self.folder = Path(folder).expanduser() if folder is not None else None
        self.mode = mode if self.folder is not None or mode != "disk" else "memory"
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.progress = progress

    def load(self, paths: Sequence[str], image_size: int | None, desc: str = "decode", resize: str = "squash"
             ) -> tuple[torch.Tensor | None, FileReport]:
        """Images (N, size, size, 3) uint8 (None when mode is none), each fitted to the square by ``resize``
        (:data:`~imgclf.data.images.RESIZE_MODES`), and the report for ``paths``."""
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        paths = list(paths)
        if not paths:
            empty = torch.empty((0, image_size or 1, image_size or 1, 3), dtype=torch.uint8)
            return (empty if image_size is not None and self.mode != "none" else None), FileReport([], {}, [], [])
        key = file_key(paths)
        keep = image_size is not None and self.mode != "none"
        report = self._read_report(key)
        if report is not None and not keep:
            return None, report
        array_path = self._array_path(key, image_size, resize) if keep and self.mode == "disk" else None
        if report is not None and array_path is not None and array_path.exists():
            return torch.from_numpy(np.load(array_path, mmap_mode="c")), report
        images, report = self._scan(paths, image_size if keep else None, resize, array_path, desc)
        self._write_report(key, report)
        return images, report

    def _scan(self, paths: list[str], image_size: int | None, resize: str, array_path: Path | None, desc: str
              ) -> tuple[torch.Tensor | None, FileReport]:
        n = len(paths)
        shape = (n, image_size or 1, image_size or 1, 3)
        tmp = None
        if image_size is None:
            array = None
        elif array_path is not None:
            array_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = array_path.with_name(f"{array_path.stem}.tmp-{os.getpid()}.npy")
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        else:
            array = np.zeros(shape, dtype=np.uint8)
        report = FileReport(paths, {}, [None] * n, [None] * n)

        def work(i: int) -> None:
            try:
                with open(paths[i], "rb") as f:
                    data = f.read()
                report.digests[i] = hashlib.sha1(data).hexdigest()
                pixels, original = decode_bytes(data, paths[i], image_size or 8, resize)
                report.sizes[i] = list(original)
                if array is not None:
                    array[i] = pixels
            except DataError as exc:
                report.errors[i] = str(exc).removeprefix(f"{paths[i]}: ")
            except OSError as exc:
                report.errors[i] = f"cannot be read ({exc.strerror})"

        with ThreadPoolExecutor(self.workers) as pool:
            for _ in tqdm(pool.map(work, range(n)), total=n, desc=desc, unit="img", leave=False,
                          disable=not self.progress or n < 200):
                pass
        if array is None:
            return None, report
        if tmp is not None:
            array.flush()
            del array
            os.replace(tmp, array_path)
            return torch.from_numpy(np.load(array_path, mmap_mode="c")), report
        return torch.from_numpy(array), report

    def memo(self, paths: Sequence[str], name: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, remembered on disk for this file list under ``name`` (JSON)."""
        if self.folder is None or not paths:
            return compute()
        path = self.folder / file_key(list(paths)) / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        value = compute()
        write_text_atomic(path, json.dumps(value))
        return value

    def _array_path(self, key: str, image_size: int | None, resize: str) -> Path:
        assert self.folder is not None
        mode = "" if resize == "squash" else f"-{resize}"  # squashed arrays keep the name they always had
        return self.folder / key / f"images-{image_size}px{mode}-hwc.npy"

    def _read_report(self, key: str) -> FileReport | None:
        if self.folder is None:
            return None
        path = self.folder / key / "report.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return FileReport(raw["paths"], {int(k): v for k, v in raw["errors"].items()}, raw["sizes"], raw["digests"])

    def _write_report(self, key: str, report: FileReport) -> None:
        if self.folder is None:
            return
        write_text_atomic(self.folder / key / "report.json", json.dumps(asdict(report)))
