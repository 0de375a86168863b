"""What a folder holds, in words, for the messages about a folder that holds no usable layout."""

from __future__ import annotations

import os
from pathlib import Path

from imgclf.data.images import IMAGE_EXTENSIONS

LAYOUTS = (
    "ROOT/<class>/<image>                 (val and test are carved from it)\n"
    "  ROOT/train/<class>/<image>           (+ optional ROOT/val/<class>/..., ROOT/test/<class>/...;\n"
    "                                       also Train/, training/, valid/, Validation/, dev/, testing/...)"
)
OWN_FOLDER = "python train.py -cn=transfer dataset.root=/path/to/photos"
SHOWN_ENTRIES = 5


def unusable_root(folder: Path, found: str) -> str:
    """The message for a folder that holds no usable layout: what was found, what works, the command."""
    return (
        f"{found}\nlayouts that work (one folder per class, named after it):\n  {LAYOUTS}\n"
        f"for your own photos: {OWN_FOLDER}"
    )


def describe(path: Path) -> str:
    """What ``path`` is, in words: missing (and what its nearest existing parent holds), a file, or a
    folder and a few of its entries."""
    if not path.exists() and not path.is_symlink():
        parent = path.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return f"does not exist (the nearest existing folder, {parent}, holds {_entries(parent)})"
    if path.is_symlink() and not path.exists():
        return f"is a link to {os.readlink(path)}, which does not exist"
    if not path.is_dir():
        kind = "a file" if path.is_file() else "not a folder (a device, pipe or socket)"
        return f"is {kind}" + (f" of {path.stat().st_size:,} bytes" if path.is_file() else "")
    return f"holds {_entries(path)}"


def _entries(folder: Path) -> str:
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        return f"nothing that can be listed ({exc.strerror})"
    if not entries:
        return "nothing (an empty folder)"
    dirs = [p.name + "/" for p in entries if p.is_dir()]
    files = [p.name for p in entries if not p.is_dir()]
    images = sum(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in files)
    parts = []
    if dirs:
        parts.append(f"{len(dirs)} folder(s): {_first(dirs)}")
    if files:
        parts.append(f"{len(files)} file(s){f' ({images} images)' if images else ''}: {_first(files)}")
    hint = (
        "; images directly in the root have no class: put each class's images in a folder named after it"
        if images and not dirs
        else ""
    )
    return " and ".join(parts) + hint


def _first(names: list[str]) -> str:
    return ", ".join(names[:SHOWN_ENTRIES]) + (", ..." if len(names) > SHOWN_ENTRIES else "")
