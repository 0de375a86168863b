"""Persist an experiment's splits as ``splits.csv`` so resume and test.py see the same files."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from imgclf.experiment.atomic import write_text_atomic
from imgclf.data.folder import Splits
from imgclf.errors import DataError

FIELDS = ("path", "label", "split", "sha1")


def write_splits(splits: Splits, path: str | Path, digests: dict[str, str] | None = None) -> None:
    """Write one row per sample: path, class name, split, SHA-1 of the file (atomically)."""
    digests = digests or {}
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(FIELDS)
    for split, samples in splits.samples.items():
        writer.writerows((p, splits.classes[label], split, digests.get(p, "")) for p, label in samples)
    write_text_atomic(path, text.getvalue())


def read_splits(path: str | Path, classes: list[str]) -> tuple[Splits, dict[str, str]]:
    """Read ``splits.csv`` back, mapping class names to the indices of ``classes``; also returns
    the recorded SHA-1 of each file.

    Raises:
        DataError: the file names a class that is not in ``classes`` or a file that is gone.
    """
    index = {name: i for i, name in enumerate(classes)}
    samples: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    digests: dict[str, str] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            digests[row["path"]] = row.get("sha1") or ""
            if row["label"] not in index:
                raise DataError(f"{path}: class '{row['label']}' is not in the checkpoint's classes {classes}")
            samples.setdefault(row["split"], []).append((row["path"], index[row["label"]]))
    missing = [p for items in samples.values() for p, _ in items if not os.path.exists(p)]
    if missing:
        raise DataError(
            f"{len(missing)} file(s) listed in {path} are gone, e.g. {missing[0]}; "
            "restore them or start a new experiment"
        )
    return Splits(list(classes), samples, layout=f"splits from {path}"), digests
