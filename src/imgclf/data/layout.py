"""Which top-level folders of a dataset are its splits, and which folders can be classes.

Split folders are recognised by name without regard to case (``Train/``, ``Validation/``, ``dev/``: the
spellings of Kaggle and other downloads), so that a split is never read as a class with the real classes
flattened into it. Two spellings of one split, a split folder holding images instead of class folders (a
flat layout's class named ``test``), and a class folder holding only folders are refused with a message
that says why; a top-level folder that is no split is named, since it is not read.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgclf.data.images import IMAGE_EXTENSIONS
from imgclf.data.walk import skipped_dir
from imgclf.errors import DataError

SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
}
SPELLINGS = {name: split for split, names in SPLIT_NAMES.items() for name in names}
SPELLED = (
    "train/ (or training/), val/ (or valid/, validation/, dev/) and test/ (or testing/), "
    "in any case (Train/, VALID/...)"
)
SHOWN = 5


def split_of(name: str) -> str | None:
    """The split a top-level folder named ``name`` holds (``Validation`` -> ``val``), or None."""
    return SPELLINGS.get(name.lower())


def subdirs(folder: Path) -> list[Path]:
    """The folders in ``folder`` the scan may read (hidden and tool folders left out), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not skipped_dir(p.name))


def find_splits(root: Path) -> dict[str, Path]:
    """The split folders of ``root`` by split (train, val, test order); {} for a flat layout.

    Raises:
        DataError: two folders spell one split, a split folder holds images but no class folders, or
            there are split folders but no train folder.
    """
    found: dict[str, list[Path]] = {}
    for folder in subdirs(root):
        split = split_of(folder.name)
        if split:
            found.setdefault(split, []).append(folder)
    for split, folders in found.items():
        if len(folders) > 1:
            named = " and ".join(f"{f.name}/" for f in folders)
            raise DataError(
                f"{root.resolve()} has {named}, two spellings of the {split} split: imgclf would read "
                f"only one of them. Merge them into one folder (or rename the one that is no split)"
            )
    splits = {split: found[split][0] for split in SPLIT_NAMES if split in found}
    for split, folder in splits.items():
        _check_holds_classes(root, split, folder)
    if splits and "train" not in splits:
        named = ", ".join(f"{f.name}/" for f in splits.values())
        raise DataError(
            f"{root.resolve()} has split folder(s) {named} but no train folder; split folders are named {SPELLED}"
        )
    return splits


def unused_folders(root: Path, splits: dict[str, Path]) -> list[str]:
    """The top-level folders of a split layout that are no split, so never read (``extra/``)."""
    if not splits:
        return []
    used = set(splits.values())
    return [f"{p.name}/" for p in subdirs(root) if p not in used]


def describe_splits(splits: dict[str, Path]) -> str:
    """``splits train/test``, with the folder names where they are not the split names."""
    text = "splits " + "/".join(splits)
    if any(folder.name != split for split, folder in splits.items()):
        text += " (folders " + ", ".join(f"{folder.name}/" for folder in splits.values()) + ")"
    return text


def check_classes(folder: Path, dirs: list[Path], *, at_root: bool) -> None:
    """Refuse class folders that hold only folders and no images: such a folder is a split or a folder of
    classes, and reading it as one class would flatten the classes inside it (``at_root``: ``folder`` is the
    dataset root, so the folder may be a split with a name imgclf does not know)."""
    only = [(d, subs) for d in dirs if (subs := _only_folders(d))]
    if not only:
        return
    named = "; ".join(f"'{d.name}' (holds {_first([s + '/' for s in subs])})" for d, subs in only[:SHOWN])
    more = f"; ... and {len(only) - SHOWN} more" if len(only) > SHOWN else ""
    split_hint = f"if such a folder is a split, name it {SPELLED}; " if at_root else ""
    raise DataError(
        f"class folder(s) in {folder.resolve()} hold only folders and no images: {named}{more}. A folder "
        f"of folders is never read as one class (its sub-folders would be flattened into it): "
        f"{split_hint}if its sub-folders are the classes, set dataset.root to it; if they hold images "
        "of one class, move the images up into the class folder"
    )


def _only_folders(folder: Path) -> list[str]:
    """The sub-folders of ``folder`` when it holds no image file directly, else [] (also when unreadable:
    the walk names that)."""
    subs = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if _is_dir(entry):
                    if not skipped_dir(entry.name):
                        subs.append(entry.name)
                elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith("."):
                    return []
    except OSError:
        return []
    return sorted(subs)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _check_holds_classes(root: Path, split: str, folder: Path) -> None:
    """A split folder with images directly in it and no class folder is a flat layout's class named like a
    split (``root/{test,cat,dog}/*.jpg``): say why it cannot be read as a class, and what to do."""
    entries = list(folder.iterdir())
    if any(p.is_dir() and not skipped_dir(p.name) for p in entries):
        return
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in entries):
        return  # nothing to read: the "holds no class folders" message says what works
    others = [f"{p.name}/" for p in subdirs(root) if p != folder]
    like = f" (like {_first(others)})" if others else ""
    raise DataError(
        f"{folder.resolve()} holds images but no class folders. A top-level folder named '{folder.name}' is read "
        f"as the {split} split (ROOT/{folder.name}/<class>/<image>), never as a class of a flat layout "
        f"(ROOT/<class>/<image>){like}. If '{folder.name}' is a class, rename its folder (e.g. to "
        f"'{folder.name}_class'; dataset.display_names can show it as '{folder.name}'); if it is the {split} split, "
        "put its images into one folder per class inside it"
    )


def _first(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
