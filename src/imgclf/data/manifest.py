"""Datasets listed in files: CSV or JSON lists of (path, label) per split, and the command
that writes such files, class-stratified and seeded, from a folder.

Accepted formats (image paths relative to ``root`` unless absolute):
    CSV with a header that has ``path`` and ``label`` columns (other columns are ignored)
    JSON: [{"path": ..., "label": ...}, ...] or [[path, label], ...] or {path: label, ...}
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from imgclf.data.folder import FolderSource, Sample, Splits, _check_non_empty
from imgclf.errors import DataError
from imgclf.filenames import from_shown, shown

ROWS = list[tuple[str, str]]


class ManifestSource(FolderSource):
    """Samples listed in manifest files, one per split; missing val/test are carved from train.

    Args:
        root: folder the manifest files and relative image paths are resolved against.
        train: the train manifest (required).
        val: the val manifest, or None to carve val from train (``val_fraction``).
        test: the test manifest, or None to carve test from train (``test_fraction``).
        classes: the class order; None for the sorted labels of the train manifest.
        **kwargs: the other :class:`FolderSource` arguments (image_size, normalize, ...).
    """

    def __init__(
        self,
        root: str,
        train: str,
        val: str | None = None,
        test: str | None = None,
        classes: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, classes=classes, **kwargs)
        self.files = {name: f for name, f in (("train", train), ("val", val), ("test", test)) if f}

    def class_names(self) -> list[str]:
        if self.classes:
            return self.classes
        labels = {label for _, label in self._rows("train")}
        return sorted(labels, key=lambda x: (0, int(x)) if x.isdigit() else (1, x))

    def scan(self) -> Splits:
        classes = self.class_names()
        index = {name: i for i, name in enumerate(classes)}
        found: dict[str, list[Sample]] = {}
        for split in self.files:
            rows = self._rows(split)
            unknown = sorted({label for _, label in rows} - set(index))
            if unknown:
                raise DataError(
                    f"{self._path(self.files[split])} has labels {unknown} that are not among the classes {classes}"
                )
            found[split] = [(self._image_path(p), index[label]) for p, label in rows]
        _check_non_empty(found["train"], classes, self._path(self.files["train"]))
        samples = self._carve(found)
        return Splits(
            classes,
            samples,
            Counter(),
            "manifests " + "/".join(self.files),
            carving=self._shortfalls(found, samples, classes),
        )

    def _split_dirs(self) -> dict[str, Path]:
        return {}  # not a folder layout

    def _path(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.root / path

    def _image_path(self, name: str) -> str:
        return from_shown(str(self._path(name).resolve()))  # a name that is not UTF-8, as write_manifests wrote it

    def _rows(self, split: str) -> ROWS:
        return read_manifest(self._path(self.files[split]))


def read_manifest(path: Path) -> ROWS:
    """(path, label) rows of a CSV or JSON manifest; labels as strings.

    Raises:
        DataError: the file is missing or not in one of the accepted formats.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"manifest {path} cannot be read: {exc.strerror}") from exc
    try:
        rows = _parse_json(text) if path.suffix.lower() == ".json" else _parse_csv(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"manifest {path}: {exc}; expected CSV with path,label columns or a JSON list "
            'of {"path": ..., "label": ...}'
        ) from exc
    if not rows:
        raise DataError(f"manifest {path} lists no images")
    return rows


def _parse_csv(text: str) -> ROWS:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
        raise ValueError(f"the CSV header {reader.fieldnames} lacks a path or label column")
    return [(row["path"], str(row["label"])) for row in reader]


def _parse_json(text: str) -> ROWS:
    data = json.loads(text)
    if isinstance(data, dict):
        return [(str(p), str(label)) for p, label in data.items()]
    rows = []
    for item in data:
        if isinstance(item, dict):
            rows.append((str(item["path"]), str(item["label"])))
        else:
            path, label = item
            rows.append((str(path), str(label)))
    return rows


def write_manifests(splits: Splits, out: Path, root: Path, fmt: str = "csv") -> list[Path]:
    """Write ``out/{train,val,test}.<fmt>`` with image paths relative to ``root``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, samples in splits.samples.items():
        if not samples:
            continue
        rows = [
            (shown(str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p), splits.classes[label])
            for p, label in samples
        ]  # shown: a name that is not UTF-8 has its odd bytes as \\xNN
        path = out / f"{split}.{fmt}"
        if fmt == "json":
            path.write_text(json.dumps([{"path": p, "label": label} for p, label in rows], indent=1))
        else:
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(("path", "label"))
                writer.writerows(rows)
        written.append(path)
    return written
