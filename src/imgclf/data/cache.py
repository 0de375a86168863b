"""Decode every image once: read, hash, decode, resize, and keep the uint8 result.

One pass over each file reads its bytes once, takes their SHA-1 (for splits.csv, duplicates
and leakage), decodes and resizes the image to the working size. The result is a uint8 array
of shape (N, size, size, 3) (height, width, RGB: what Pillow wraps without a copy, so that
augmentation can run in Pillow's C code) kept in memory or in a memory-mapped ``.npy`` file,
plus a report
(errors, original sizes, digests). Both are keyed by the file list and the SHA-1 of every file's
bytes (not its size and mtime, which a rewrite can keep: docs/reliability.md J4), so a changed, added or
removed file invalidates them, and by ``LOADER_VERSION``. Reading every file for the key costs
40-90 ms for flowers5's 4,317 JPEGs in the page cache (2.5% of building the cache), ~300 ms from the
disk (``benchmarks/content_key.py``).

Both also check themselves at every load, because a crash, a full disk or a stray ``dd`` can leave
a file that still opens: each ``.npy`` has a ``.check.json`` record beside it (its size, shape and
CRC-32, written after the array is fsynced) and ``report.json`` carries the SHA-256 of its own
content. A file that fails its check is rebuilt with a warning that names it, never used.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from imgclf.atomic import remove_orphan_temps, write_atomic, write_text_atomic

# decode_bytes lives in images.py (torch-free, shared with the ONNX predictor); imported from here too
from imgclf.data.images import RESIZE_MODES, decode_bytes
from imgclf.errors import DataError
from imgclf.filenames import shown
from imgclf.progress import progress
from imgclf.writable import unwritable

log = logging.getLogger(__name__)

LOADER_VERSION = 2  # bump whenever decoding changes: every existing cache is then ignored
MODES = ("memory", "disk", "none")
CHUNK = 8 << 20  # bytes per read while checking a cache file: bounded memory, as fast as one read


@dataclass
class FileReport:
    """What one pass over a list of files found, index-aligned with ``paths``."""

    paths: list[str]
    errors: dict[int, str]
    sizes: list[list[int] | None]  # original width, height
    digests: list[str | None]  # SHA-1 of the file's bytes

    def good(self) -> list[int]:
        return [i for i in range(len(self.paths)) if i not in self.errors]


def decode(path: str, image_size: int, resize: str = "squash") -> np.ndarray:
    """The uncached path: the same decoding as the cache, for one file: (size, size, 3) uint8."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_bytes(data, path, image_size, resize)[0]


def file_digest(path: str) -> str:
    """SHA-1 of the file's bytes (what splits.csv records), or ``!<errno>`` for a file that cannot be read
    (the decoding pass then reports it).

    Raises:
        DataError: the file is gone.
    """
    try:
        with open(path, "rb") as f:  # one read: images are small (faster than hashlib.file_digest's chunks here)
            return hashlib.sha1(f.read()).hexdigest()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: {exc.strerror}; the file list changed while it was being read") from exc
    except OSError as exc:
        return f"!{exc.errno}"


