"""The one atomic file writer: a crash leaves the old file or the new one, never a torn one.

The temporary file sits in the target's own folder (``os.replace`` is only atomic within one
file system) and starts with ``TMP_PREFIX``, so :func:`remove_orphan_temps` finds what a
killed writer left behind. The file is flushed and fsynced before the rename, and the folder after
it, so the rename itself survives a power cut. A folder of files that belong together (a test report) is
replaced the same way, as a whole: :func:`staged_folder`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
_WRITER = re.compile(r"\.(\d+)\.[^.]+$")  # .tmp-<target name>.<pid>.<random>
STAGING_PREFIX = ".staging-"
_STAGED = re.compile(r"^\.staging-(.+)\.(\d+)\.(old-)?[^.]+$")  # .staging-<target>.<pid>.[old-]<random>


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
        log.info(
            "removed %d unfinished file(s) left by a killed write in %s: %s",
            len(removed),
            folder,
            ", ".join(p.name for p in removed),
        )
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


@contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """A new, empty folder beside ``target`` to fill; when the block ends without an error it takes the place of
    ``target`` as a whole (:func:`replace_folder`), else it is removed and ``target`` is left as it was. So
    ``target`` is always one complete old or new version. The folders a killed writer left beside ``target``
    are dealt with first (:func:`remove_orphan_staging`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}.{os.getpid()}.", dir=target.parent))
    try:
        yield staging
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when it became `target`


def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete folder ``staging`` (its files written and fsynced) in place of ``target``: the old
    ``target`` is renamed aside first and deleted only once the new one is in place; a kill between the two
    renames leaves it aside, and the next :func:`remove_orphan_staging` puts it back."""
    os.chmod(staging, 0o755)  # mkdtemp makes 0700 folders
    fsync_dir(staging)
    old = None
    if target.exists():
        old = target.with_name(f"{STAGING_PREFIX}{target.name}.{os.getpid()}.old-{secrets.token_hex(4)}")
        os.replace(target, old)
    os.replace(staging, target)
    fsync_dir(target.parent)  # the renames themselves survive a power cut
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_orphan_staging(folder: str | Path) -> None:
    """Clean up after :func:`staged_folder` writers that were killed (their pid is gone): a half-written new
    folder is removed; an old folder renamed aside is put back when its target is missing, else removed."""
    for path in sorted(Path(folder).glob(STAGING_PREFIX + "*")):
        staged = _STAGED.match(path.name)
        if staged is None or not path.is_dir() or pid_alive(int(staged.group(2))):
            continue
        target = path.with_name(staged.group(1))
        if staged.group(3) and not target.exists():
            os.replace(path, target)
            log.warning("put %s back in place: a run that was replacing it was stopped", target)
        else:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a run that was stopped while writing %s", path, target)
