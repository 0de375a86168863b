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

FIELDS = (
    "path",
    "label",
    "split",
    "sha1",
    "fold",
    "given",
)  # fold and given: empty unless used (older files lack them)
REQUIRED = FIELDS[:3]
EXCLUDED = "excluded"  # the split of an image dataset.exclude left out: listed, never loaded


def write_splits(splits: Splits, path: str | Path, digests: dict[str, str] | None = None) -> None:
    """Write one row per sample: path, class name, split, SHA-1 of the file, its fold (``dataset.folds``) and the
    folder's class of an image ``dataset.relabel`` relabelled (atomically); images ``dataset.exclude`` left out
    are rows of split ``excluded``. A path that is not UTF-8 is written with its odd bytes as ``\\xNN``
    (:func:`imgclf.filenames.shown`), read back by :func:`read_splits`."""
    digests = digests or {}
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(FIELDS)
    listed = [*splits.samples.items(), (EXCLUDED, splits.excluded)]
    for split, samples in listed:
        writer.writerows(
            (
                shown(p),
                splits.classes[label],
                split,
                digests.get(p, ""),
                splits.folds.get(p, ""),
                splits.classes[splits.given[p]] if p in splits.given else "",
            )
            for p, label in samples
        )
    content = text.getvalue()
    write_text_atomic(path, content)
    rows = sum(len(samples) for _, samples in listed)
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
    The fold plan, the excluded images and the relabelled images' own classes come back in the ``Splits``
    (a file written before those columns existed reads as a run without them).

    Raises:
        DataError: the file differs from what was written (its ``.sha256`` record), cannot be parsed, names a
            class that is not in ``classes`` or (unless ``missing_ok``) a file that is gone.
    """
    path = Path(path)
    _check_unchanged(path)
    index = {name: i for i, name in enumerate(classes)}
    samples: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    digests: dict[str, str] = {}
    found = Splits(list(classes), samples, layout=f"splits from {path}")
    try:
        with open(path, newline="") as f:
            for number, row in enumerate(csv.DictReader(f), start=2):
                if None in (row.get(key) for key in REQUIRED):
                    raise DataError(f"{path}, line {number}: expected the columns {', '.join(REQUIRED)}, got {row}")
                name = from_shown(row["path"])  # the file itself, for a name that is not UTF-8
                for label in (row["label"], row.get("given") or row["label"]):
                    if label not in index:
                        raise DataError(f"{path}: class '{label}' is not in the checkpoint's classes {classes}")
                _add(found, row, name, index)
                if row["split"] != EXCLUDED:
                    digests[name] = row.get("sha1") or ""
    except (UnicodeDecodeError, csv.Error, ValueError) as exc:
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
    return found, digests


def _add(found: Splits, row: dict[str, str], name: str, index: dict[str, int]) -> None:
    """One row of splits.csv into ``found``: a sample of its split, or an excluded image; its fold and own class."""
    item = (name, index[row["label"]])
    if row["split"] == EXCLUDED:
        found.excluded.append(item)
    else:
        found.samples.setdefault(row["split"], []).append(item)
    if row.get("fold"):
        found.folds[name] = int(row["fold"])
    if row.get("given"):
        found.given[name] = index[row["given"]]
