"""File names as text: a name that is not UTF-8 in CSV, JSON, logs and messages (docs/reliability.md J9).

On Linux a file name is bytes, and Python holds each byte that is not UTF-8 as a lone surrogate
(U+DC80-U+DCFF, ``surrogateescape``): ``b"caf\\xe9.png"`` (Latin-1 "café") is the str ``"caf\\udce9.png"``.
That str opens the file, but it cannot be encoded as UTF-8. :func:`shown` writes each such byte as
``\\xNN`` (``caf\\xe9.png``, as Python and ``ls -b`` would), and :func:`from_shown` turns the text back into
the name, so a file listed in splits.csv is found again on resume. Valid UTF-8 names (nearly all of them)
are written unchanged. Torch-free: predict.py with an ONNX model uses it.
"""

from __future__ import annotations

import os
import re
from typing import Any

_BYTE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")  # only bytes >= 0x80 are ever escaped


def shown(name: str) -> str:
    """``name`` as valid UTF-8 text: each byte that is not UTF-8 written as ``\\xNN``."""
    if name.isascii():
        return name
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte (possible on NTFS): \udNNN
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def from_shown(text: str) -> str:
    """The file name :func:`shown` wrote as ``text``.

    A name that really holds the four characters ``\\xe9`` is read as written when that file exists and the
    file with the byte does not (the one ambiguity of the escape: both files in one folder).
    """
    if "\\x" not in text:
        return text
    name = _BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), text)
    # through bytes: escaped bytes that make a UTF-8 character together become that character again
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    if name == text or (os.path.lexists(text) and not os.path.lexists(name)):
        return text
    return name


def shown_in(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every string, keys too, passed through :func:`shown`."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {shown_in(k): shown_in(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(shown_in(v) for v in value)
    return value