def file_key(paths: Sequence[str], digests: Sequence[str] | None = None) -> str:
    """A hash of the file list and each file's content (``digests``: their :func:`file_digest`, read now if
    None). Content, not (size, mtime): a rewritten image whose mtime was put back must not be served stale."""
    digests = [file_digest(p) for p in paths] if digests is None else digests
    h = hashlib.sha256(f"imgclf-loader-{LOADER_VERSION}\n".encode())
    for path, digest in zip(paths, digests, strict=True):
        # os.fsencode: a name that is not UTF-8 (held as surrogates) has no .encode() (docs/reliability.md J9)
        h.update(os.fsencode(path) + f"\0{digest}\n".encode())
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

    def __init__(
        self, folder: str | Path | None, mode: str = "disk", workers: int | None = None, progress: bool = True
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}, got {mode!r}")
        self.folder = Path(folder).expanduser() if folder is not None else None
        self.mode = mode if self.folder is not None or mode != "disk" else "memory"
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.progress = progress
        self._writable = False  # the disk cache's folder was found writable

    def load(
        self, paths: Sequence[str], image_size: int | None, desc: str = "decode", resize: str = "squash"
    ) -> tuple[torch.Tensor | None, FileReport]:
        """Images (N, size, size, 3) uint8 (None when mode is none), each fitted to the square by ``resize``
        (:data:`~imgclf.data.images.RESIZE_MODES`), and the report for ``paths``.

        Raises:
            DataError: the disk cache cannot be written (disk full, no permission), naming its folder.
        """
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self._check_writable()
        paths = list(paths)
        if not paths:
            empty = torch.empty((0, image_size or 1, image_size or 1, 3), dtype=torch.uint8)
            return (empty if image_size is not None and self.mode != "none" else None), FileReport([], {}, [], [])
        digests = [file_digest(p) for p in paths]
        key = file_key(paths, digests)
        keep = image_size is not None and self.mode != "none"
        report = self._read_report(key, paths)
        if report is not None and not keep:
            return None, report
        array_path = self._array_path(key, image_size, resize) if keep and self.mode == "disk" else None
        if report is not None and array_path is not None and array_path.exists():
            images = open_checked(array_path, (len(paths), image_size, image_size, 3))
            if images is not None:
                return images, report
        images, report = self._scan(paths, image_size if keep else None, resize, array_path, desc)
        moved = [p for p, before, now in zip(paths, digests, report.digests, strict=True) if now and now != before]
        if moved:  # rewritten between the key's read and the decoding: no report, so the next run decodes again
            log.warning("%s changed while it was being read; the cache will be rebuilt next time", shown(moved[0]))
        else:
            self._write_report(key, report)
        return images, report

    def _scan(
        self, paths: list[str], image_size: int | None, resize: str, array_path: Path | None, desc: str
    ) -> tuple[torch.Tensor | None, FileReport]:
        n = len(paths)
        report = FileReport(paths, {}, [None] * n, [None] * n)

        def work(i: int) -> np.ndarray | None:
            try:
                with open(paths[i], "rb") as f:
                    data = f.read()
                report.digests[i] = hashlib.sha1(data).hexdigest()
                pixels, original = decode_bytes(data, paths[i], image_size or 8, resize)
                report.sizes[i] = list(original)
                return pixels
            except DataError as exc:
                report.errors[i] = str(exc).removeprefix(f"{paths[i]}: ")
            except OSError as exc:
                report.errors[i] = f"cannot be read ({exc.strerror})"
            return None

        pool = ThreadPoolExecutor(self.workers)
        try:  # decoded in parallel, consumed in order by the main thread
            rows = progress(
                pool.map(work, range(n)), total=n, desc=desc, unit="img", enabled=self.progress and n >= 200
            )
            if image_size is None:
                for _ in rows:
                    pass
                return None, report
            shape = (n, image_size, image_size, 3)
            if array_path is None:
                array = np.zeros(shape, dtype=np.uint8)
                for i, pixels in enumerate(rows):
                    if pixels is not None:
                        array[i] = pixels
                return torch.from_numpy(array), report
            write_checked(array_path, shape, rows)
        finally:  # an error while writing stops the decoding instead of waiting for every image
            pool.shutdown(cancel_futures=True)
        return torch.from_numpy(np.load(array_path, mmap_mode="c")), report

    def memo(
        self, paths: Sequence[str], name: str, compute: Callable[[], Any], digests: Sequence[str] | None = None
    ) -> Any:
        """``compute()``, remembered on disk for this file list under ``name`` (JSON); ``digests``: the files'
        :func:`file_digest` when the caller has them already (a split just loaded), so no file is read again."""
        if self.folder is None or not paths:
            return compute()
        self._check_writable()
        path = self.folder / file_key(list(paths), digests) / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        value = compute()
        write_text_atomic(path, json.dumps(value))
        return value

    def _check_writable(self) -> None:
        """Refuse, naming the folder, a disk cache whose folder cannot be created or written (once per cache:
        then the first write fails here, not as a traceback from deep in a write)."""
        if self.mode != "disk" or self._writable:
            return
        assert self.folder is not None
        problem = unwritable(self.folder)
        if problem is not None:
            raise DataError(
                f"{self.folder}: the decoded-image cache (paths.cache) cannot be written there "
                f"({problem}). Set paths.cache=<a folder you can write>, or loader.cache=memory to keep "
                "the decoded images in memory (loader.cache=none: decode them as they are used)"
            )
        self._writable = True

    def _array_path(self, key: str, image_size: int | None, resize: str) -> Path:
        assert self.folder is not None
        mode = "" if resize == "squash" else f"-{resize}"  # squashed arrays keep the name they always had
        return self.folder / key / f"images-{image_size}px{mode}-hwc.npy"

    def _read_report(self, key: str, paths: list[str]) -> FileReport | None:
        """The saved report, or None when there is none or it fails its check (then with a warning)."""
        if self.folder is None:
            return None
        path = self.folder / key / "report.json"
        try:
            return parse_report(path.read_text(encoding="utf-8"), paths)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: %s; re-scanning the files", path, exc)
            return None

    def _write_report(self, key: str, report: FileReport) -> None:
        if self.folder is None:
            return
        path = self.folder / key / "report.json"
        try:
            write_text_atomic(path, report_text(report))
        except OSError as exc:  # only a cache: this run has the report, the next one scans again
            log.warning("%s: cannot be written (%s); the next run will scan the files again", path, exc)


