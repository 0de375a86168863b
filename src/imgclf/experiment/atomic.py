"""Atomic file writes: a crash leaves the old file or the new one, never a torn one.

The temporary file sits in the target's own folder (``os.replace`` is only atomic within one
file system) and starts with ``TMP_PREFIX``, so ``checkpoint.remove_orphan_temps`` finds what a
killed writer left behind.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed, fsynced temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (the csv module's quoting, ``\\n`` line ends) for :func:`write_text_atomic`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
