"""Persist an experiment's splits as ``splits.csv`` so resume and test.py see the same files."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path

from imgclf.atomic import write_text_atomic
from imgclf.data.folder import Splits
from imgclf.errors import DataError
from imgclf.filenames import from_shown, shown

FIELDS = ("path", "label", "split", "sha1")


def write_splits(splits: Splits, path: str | Path, digests: dict[str, str] | None = None) -> None:
    """Write one row per sample: path, class name, split, SHA-1 of the file (atomically). A path that is not
    UTF-8 is written with its odd bytes as ``\\xNN`` (:func:`imgclf.filenames.shown`), read back by
    :func:`read_splits`."""
    digests = digests or {}
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(FIELDS)
    for split, samples in splits.samples.items():
        writer.writerows((shown(p), splits.classes[label], split, digests.get(p, "")) for p, label in samples)
    content = text.getvalue()
    write_text_atomic(path, content)
    rows = sum(len(samples) for samples in splits.samples.values())
    write_text_atomic(checksum_path(path), f"{_sha256(content.encode())} {rows}\n")


def checksum_path(path: str | Path) -> Path:
    """``splits.csv.sha256``: the SHA-256 and row count of ``splits.csv`` as written, checked when it is read."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_unchanged(path: Path) -> None:
    """Refuse a ``splits.csv`` that differs from what was written (cut, overwritten, damaged); a file without
    a checksum (an experiment from before it existed) is read as it is."""
    recorded = checksum_path(path)
    if not recorded.exists():
        return
    fields = recorded.read_text(errors="replace").split()
    data = path.read_bytes()
    if len(fields) == 2 and fields[0] == _sha256(data):
        return
    rows = fields[1] if len(fields) == 2 else "?"
    found = max(data.count(b"\n") - 1, 0)
    raise DataError(
        f"{path} ({len(data)} bytes, {found} row(s)) is not the file this experiment wrote "
        f"({rows} rows; its SHA-256 is recorded in {recorded.name}): it was cut, damaged or edited, and testing "
        "or resuming on it would silently use other images. Restore it from a backup, or train the experiment "
        f"again (overwrite=true). If you edited it on purpose, delete {recorded.name}"
    )


def read_splits(path: str | Path, classes: list[str], *, missing_ok: bool = False) -> tuple[Splits, dict[str, str]]:
    """Read ``splits.csv`` back, mapping class names to the indices of ``classes``; also returns
    the recorded SHA-1 of each file. ``missing_ok``: files that are gone stay listed (the caller skips them).

    Raises:
        DataError: the file differs from what was written (its ``.sha256`` record), cannot be parsed, names a
            class that is not in ``classes`` or (unless ``missing_ok``) a file that is gone.
    """
    path = Path(path)
    _check_unchanged(path)
    index = {name: i for i, name in enumerate(classes)}
    samples: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    digests: dict[str, str] = {}
    try:
        with open(path, newline="") as f:
            for number, row in enumerate(csv.DictReader(f), start=2):
                if None in (row.get("path"), row.get("label"), row.get("split")):
                    raise DataError(f"{path}, line {number}: expected the columns {', '.join(FIELDS)}, got {row}")
                name = from_shown(row["path"])  # the file itself, for a name that is not UTF-8
                digests[name] = row.get("sha1") or ""
                if row["label"] not in index:
                    raise DataError(f"{path}: class '{row['label']}' is not in the checkpoint's classes {classes}")
                samples.setdefault(row["split"], []).append((name, index[row["label"]]))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"{path} is not a readable splits file ({type(exc).__name__}: {exc}); restore it from a "
            "backup, or train the experiment again (overwrite=true)"
        ) from None
    missing = [] if missing_ok else [p for items in samples.values() for p, _ in items if not os.path.exists(p)]
    if missing:
        raise DataError(
            f"{len(missing)} file(s) listed in {path} are gone, e.g. {shown(missing[0])}; "
            "restore them or start a new experiment (or, to train, set dataset.bad_files=skip to resume without them)"
        )
    return Splits(list(classes), samples, layout=f"splits from {path}"), digests