# --- integrity: each cache file is checked against what was recorded when it was written ----------------


def record_path(array_path: Path) -> Path:
    """The integrity record beside a cache array: ``images-...-hwc.check.json``."""
    return array_path.with_suffix(".check.json")


def write_checked(array_path: Path, shape: tuple[int, ...], rows: Iterable[np.ndarray | None]) -> None:
    """Write ``rows`` (None: a file that could not be decoded, kept as zeros) as a ``.npy`` of ``shape``
    through a fsynced temporary file in the same folder, then its integrity record.

    Raises:
        DataError: the folder has no room (or cannot be written), with the free space and the size needed.
    """
    header = npy_header(shape)
    total = len(header) + int(np.prod(shape))
    folder = array_path.parent
    if folder.is_dir():
        remove_orphan_temps(folder)  # a build killed midway (its process is gone) left up to a whole array here
    free = free_space(folder)
    if free is not None and free < total:
        raise disk_error(folder, total, "not enough free space")
    crc = zlib.crc32(header)

    def write(f: IO[bytes]) -> None:
        nonlocal crc
        f.write(header)
        reserve(f, total)  # a full disk fails here, before the decoding, not after it
        blank = bytes(int(np.prod(shape[1:])))
        for pixels in rows:
            data = blank if pixels is None else memoryview(np.ascontiguousarray(pixels)).cast("B")
            crc = zlib.crc32(data, crc)
            f.write(data)

    try:
        write_atomic(array_path, write)
        record = {"bytes": total, "shape": list(shape), "crc32": crc}
        write_text_atomic(record_path(array_path), json.dumps(record))
    except OSError as exc:
        raise disk_error(folder, total, exc.strerror or str(exc)) from exc


