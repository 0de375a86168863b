"""The files below a folder, as the scan sees them: links to folders followed once (a loop ends),
and everything that is not a regular image file passed over, counted by kind and, where it is
not a plain unwanted file, named.

Only ``os.scandir`` / ``os.stat`` look at an entry: a FIFO, socket or device is never opened (opening
a FIFO named ``x.jpg`` blocks forever), and a dangling link never reaches the decode cache.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.data.images import IMAGE_EXTENSIONS

SKIPPED_DIRS = frozenset({"__MACOSX", "__pycache__"})
SKIPPED_FILES = frozenset({"Thumbs.db", "desktop.ini"})
SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


@dataclass
class WalkNotes:
    """What a walk passed over or went through.

    Attributes:
        ignored: skipped entries by kind: an extension (``.heic``), ``dangling link``, ``special file (FIFO)``...
        skipped: the skipped entries that are not just unwanted files, named (``dangling link a.jpg -> /gone``).
        followed: links to folders that were followed (``more -> /photos/more``).
    """

    ignored: Counter = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    followed: list[str] = field(default_factory=list)

    def skip(self, kind: str, note: str) -> None:
        self.ignored[kind] += 1
        self.skipped.append(note)

    def merge(self, other: WalkNotes) -> None:
        self.ignored.update(other.ignored)
        self.skipped += other.skipped
        self.followed += other.followed


def skipped_dir(name: str) -> bool:
    """Hidden and tool folders (``.git``, ``__MACOSX``): never a class, never walked."""
    return name.startswith(".") or name in SKIPPED_DIRS


def walk_images(folder: str | Path, notes: WalkNotes | None = None) -> Iterator[str]:
    """The image files below ``folder`` (``folder/...`` paths, in sorted walk order)."""
    for path, _ in walk_files(folder, notes):
        yield path


def walk_files(folder: str | Path, notes: WalkNotes | None = None) -> Iterator[tuple[str, str]]:
    """(path as reached, real path) of every image file below ``folder``, in sorted walk order.

    Links to folders are followed, each real folder walked once: a link back to a folder already
    walked (a loop, or a second way to the same folder) is skipped and named in ``notes``.
    """
    notes = notes if notes is not None else WalkNotes()
    real = os.path.realpath(folder)
    yield from _walk(str(folder), real, {real}, notes)


def _walk(folder: str, real: str, seen: set[str], notes: WalkNotes) -> Iterator[tuple[str, str]]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        notes.skip("unreadable folder", f"unreadable folder {folder} ({exc.strerror})")
        return
    subdirs = []
    for entry in entries:
        if _is_dir(entry):
            if not skipped_dir(entry.name):
                subdirs.append(entry)
        elif _resolves(entry, notes) and _wanted(entry.name, notes):
            found = _regular_file(entry, real, notes)
            if found is not None:
                yield entry.path, found
    for entry in subdirs:
        sub_real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
        if sub_real in seen:
            kind = "folder link loop" if _is_within(real, sub_real) else "folder reached twice"
            notes.skip(kind, f"{kind} {_arrow(entry, sub_real)}: not followed")
            continue
        seen.add(sub_real)
        if entry.is_symlink():
            notes.followed.append(_arrow(entry, sub_real))
        yield from _walk(entry.path, sub_real, seen, notes)


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _arrow(entry: os.DirEntry, real: str) -> str:
    """``path -> link target`` (a folder reached through a link above it: ``path (= real path)``)."""
    return f"{entry.path} -> {os.readlink(entry.path)}" if entry.is_symlink() else f"{entry.path} (= {real})"


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a folder or a link to one (a dangling link or a link loop is not)."""
    try:
        return entry.is_dir()
    except OSError:  # ELOOP from a link that leads to itself
        return False


def _resolves(entry: os.DirEntry, notes: WalkNotes) -> bool:
    """False for a link whose target is missing (or a loop of links), named in ``notes`` whatever its name."""
    if not entry.is_symlink():
        return True
    try:
        entry.stat()
    except OSError as exc:
        reason = "" if exc.errno == errno.ENOENT else f" ({exc.strerror})"
        notes.skip("dangling link", f"dangling link {entry.path} -> {os.readlink(entry.path)}{reason}")
        return False
    return True


def _wanted(name: str, notes: WalkNotes) -> bool:
    """Whether ``name`` may be an image; an unwanted name is counted by kind (never stat'ed or opened)."""
    ext = Path(name).suffix.lower()
    if name.startswith(".") or name in SKIPPED_FILES or ext not in IMAGE_EXTENSIONS:
        notes.ignored[ignored_kind(name)] += 1
        return False
    return True


def _regular_file(entry: os.DirEntry, real_dir: str, notes: WalkNotes) -> str | None:
    """The real path of ``entry`` when it is (or links to) a regular file; else None, with the reason noted."""
    try:
        mode = entry.stat().st_mode  # follows a link
    except OSError as exc:  # gone since the folder was listed
        notes.skip("unreadable file", f"unreadable file {entry.path} ({exc.strerror})")
        return None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in SPECIAL_KINDS if test(mode)), "not a regular file")
        notes.skip(f"special file ({kind})", f"special file ({kind}) {entry.path}")
        return None
    return os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_dir, entry.name)


def ignored_kind(name: str) -> str:
    """How a skipped file is counted in the scan report."""
    if name.startswith("._"):
        return "._* (macOS metadata)"
    if name.startswith(".") or name in SKIPPED_FILES:
        return name if name in (".DS_Store", *SKIPPED_FILES) else "hidden files"
    return Path(name).suffix.lower() or "(no extension)"
