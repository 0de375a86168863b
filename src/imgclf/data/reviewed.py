"""Reviewed lists: images a run leaves out (``dataset.exclude``) or trains under another label
(``dataset.relabel``), read from CSV files so that the folder itself is never touched.

The lists fit the audit's ``label_issues.csv`` (``path, split, given, suggested, score``) as it is: exclude reads
its ``path`` column; relabel reads ``path`` and the new label from ``label`` or, where a row has no ``label``,
from ``suggested`` (a ``label`` written in by the reviewer wins over the audit's suggestion). Paths are relative
to ``dataset.root`` (absolute paths inside it work too), with a name that is not UTF-8 written as ``\\xNN``.

They apply to train and val only: the test split is kept as it is, so that a run trained on a cleaned list
is scored on the same images and labels as the run before it.
"""

from __future__ import annotations

import csv
import difflib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.data.class_names import nfc
from imgclf.errors import DataError
from imgclf.filenames import from_shown, shown

log = logging.getLogger(__name__)

Sample = tuple[str, int]
SHOWN = 5  # paths named in an error
REVIEWED_SPLITS = ("train", "val")  # the test split is never changed by a list
LABEL_COLUMNS = ("label", "suggested")  # where relabel finds the new label, the first filled one winning


@dataclass
class Review:
    """What the lists ask for, by real path of the image."""

    exclude: set[str] = field(default_factory=set)
    relabel: dict[str, str] = field(default_factory=dict)  # real path -> class name
    files: dict[str, str] = field(default_factory=dict)  # key (dataset.exclude / dataset.relabel) -> list file


def read_review(
    exclude: str | None, relabel: str | None, root: Path, known: set[str], classes: list[str]
) -> Review | None:
    """The lists of ``exclude`` and ``relabel`` (CSV files; None for none), matched to ``known`` (the real paths
    of every image in the folder); None when neither is given.

    Raises:
        DataError: a list is missing or unreadable, names paths that are no image of the folder, or (relabel) a
            class that is not in ``classes``.
    """
    if exclude is None and relabel is None:
        return None
    review = Review()
    if exclude is not None:
        review.exclude = {real for real, _ in _entries("dataset.exclude", exclude, root, known, ())}
        review.files["dataset.exclude"] = str(exclude)
    if relabel is not None:
        rows = _entries("dataset.relabel", relabel, root, known, LABEL_COLUMNS)
        review.relabel = {real: _class("dataset.relabel", relabel, line, classes) for real, line in rows}
        review.files["dataset.relabel"] = str(relabel)
    return review


def _entries(key: str, file: str, root: Path, known: set[str], label_columns: tuple[str, ...]) -> list[tuple[str, str]]:
    """(real path, new label or '') of every row of ``file``, refusing paths that are no image in ``root``."""
    rows = _read_rows(key, Path(file), label_columns)
    found, missing = [], []
    for line, entry, label in rows:
        real = _real_path(entry, root)
        if real not in known:
            missing.append(f"{entry!r} (line {line})")
        else:
            found.append((real, label))
    if missing:
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise DataError(
            f"{key}: {len(missing)} of the {len(rows)} path(s) listed in {file} are no image of dataset.root={root}: "
            f"{', '.join(missing[:SHOWN])}{more}. Paths are relative to dataset.root (or absolute inside it), "
            "as the audit writes them: fix those rows or delete them"
        )
    return found


