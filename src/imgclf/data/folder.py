"""Scan an image folder into one class list and train/val/test sample lists.

Layouts found by looking at the folder:
    root/train/<class>/*  [root/val/<class>/*]  [root/test/<class>/*]   (split names in any case and the
                          common spellings: training, valid, validation, dev, testing; see ``layout``)
    root/<class>/*        (no split: all three are carved from it)
Missing val/test splits are carved from train, stratified by class and seeded.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from imgclf.data.carving import shortfalls
from imgclf.data.class_names import check_distinct, match
from imgclf.data.describe import describe, unusable_root  # noqa: F401  describe: imported from here too
from imgclf.data.folds import check_fold_keys, hold_out, log_fold
from imgclf.data.images import IMAGE_EXTENSIONS
from imgclf.data.layout import SPELLED, check_classes, describe_splits, find_splits, unused_folders
from imgclf.data.reviewed import apply_review, read_review
from imgclf.data.walk import WalkNotes, skipped_dir, walk_files, walk_images  # noqa: F401  walk_images: predict's
from imgclf.errors import ConfigError, DataError

log = logging.getLogger(__name__)
BAD_FILE_POLICIES = ("stop", "skip")  # dataset.bad_files: list every unusable file and stop, or train without them

Sample = tuple[str, int]
SHOWN_SKIPPED = 10


@dataclass
class Splits:
    """One class list and the samples of each split, as (absolute path, class index)."""

    classes: list[str]
    samples: dict[str, list[Sample]]
    ignored: Counter = field(default_factory=Counter)  # skipped files by extension or kind (dangling link...)
    layout: str = ""
    skipped: list[str] = field(default_factory=list)  # links and special files passed over, named
    unused: list[str] = field(default_factory=list)  # top-level folders of a split layout that are no split
    carving: dict[str, str] = field(default_factory=dict)  # split -> why a fraction carved no image of a class
    folds: dict[str, int] = field(default_factory=dict)  # path -> its fold, with dataset.folds (``data.folds``)
    excluded: list[Sample] = field(default_factory=list)  # left out by dataset.exclude, with the folder's label
    given: dict[str, int] = field(default_factory=dict)  # path -> the folder's label of an image relabelled
    # excluded and given are filled by FolderSource.review, which the run calls once on a scan (``data.reviewed``)

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
        folds: K for K-fold cross-validation: the train folder's images are dealt into K stratified folds
            seeded by ``split_seed`` (``data.folds``), fold ``fold`` is the test split and val is carved from the
            other folds (a val folder stays val; a test folder is not used). None: no folds.
        fold: the fold held out as the test split, 0 to K-1.
        exclude: a CSV file whose ``path`` column lists images that train and val leave out (``data.reviewed``).
        relabel: a CSV file of ``path`` and ``label`` (or ``suggested``): train and val images with a new label.
    """

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        bad_files: str = "stop",
        val_from: str = "train",
        display_names: str | None = None,
        classes: list[str] | None = None,
        folds: int | None = None,
        fold: int | None = None,
        exclude: str | None = None,
        relabel: str | None = None,
    ) -> None:
        if val_from not in ("train", "test"):
            raise DataError(f"dataset.val_from={val_from!r}: expected train or test")
        check_fractions(val_fraction, test_fraction)
        check_fold_keys(folds, fold, val_from)
        self.root = Path(root)
        self.num_classes = num_classes
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.bad_files = bad_files
        self.val_from = val_from
        self.display_names_file = display_names
        self.classes = [str(c) for c in classes] if classes else None
        self.folds, self.fold = folds, fold
        self.exclude, self.relabel = exclude, relabel
        self._plan: dict[str, int] = {}  # path -> fold, of the last scan with folds

    def class_names(self) -> list[str]:
        """The class list (configured, or the train folder names), found without reading any image."""
        train_dir = self._split_dirs().get("train", self.root)
        found = _class_dirs(train_dir, at_root=train_dir == self.root)[0]
        if self.classes is None:
            return found
        index, extra = match(found, self.classes, str(train_dir), kind="class of dataset.classes")
        missing = [c for i, c in enumerate(self.classes) if i not in index.values()]
        if extra or missing:
            raise DataError(
                f"dataset.classes does not match the class folders in {train_dir}: folders not in "
                f"the list [{', '.join(extra)}], listed classes without a folder {missing}"
            )
        return self.classes

    def scan(self) -> Splits:
        """List every sample of every split; carve the missing splits from train."""
        split_dirs = self._split_dirs()
        train_dir = split_dirs.get("train", self.root)
        classes = self.class_names()
        notes = WalkNotes()
        held: dict[str, Counter] = {}
        found = {
            name: self._scan_split(folder, classes, notes, held if name == "train" else {})
            for name, folder in (split_dirs or {"train": self.root}).items()
        }
        _check_non_empty(found["train"], classes, train_dir, held)
        samples = self._carve(found)
        layout = describe_splits(split_dirs) if split_dirs else "class folders, no split"
        _log_notes(notes)
        unused = unused_folders(self.root, split_dirs)
        if unused:
            log.warning(
                "%s: top-level folder(s) %s are not read: they are no split (split folders are named %s)",
                self.root,
                ", ".join(unused),
                SPELLED,
            )
        carving = self._shortfalls(found, samples, classes)
        for note in carving.values():
            log.warning("%s", note)
        return self._with_folds(Splits(classes, samples, notes.ignored, layout, notes.skipped, unused, carving))

    def _with_folds(self, splits: Splits) -> Splits:
        """``splits`` with the fold plan of the last scan recorded, and the fold held out named in its layout."""
        if self.folds is None or splits.folds:
            return splits
        layout = f"{splits.layout}; fold {self.fold} of {self.folds} held out as test"
        return replace(splits, folds=self._plan, layout=layout)

    def review(self, splits: Splits, known: set[str] | None = None) -> Splits:
        """``splits`` of a scan as the run uses them: ``exclude`` and ``relabel`` applied to train and val (the test
        split is kept as it is; the run's one log line says what changed). ``known``: the images the lists may
        name (default: those of ``splits``)."""
        splits = self._with_folds(splits)  # a subclass's own scan() may not have recorded them
        if known is None:
            known = {path for items in splits.samples.values() for path, _ in items}
        review = read_review(self.exclude, self.relabel, self.root, known, splits.classes)
        if review is None:
            return splits
        samples, excluded, given = apply_review(splits.samples, review, splits.classes)
        return replace(splits, samples=samples, excluded=excluded, given=given)

    def _scan_split(self, folder: Path, classes: list[str], notes: WalkNotes, held: dict[str, Counter]) -> list[Sample]:
        """The samples of one split folder; what each class folder held besides images goes to ``held``."""
        names, dirs = _class_dirs(folder)
        index, unknown = match(names, classes, str(folder))
        if unknown:
            raise DataError(
                f"{folder} has class folders that are not in the train classes {classes}: " + "; ".join(unknown)
            )
        for missing in sorted(set(classes) - {classes[i] for i in index.values()}):
            log.warning("%s has no folder for class '%s'", folder, missing)
        reached: dict[str, dict[int, str]] = {}  # real path -> {label: path as reached}, first way in each class
        per_class: list[tuple[int, list[str]]] = []
        for name, class_dir in zip(names, dirs, strict=True):
            class_notes, reals = WalkNotes(), set()
            for path, real in walk_files(class_dir, class_notes):
                reached.setdefault(real, {}).setdefault(index[name], path)
                reals.add(real)  # a file reached twice in one class is kept once
            per_class.append((index[name], sorted(reals)))
            held[classes[index[name]]] = class_notes.ignored
            notes.merge(class_notes)
        twice = _in_two_classes(reached, classes, self.bad_files, notes)
        return [(real, label) for label, reals in per_class for real in reals if real not in twice]

    def _split_dirs(self) -> dict[str, Path]:
        if not self.root.is_dir():
            what = "dataset folder not found" if not self.root.exists() else "dataset.root is not a folder"
            raise DataError(unusable_root(self.root, f"{what}: {self.root.resolve()} {describe(self.root)}"))
        return find_splits(self.root)

    def _carve(self, found: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
        if self.folds is not None:
            return self._carve_fold(found)
        if self.val_from == "test" and "val" not in found:
            if "test" not in found:
                raise DataError(f"dataset.val_from=test, but {self.root} has no test/ folder")
            val, test = _stratified(found["test"], {"val": self.val_fraction}, random.Random(self.split_seed))
            return {"train": found["train"], "val": val["val"], "test": test}
        wanted = {s: f for s, f in (("test", self.test_fraction), ("val", self.val_fraction)) if s not in found}
        carved, train = _stratified(found["train"], wanted, random.Random(self.split_seed))
        return {"train": train, **{s: found[s] if s in found else carved[s] for s in ("val", "test")}}

    def _carve_fold(self, found: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
        """Fold ``fold`` of the train folder as test; val carved from the other folds (unless a val folder exists)."""
        self._plan, rest, test = hold_out(found["train"], self.folds, self.fold, self.split_seed, self.class_names())
        if "val" in found:
            carved, train = {"val": found["val"]}, rest
        else:
            carved, train = _stratified(rest, {"val": self.val_fraction}, random.Random(self.split_seed))
        val_from = "the val folder" if "val" in found else f"val_fraction={self.val_fraction:g} of the other folds"
        sizes = (len(train), len(carved["val"]), len(test), len(found.get("test", [])))
        log_fold(self.folds, self.fold, self.split_seed, sizes, val_from)
        return {"train": train, "val": carved["val"], "test": test}

    def _shortfalls(
        self, found: dict[str, list[Sample]], samples: dict[str, list[Sample]], classes: list[str]
    ) -> dict[str, str]:
        """Why a carved split got no image of some class (the fraction's rounding), by split."""
        if self.folds is not None:  # val is carved from the other folds
            pool = [] if "val" in found else samples["train"] + samples["val"]
            return shortfalls(pool, samples, {"val": self.val_fraction}, classes, "the other folds")
        if self.val_from == "test" and "val" not in found:
            return shortfalls(found["test"], samples, {"val": self.val_fraction}, classes, "test")
        fractions = {"val": self.val_fraction, "test": self.test_fraction}
        carved = {s: f for s, f in fractions.items() if s not in found}
        return shortfalls(found["train"], samples, carved, classes, "train")

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


def _stratified(
    samples: list[Sample], fractions: dict[str, float], rng: random.Random
) -> tuple[dict[str, list[Sample]], list[Sample]]:
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


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Refuse fractions that together carve all of train (or more)."""
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"dataset.val_fraction={val_fraction:g} + dataset.test_fraction={test_fraction:g} = "
            f"{val_fraction + test_fraction:g}, which leaves nothing to train on: their sum must be "
            "below 1 (e.g. 0.15 + 0.15)"
        )


def _class_dirs(folder: Path, at_root: bool = False) -> tuple[list[str], list[Path]]:
    if not folder.is_dir():
        raise DataError(unusable_root(folder, f"{folder.resolve()} {describe(folder)}"))
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not skipped_dir(p.name))
    if not dirs:
        raise DataError(unusable_root(folder, f"{folder.resolve()} holds no class folders: it {describe(folder)}"))
    names = [p.name for p in dirs]
    check_distinct(names, folder)
    check_classes(folder, dirs, at_root=at_root)
    return names, dirs


def _in_two_classes(reached: dict[str, dict[int, str]], classes: list[str], policy: str, notes: WalkNotes) -> set[str]:
    """The real paths reached under more than one class (through links), which would be trained with two
    labels: a DataError naming them under ``bad_files=stop``, else left out of every class with a warning."""
    twice = {real: labels for real, labels in reached.items() if len(labels) > 1}
    if not twice:
        return set()
    named = [
        " and ".join(f"{_arrow(path, real)} (class '{classes[label]}')" for label, path in sorted(labels.items()))
        for real, labels in sorted(twice.items())
    ]
    if policy == "stop":
        shown = "\n  ".join(named[:SHOWN_SKIPPED]) + (
            f"\n  ... and {len(named) - SHOWN_SKIPPED} more" if len(named) > SHOWN_SKIPPED else ""
        )
        raise DataError(
            f"{len(named)} file(s) are reached under two classes (through links), so they would be "
            f"trained with two labels:\n  {shown}\nremove one of the links (keep the file in the "
            "class it belongs to), or set dataset.bad_files=skip to leave such files out"
        )
    for note in named:
        notes.skip("file in two classes", f"file in two classes: {note}")
    log.warning(
        "left out %d file(s) reached under two classes through links (dataset.bad_files=skip), e.g. %s",
        len(named),
        named[0],
    )
    return set(twice)


def _arrow(path: str, real: str) -> str:
    return path if path == real else f"{path} -> {real}"


def _log_notes(notes: WalkNotes) -> None:
    """The scan's one report of what it passed over (by kind) and which folder links it followed."""
    if notes.followed:
        log.info("followed %d folder link(s): %s", len(notes.followed), _some(notes.followed))
    if notes.ignored:
        log.warning("skipped files that are not images, by extension or kind: %s", dict(notes.ignored))
    if notes.skipped:
        log.warning("skipped %d link(s) and special file(s): %s", len(notes.skipped), _some(notes.skipped))


def _some(items: list[str]) -> str:
    return "; ".join(items[:SHOWN_SKIPPED]) + (
        f"; ... and {len(items) - SHOWN_SKIPPED} more" if len(items) > SHOWN_SKIPPED else ""
    )


def _check_non_empty(
    samples: list[Sample], classes: list[str], folder: Path, held: dict[str, Counter] | None = None
) -> None:
    """Refuse a class without a single image, saying what its folder held instead (``held``: by kind)."""
    counts = Counter(label for _, label in samples)
    empty = [name for i, name in enumerate(classes) if counts[i] == 0]
    if not empty:
        return
    if held is None:
        raise DataError(f"class folder(s) in {folder} hold no images: {empty}; add images or remove them")
    described = "; ".join(f"'{name}' ({_held(held.get(name, Counter()))})" for name in empty)
    raise DataError(
        f"class folder(s) in {folder} hold no images: {described}. imgclf reads "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}: convert them to JPEG or PNG, add images, or remove "
        "the folder"
    )


def _held(kinds: Counter) -> str:
    """``holds 12 .heic files, 1 .txt file, 2 x dangling link, which imgclf cannot read``."""
    if not kinds:
        return "an empty folder"
    parts = [
        f"{n} {kind} file{'s' if n > 1 else ''}" if kind.startswith((".", "(")) else f"{n} x {kind}"
        for kind, n in kinds.most_common()
    ]
    return "holds " + ", ".join(parts) + ", which imgclf cannot read"


def remap(splits: Splits, classes: list[str]) -> Splits:
    """Relabel ``splits`` onto ``classes`` (a checkpoint's class list), matching by name.

    Raises:
        DataError: the folder has a class that ``classes`` does not know.
    """
    if splits.classes == classes:
        return splits
    index, unknown = match(splits.classes, classes, "the data", kind="model's class")
    if unknown:
        raise DataError(f"class folders [{', '.join(unknown)}] are not among the model's classes {classes}")
    for missing in sorted(set(classes) - {classes[i] for i in index.values()}):
        log.warning("no folder for class '%s': it is evaluated without samples", missing)

    def moved(items: list[Sample]) -> list[Sample]:
        return [(p, index[splits.classes[label]]) for p, label in items]

    samples = {split: moved(items) for split, items in splits.samples.items()}
    given = {p: index[splits.classes[label]] for p, label in splits.given.items()}
    return replace(splits, classes=list(classes), samples=samples, excluded=moved(splits.excluded), given=given)
