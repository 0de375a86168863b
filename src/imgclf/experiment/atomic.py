"""The one atomic file writer: a crash leaves the old file or the new one, never a torn one.

The temporary file sits in the target's own folder (``os.replace`` is only atomic within one
file system) and starts with ``TMP_PREFIX``, so :func:`remove_orphan_temps` finds what a
killed writer left behind. The file is flushed and fsynced before the rename, and the folder after
it, so the rename itself survives a power cut.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
_WRITER = re.compile(r"\.(\d+)\.[^.]+$")  # .tmp-<target name>.<pid>.<random>


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Create ``path`` with ``write(binary file)`` through a fsynced temporary file, a rename and a fsync
    of the folder. On any failure the temporary file is removed and the previous ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: a temp file whose writer is gone is an orphan (remove_orphan_temps)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.{os.getpid()}.", dir=path.parent)
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
    fsync_dir(path.parent)


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


def orphan_temps(folder: str | Path) -> list[Path]:
    """The temporary files in ``folder`` whose writer process is gone (killed mid-write); a live writer's are kept,
    so a folder that several runs share (the decoded-image cache) can be cleaned by any of them."""
    orphans = []
    for tmp in sorted(Path(folder).glob(TMP_PREFIX + "*")):
        writer = _WRITER.search(tmp.name)
        pid = int(writer.group(1)) if writer else None
        if pid is None or not pid_alive(pid):  # no pid: written before the names carried it
            orphans.append(tmp)
    return orphans


def remove_orphan_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed midway left in ``folder`` (those of live writers stay).
    Returns what was removed."""
    removed = []
    for tmp in orphan_temps(folder):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    if removed:
        log.info("removed %d unfinished file(s) left by a killed write in %s: %s", len(removed), folder,
                 ", ".join(p.name for p in removed))
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def fsync_dir(folder: Path) -> None:
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