def _read_rows(key: str, path: Path, label_columns: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(line number, path as written, label or '') of each row; a label column is required when asked for."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"{key}={path}: no such file (a CSV file with a `path` column)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{key}={path} cannot be read as a CSV file: {exc}") from None
    if "path" not in columns or (label_columns and not set(label_columns) & set(columns)):
        need = "a `path` column" + (f" and a `{'` or `'.join(label_columns)}` column" if label_columns else "")
        raise DataError(f"{key}={path} needs {need}; its columns are {columns or 'none (an empty file)'}")
    out = []
    for line, row in enumerate(rows, start=2):
        entry = (row.get("path") or "").strip()
        label = next((str(row[c]).strip() for c in label_columns if (row.get(c) or "").strip()), "")
        if not entry:
            raise DataError(f"{key}={path}, line {line}: the `path` is empty; fill it in or delete the row")
        if label_columns and not label:
            raise DataError(
                f"{key}={path}, line {line} ({entry}): no new label in `{'` or `'.join(label_columns)}`; "
                "fill one in or delete the row"
            )
        out.append((line, entry, label))
    return out


def _real_path(entry: str, root: Path) -> str:
    """The real path of a listed image: relative to ``root``, or absolute (inside it, or the real path of one of
    its images reached through a linked folder, as the audit writes those); the caller checks it is an image."""
    path = Path(from_shown(entry)).expanduser()
    return os.path.realpath(path if path.is_absolute() else root / path)


def _class(key: str, file: str, name: str, classes: list[str]) -> str:
    by_nfc = {nfc(c): c for c in classes}
    if nfc(name) in by_nfc:
        return by_nfc[nfc(name)]
    close = difflib.get_close_matches(name, classes, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(f"{key}={file}: '{name}' is not a class{hint}; the classes are {classes}")


def apply_review(
    samples: dict[str, list[Sample]], review: Review, classes: list[str]
) -> tuple[dict[str, list[Sample]], list[Sample], dict[str, int]]:
    """``samples`` with the listed train and val images left out or relabelled: (samples, excluded, the folder's
    label of each relabelled image). An image in both lists is left out. The test split is returned as it is."""
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, list[Sample]] = {}
    excluded: list[Sample] = []
    given: dict[str, int] = {}
    for split, items in samples.items():
        if split not in REVIEWED_SPLITS:
            out[split] = items
            continue
        kept = []
        for path, label in items:
            if path in review.exclude:
                excluded.append((path, label))
                continue
            new = index[review.relabel[path]] if path in review.relabel else label
            if new != label:
                given[path] = label
            kept.append((path, new))
        out[split] = kept
    _log(review, samples, excluded, given)
    return out, excluded, given


def _log(review: Review, samples: dict[str, list[Sample]], excluded: list[Sample], given: dict[str, int]) -> None:
    """The run's one line on the lists: how many images were left out or relabelled, from which file, and how many
    listed images the test split kept as they are."""
    where = {path: split for split, items in samples.items() for path, _ in items}
    parts = []
    if "dataset.exclude" in review.files:
        parts.append(
            f"left out {len(excluded)} image(s) listed in {review.files['dataset.exclude']} ({_by_split(excluded, where)})"
        )
    if "dataset.relabel" in review.files:
        same = sum(
            1 for p in review.relabel if where.get(p) in REVIEWED_SPLITS and p not in given and p not in review.exclude
        )
        parts.append(
            f"relabelled {len(given)} image(s) listed in {review.files['dataset.relabel']} "
            f"({_by_split([(p, 0) for p in given], where)}" + (f"; {same} already had that label" if same else "") + ")"
        )
    in_test = {p for p in review.exclude | set(review.relabel) if where.get(p) not in REVIEWED_SPLITS}
    parts.append(
        f"{len(in_test)} listed image(s) are in the test split and are kept as they are (test labels untouched)"
        if in_test
        else "the test split is kept as it is"
    )
    log.info("reviewed lists: %s", "; ".join(parts))


def _by_split(items: list[Sample], where: dict[str, str]) -> str:
    counts = Counter(where.get(path, "?") for path, _ in items)
    return ", ".join(f"{split} {counts[split]}" for split in REVIEWED_SPLITS) if items else "none in train or val"


def undone(samples: dict[str, list[Sample]], excluded: list[Sample], given: dict[str, int]) -> dict[str, list[Sample]]:
    """``samples`` as the folder labels them, with the excluded images back in train: what the lists were applied to
    (which of train or val an excluded image was in does not change what a list does to it)."""
    out = {split: [(p, given.get(p, label)) for p, label in items] for split, items in samples.items()}
    out["train"] = [*out.get("train", []), *excluded]
    return out


def review_changes(recorded: Any, again: Any) -> list[str]:
    """How the lists applied now (``again``: ``Splits``) differ from what ``recorded`` (read from splits.csv) says
    they did: images left out or relabelled, or given another label, by one and not the other."""
    changes = []
    old, new = {p for p, _ in recorded.excluded}, {p for p, _ in again.excluded}
    if old != new:
        changes.append(
            f"dataset.exclude now leaves out {len(new)} image(s), {len(old)} before; differing: "
            + shown_paths(sorted(old ^ new))
        )
    old_labels, new_labels = _relabelled(recorded), _relabelled(again)
    if old_labels != new_labels:
        differing = sorted(p for p in set(old_labels) | set(new_labels) if old_labels.get(p) != new_labels.get(p))
        changes.append(
            f"dataset.relabel now relabels {len(new_labels)} image(s), {len(old_labels)} before; differing: "
            + shown_paths(differing)
        )
    return changes


def _relabelled(splits: Any) -> dict[str, int]:
    return {p: label for items in splits.samples.values() for p, label in items if p in splits.given}


def shown_paths(paths: list[str]) -> str:
    """A few paths of ``paths`` for a message, and how many more."""
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(shown(p) for p in paths[:SHOWN]) + more
