"""Whether a folder can take new files, asked before anything is written there (docs/reliability.md J12).

Permission bits alone do not say it: root ignores them, while a read-only mount or disk stops root too. So
the folder is made if missing and a nameless temporary file is created in it, which is what writing needs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def unwritable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (made first, with its parents, if missing), or None if one can."""
    if folder.is_symlink() and not folder.exists():
        return f"a link to {os.readlink(folder)}, which does not exist"
    if folder.exists() and not folder.is_dir():
        return "a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # nameless (O_TMPFILE) where it can be: nothing to clean up
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
