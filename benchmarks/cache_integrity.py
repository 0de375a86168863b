"""What the decoded-image cache's integrity check costs at every run start (docs/reliability.md G1).

Builds a cache array of flowers5's size (4,318 images at 128 px: 212 MB) from random pixels with
the real writer, then times, on the same file: opening it without a check (the old load), the
check as shipped (size + CRC-32 of the whole file) with the file in the page cache (warm) and
evicted from it (cold, ``posix_fadvise(DONTNEED)``: the first run after a reboot), and the other
digests that were considered. Takes ~10 s.

    python benchmarks/cache_integrity.py [--images 4318] [--size 128] [--dir /path/on/the/cache/disk]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from timing import best_of, evict  # benchmarks/timing.py

from imgclf.data.cache import CHUNK, file_crc32, open_checked, write_checked


def file_digest(path: Path, new: Callable[[], hashlib._Hash]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, new).hexdigest()


def read_all(path: Path) -> None:
    buffer = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4318)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--dir", default=None, help="where to write the test file (default: a temp folder)")
    args = parser.parse_args()
    shape = (args.images, args.size, args.size, 3)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / f"images-{args.size}px-hwc.npy"
        rows = (rng.integers(0, 256, shape[1:], dtype=np.uint8) for _ in range(args.images))
        start = time.perf_counter()
        write_checked(path, shape, rows)
        print(f"write_checked ({path.stat().st_size / 1e6:.0f} MB, fsynced): {time.perf_counter() - start:.2f} s")
        cases = {
            "np.load(mmap) without a check, warm": lambda: np.load(path, mmap_mode="c"),
            "read the whole file, no digest, warm": lambda: read_all(path),
            "open_checked (size + CRC-32), warm": lambda: open_checked(path, shape),
            "  CRC-32 alone, warm": lambda: file_crc32(path),
            "  SHA-256 instead, warm": lambda: file_digest(path, hashlib.sha256),
            "  BLAKE2b instead, warm": lambda: file_digest(path, hashlib.blake2b),
            "  Adler-32 instead, warm": lambda: adler(path),
        }
        for name, run in cases.items():
            print(f"{name:40s} {best_of(3, run) * 1000:8.1f} ms")
        cold = best_of(2, lambda: read_all(path), lambda: evict([path], sync=True))
        print(f"{'read the whole file, no digest, cold':40s} {cold * 1000:8.1f} ms")
        cold = best_of(2, lambda: open_checked(path, shape), lambda: evict([path], sync=True))
        print(f"{'open_checked (size + CRC-32), cold':40s} {cold * 1000:8.1f} ms")


def adler(path: Path) -> int:
    buffer = memoryview(bytearray(CHUNK))
    value = 1
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            value = zlib.adler32(buffer[:count], value)
    return value


if __name__ == "__main__":
    main()