def open_checked(array_path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The memory-mapped cache array, or None (with a warning naming the file) when it fails its check."""
    problem = array_problem(array_path, shape)
    if problem is None:
        try:
            return torch.from_numpy(np.load(array_path, mmap_mode="c"))
        except (OSError, ValueError) as exc:
            problem = f"cannot be opened ({exc})"
    log.warning("%s: %s; rebuilding it", array_path, problem)
    return None


def array_problem(array_path: Path, shape: tuple[int, ...]) -> str | None:
    """What is wrong with a cache array, judged by its integrity record (None: nothing)."""
    record = record_path(array_path)
    try:
        raw = json.loads(record.read_text(encoding="utf-8"))
        size, recorded_shape, crc = int(raw["bytes"]), list(raw["shape"]), int(raw["crc32"])
    except FileNotFoundError:
        return f"has no integrity record {record.name} (written by an older imgclf, or its build was interrupted)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its integrity record {record.name} cannot be read ({exc})"
    if recorded_shape != list(shape):
        return f"its record {record.name} gives the shape {recorded_shape}, {list(shape)} expected"
    try:
        actual = array_path.stat().st_size
        if actual != size:
            return f"is {actual:,} bytes, {size:,} expected (truncated or extended)"
        if file_crc32(array_path) != crc:
            return "does not match its checksum (CRC-32 in its record): the content was damaged or overwritten"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def file_crc32(path: Path) -> int:
    """CRC-32 of a whole file, read in chunks (4 GB/s here: ~50 ms for a 200 MB cache in the page cache)."""
    buffer = memoryview(bytearray(CHUNK))
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            crc = zlib.crc32(buffer[:count], crc)
    return crc


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header of a C-ordered uint8 array of ``shape`` (what ``np.load`` reads)."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def reserve(f: IO[bytes], total: int) -> None:
    """Allocate the whole file now, where the file system can (ENOSPC now rather than minutes later)."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return
    f.flush()
    try:
        allocate(f.fileno(), 0, total)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def free_space(folder: Path) -> int | None:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    for place in (folder, *folder.parents):
        try:
            return shutil.disk_usage(place).free
        except OSError:
            continue
    return None


def disk_error(folder: Path, needed: int, cause: str) -> DataError:
    free = free_space(folder)
    room = f"{human(free)} free" if free is not None else "free space unknown"
    return DataError(
        f"{folder}: cannot write the decoded-image cache: {cause} ({human(needed)} needed, {room}). "
        "Free some space there, point paths.cache at a disk with room, or set loader.cache=memory "
        "to keep the decoded images in memory instead"
    )


def human(count: int) -> str:
    """``221.3 kB``, ``73.9 GB``."""
    size = float(count)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000:
            return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# --- report.json: the report with the SHA-256 of its own content -----------------------------------------


def report_text(report: FileReport) -> str:
    body = json.loads(json.dumps(asdict(report)))  # as read back: the error keys become strings
    return json.dumps({**body, "sha256": report_digest(body)})


def report_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def parse_report(text: str, paths: list[str]) -> FileReport:
    """The report in ``text`` if it is whole and describes ``paths``.

    Raises:
        ValueError: saying what is wrong (torn, edited, written by an older imgclf, another file list).
    """
    try:
        raw = json.loads(text)
    except ValueError:
        raise ValueError("is not valid JSON (torn or overwritten)") from None
    if not isinstance(raw, dict) or "sha256" not in raw:
        raise ValueError("has no checksum (written by an older imgclf, or not a report)")
    body = {k: v for k, v in raw.items() if k != "sha256"}
    if raw["sha256"] != report_digest(body):
        raise ValueError("does not match its checksum (damaged or edited)")
    try:
        report = FileReport(
            body["paths"], {int(k): v for k, v in body["errors"].items()}, body["sizes"], body["digests"]
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"is not a file report ({exc!r})") from None
    n = len(paths)
    if (
        report.paths != paths
        or len(report.sizes) != n
        or len(report.digests) != n
        or any(not 0 <= i < n for i in report.errors)
    ):
        raise ValueError(
            f"describes {len(report.paths)} file(s) ({len(report.digests)} digests), not the {n} being loaded"
        )
    return report
