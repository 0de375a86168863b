"""Scan an image folder into one class list and train/val/test sample lists.

Layouts found by looking at the folder:
    root/train/<class>/*  [root/val|valid|validation/<class>/*]  [root/test/<class>/*]
    root/<class>/*        (no split: all three are carved from it)
Missing val/test splits are carved from train, stratified by class and seeded.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.data.images import IMAGE_EXTENSIONS
from imgclf.errors import DataError

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
SKIPPED_DIRS = frozenset({"__MACOSX", "__pycache__"})
SKIPPED_FILES = frozenset({"Thumbs.db", "desktop.ini"})
Sample = tuple[str, int]


@dataclass
class Splits:
    """One class list and the samples of each split, as (absolute path, class index)."""

    classes: list[str]
    samples: dict[str, list[Sample]]
    ignored: Counter = field(default_factory=Counter)  # skipped files by extension
    layout: str = ""

    def counts(self) -> dict[str, int]:
        return {split: len(items) for split, items in self.samples.items()}


class FolderSource:
    """A folder of labelled images, described by its root and how to split it.

    How images are fed to the model (``dataset.image_size``, ``normalize``, ``mean``, ``std``) is not
    the folder's business: ``imgclf.tasks.preprocess`` decides it.

    Args:
        root: absolute path of the dataset folder.
        num_classes: expected class count; ``None`` to take it from the train folder.
        classes: the class list, in order; None to take the sorted train folder names. When
            given, the train folders must be exactly these classes.
        val_fraction: share of each train class carved out as val when there is no val folder.
        test_fraction: share of each train class carved out as test when there is no test folder.
        split_seed: seed of the carving, fixed apart from the training seed.
        bad_files: ``stop`` (list every unusable file before training) or ``skip`` (train without them).
        val_from: where a missing val split is carved from: ``train``, or ``test`` (split the test
            folder into val and test, as when train and test folders are given and test is large).
        display_names: a JSON file mapping class folder names to display names (e.g. the flowers
            project's ``cat_to_name.json``), relative to ``root`` or absolute; None for none.
    """

    def __init__(self, root: str, num_classes: int | None = None,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0,
                 bad_files: str = "stop", val_from: str = "train", display_names: str | None = None,
                 classes: list[str] | None = None) -> None:
        if val_from not in ("train", "test"):
            raise DataError(f"dataset.val_from={val_from!r}: expected train or test")
        self.root = Path(root)
        self.num_classes = num_classes
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.bad_files = bad_files
        self.val_from = val_from
        self.display_names_file = display_names
        self.classes = [str(c) for c in classes] if classes else None

    def class_names(self) -> list[str]:
        """The class list (configured, or the train folder names), found without reading any image."""
        train_dir = self._split_dirs().get("train", self.root)
        found = _class_dirs(train_dir)[0]
        if self.classes is None:
            return found
        if sorted(found) != sorted(self.classes):
            extra, missing = sorted(set(found) - set(self.classes)), sorted(set(self.classes) - set(found))
            raise DataError(f"dataset.classes does not match the class folders in {train_dir}: "
                            f"folders not in the list {extra}, listed classes without a folder {missing}")
        return self.classes

    def scan(self) -> Splits:
        """List every sample of every split; carve the missing splits from train."""
        split_dirs = self._split_dirs()
        train_dir = split_dirs.get("train", self.root)
        classes = self.class_names()
        ignored: Counter = Counter()
        found = {name: _scan_split(folder, classes, ignored) for name, folder in split_dirs.items()}
        if not split_dirs:
            found["train"] = _scan_split(self.root, classes, ignored)
        _check_non_empty(found["train"], classes, train_dir)
        samples = self._carve(found)
        layout = "splits " + "/".join(split_dirs) if split_dirs else "class folders, no split"
        if ignored:
            log.warning("skipped files that are not images, by extension: %s", dict(ignored))
        return Splits(classes, samples, ignored, layout)

    def _split_dirs(self) -> dict[str, Path]:
        if not self.root.is_dir():
            what = "dataset folder not found" if not self.root.exists() else "dataset.root is not a folder"
            raise DataError(unusable_root(self.root, f"{what}: {self.root.resolve()} {describe(self.root)}"))
        found = {}
        for split, names in SPLIT_NAMES.items():
            for name in names:
                if (self.root / name).is_dir():
                    found[split] = self.root / name
                    break
        if found and "train" not in found:
            raise DataError(f"{self.root.resolve()} has {sorted(found)} folders but no train/ folder")
        return found

    def _carve(self, found: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
        if self.val_from == "test" and "val" not in found:
            if "test" not in found:
                raise DataError(f"dataset.val_from=test, but {self.root} has no test/ folder")
            val, test = _stratified(found["test"], {"val": self.val_fraction}, random.Random(self.split_seed))
            return {"train": found["train"], "val": val["val"], "test": test}
        wanted = {s: f for s, f in (("test", self.test_fraction), ("val", self.val_fraction)) if s not in found}
        carved, train = _stratified(found["train"], wanted, random.Random(self.split_seed))
        return {"train": train, **{s: found[s] if s in found else carved[s] for s in ("val", "test")}}

    def display_names(self) -> dict[str, str]:
        """Display names of the classes by folder name ({} when there is no names file)."""
        if not self.display_names_file:
            return {}
        path = self.root / self.display_names_file
        try:
            names = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"dataset.display_names: cannot read {path}: {exc}") from exc
        if not isinstance(names, dict):
            raise DataError(f"{path} must map class folder names to display names (a JSON object)")
        return {str(k): str(v) for k, v in names.items()}


def _stratified(samples: list[Sample], fractions: dict[str, float],
                rng: random.Random) -> tuple[dict[str, list[Sample]], list[Sample]]:
    """Carve ``fractions`` of every class out of ``samples`` (at least one sample stays)."""
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    carved: dict[str, list[Sample]] = {split: [] for split in fractions}
    rest: list[Sample] = []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        total = len(items)
        rng.shuffle(items)
        for split, fraction in fractions.items():
            take = min(round(total * fraction), len(items) - 1)  # fractions of the whole class
            carved[split] += items[:take]
            items = items[take:]
        rest += items
    return {split: sorted(items) for split, items in carved.items()}, sorted(rest)


def _class_dirs(folder: Path) -> tuple[list[str], list[Path]]:
    if not folder.is_dir():
        raise DataError(unusable_root(folder, f"{folder.resolve()} {describe(folder)}"))
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not _skipped_dir(p.name))
    if not dirs:
        raise DataError(unusable_root(folder, f"{folder.resolve()} holds no class folders: it {describe(folder)}"))
    names = [p.name for p in dirs]
    clashes = [n for n, c in Counter(n.lower() for n in names).items() if c > 1]
    if clashes:
        raise DataError(f"class folders in {folder} differ only by case: {clashes}; rename or merge them")
    return names, dirs


LAYOUTS = ("ROOT/<class>/<image>                 (val and test are carved from it)\n"
           "  ROOT/train/<class>/<image>           (+ optional ROOT/val/<class>/..., ROOT/test/<class>/...)")
OWN_FOLDER = "python train.py -cn=transfer dataset.root=/path/to/photos"
SHOWN_ENTRIES = 5


def unusable_root(folder: Path, found: str) -> str:
    """The message for a folder that holds no usable layout: what was found, what works, the command."""
    return (f"{found}\nlayouts that work (one folder per class, named after it):\n  {LAYOUTS}\n"
            f"for your own photos: {OWN_FOLDER}")


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
    hint = "; images directly in the root have no class: put each class's images in a folder named after it" \
        if images and not dirs else ""
    return " and ".join(parts) + hint


def _first(names: list[str]) -> str:
    return ", ".join(names[:SHOWN_ENTRIES]) + (", ..." if len(names) > SHOWN_ENTRIES else "")


def _skipped_dir(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_DIRS


def _scan_split(folder: Path, classes: list[str], ignored: Counter) -> list[Sample]:
    names, dirs = _class_dirs(folder)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(
            f"{folder} has class folders that are not in the train classes {classes}: {unknown}"
        )
    for missing in sorted(set(classes) - set(names)):
        log.warning("%s has no folder for class '%s'", folder, missing)
    samples: list[Sample] = []
    for name, class_dir in zip(names, dirs, strict=True):
        samples += [(path, index[name]) for path in _image_files(class_dir, ignored)]
    return samples


def _image_files(class_dir: Path, ignored: Counter) -> list[str]:
    """Every image below ``class_dir`` once (by real path), sorted."""
    return sorted({os.path.realpath(path) for path in walk_images(class_dir, ignored)})


def walk_images(folder: str | Path, ignored: Counter | None = None) -> Iterator[str]:
    """The image files below ``folder`` (``folder/...`` paths, in sorted walk order), skipping hidden
    and system files and folders, and counting each skipped file's kind in ``ignored``. Links to
    folders are not followed, so loops cannot occur."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _skipped_dir(d))
        for name in sorted(filenames):
            ext = Path(name).suffix.lower()
            if name.startswith(".") or name in SKIPPED_FILES or ext not in IMAGE_EXTENSIONS:
                if ignored is not None:
                    ignored[_ignored_kind(name)] += 1
                continue
            yield os.path.join(dirpath, name)


def _ignored_kind(name: str) -> str:
    """How a skipped file is counted in the scan report."""
    if name.startswith("._"):
        return "._* (macOS metadata)"
    if name.startswith(".") or name in SKIPPED_FILES:
        return name if name in (".DS_Store", *SKIPPED_FILES) else "hidden files"
    return Path(name).suffix.lower() or "(no extension)"


def _check_non_empty(samples: list[Sample], classes: list[str], folder: Path) -> None:
    counts = Counter(label for _, label in samples)
    empty = [name for i, name in enumerate(classes) if counts[i] == 0]
    if empty:
        raise DataError(f"class folder(s) in {folder} hold no images: {empty}; add images or remove them")


def remap(splits: Splits, classes: list[str]) -> Splits:
    """Relabel ``splits`` onto ``classes`` (a checkpoint's class list), matching by name.

    Raises:
        DataError: the folder has a class that ``classes`` does not know.
    """
    if splits.classes == classes:
        return splits
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(splits.classes) - set(index))
    if unknown:
        raise DataError(f"class folders {unknown} are not among the model's classes {classes}")
    for missing in sorted(set(classes) - set(splits.classes)):
        log.warning("no folder for class '%s': it is evaluated without samples", missing)
    samples = {split: [(p, index[splits.classes[label]]) for p, label in items]
               for split, items in splits.samples.items()}
    return Splits(list(classes), samples, splits.ignored, splits.layout)
