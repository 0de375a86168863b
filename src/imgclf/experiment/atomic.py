"""The one atomic file writer: a crash leaves the old file or the new one, never a torn one.

The temporary file sits in the target's own folder (``os.replace`` is only atomic within one
file system) and starts with ``TMP_PREFIX``, so ``checkpoint.remove_orphan_temps`` finds what a
killed writer left behind. The file is flushed and fsynced before the rename, and the folder after
it, so the rename itself survives a power cut.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Create ``path`` with ``write(binary file)`` through a fsynced temporary file, a rename and a fsync
    of the folder. On any failure the temporary file is removed and the previous ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    recorder = None
    try:
        with os.fdopen(fd, "wb") as f:
            recorder = _WriteErrors(f)
            write(recorder)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if recorder is not None and recorder.error is not None and recorder.error is not exc:
            # torch.save reports a failed write (disk full, file too large) as "RuntimeError: [enforce fail at
            # inline_container.cc] unexpected pos": raise the OSError it hid instead
            raise recorder.error from exc
        raise
    _fsync_dir(path.parent)


class _WriteErrors:
    """A binary file that keeps the first OSError its ``write`` raised, for writers that replace it with their own."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (not every file system lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (the csv module's quoting, ``\\n`` line ends) for :func:`write_text_atomic`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
