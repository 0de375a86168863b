"""What keying the decoded-image cache by content costs at every run start (docs/reliability.md J4).

The old key hashed each file's (path, size, mtime), so an image rewritten with its mtime put back was
served stale. The new key (``imgclf.data.cache.file_key``) reads every file and takes the SHA-1 of its
bytes, the digest splits.csv already records. On flowers5 (4,317 JPEGs), this times in one run: the old
key, the new key with the files in the page cache (warm: every run after the first) and evicted from it
(cold-ish, ``posix_fadvise(DONTNEED)``: the first run after a reboot), the other digests considered,
and, for scale, a whole disk-cache build (decode and resize every image) and a cache hit. Takes ~20 s;
on a busy machine the numbers vary by 2x from run to run: compare rows of the same run.

    python benchmarks/content_key.py [--root ../shared/data/flowers5] [--size 128]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from timing import best_of, evict  # benchmarks/timing.py

from imgclf.data.cache import DecodeCache, file_digest, file_key
from imgclf.data.folder import FolderSource

ROOT = Path(__file__).resolve().parents[1]


def old_key(paths: list[str]) -> str:
    """The key before J4: the file list with each file's size and mtime (no file is opened)."""
    h = hashlib.sha256(b"imgclf-loader-2\n")
    for path in paths:
        st = os.stat(path)
        h.update(os.fsencode(path) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def whole_file(digest: Callable[[bytes], object]) -> Callable[[list[str]], None]:
    """Read each file in one call and digest its bytes."""

    def run(paths: list[str]) -> None:
        for path in paths:
            with open(path, "rb") as f:
                digest(f.read())

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "flowers5")
    parser.add_argument("--size", type=int, default=128, help="the side of the cache build's squares")
    args = parser.parse_args()
    splits = FolderSource(str(args.root.resolve()), val_fraction=0.15, test_fraction=0.15).scan()
    paths = [p for samples in splits.samples.values() for p, _ in samples]
    n = len(paths)
    megabytes = sum(os.path.getsize(p) for p in paths) / 1e6
    print(f"{args.root}: {n} images, {megabytes:.1f} MB")
    new_key = lambda: file_key(paths)  # noqa: E731  reads and hashes every file
    cases = {
        "old key: (path, size, mtime), warm": lambda: old_key(paths),
        "new key: SHA-1 of every file, warm": new_key,
        "  read every file, no digest, warm": lambda: whole_file(lambda data: None)(paths),
        "  CRC-32 (zlib) instead, warm": lambda: whole_file(zlib.crc32)(paths),
        "  BLAKE2b instead, warm": lambda: whole_file(lambda d: hashlib.blake2b(d).digest())(paths),
        "  SHA-1 by hashlib.file_digest, warm": lambda: [hashlib.file_digest(open(p, "rb"), "sha1") for p in paths],
    }
    rows = {name: best_of(5, run) for name, run in cases.items()}
    rows["old key: (path, size, mtime), cold-ish"] = best_of(2, lambda: old_key(paths), lambda: evict(paths))
    rows["new key: SHA-1 of every file, cold-ish"] = best_of(2, new_key, lambda: evict(paths))
    with tempfile.TemporaryDirectory() as folder:
        cache = DecodeCache(folder, mode="disk", progress=False)
        start = time.perf_counter()
        cache.load(paths, args.size)
        build = time.perf_counter() - start
        hit = best_of(3, lambda: cache.load(paths, args.size))  # the key, the report, the array's CRC-32 check
    for name, seconds in rows.items():
        print(
            f"{name:44s} {seconds * 1000:8.1f} ms  {seconds / n * 1e6:6.1f} us/image  {seconds / build:6.2%} of a build"
        )
    print(
        f"{'cache build (read, SHA-1, decode, resize)':44s} {build * 1000:8.1f} ms  {build / n * 1e6:6.1f} us/image"
        f"  ({args.size} px, {DecodeCache(None).workers} threads)"
    )
    print(
        f"{'cache hit (key, report, CRC-32 of the array)':44s} {hit * 1000:8.1f} ms  {hit / n * 1e6:6.1f} us/image"
        f"  (the new key is {rows['new key: SHA-1 of every file, warm'] / hit:.0%} of it, warm)"
    )
    print(f"digests kept in the report and in splits.csv: SHA-1, e.g. {file_digest(paths[0])}")


if __name__ == "__main__":
    main()
