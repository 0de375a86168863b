"""K-fold cross-validation as a split plan: the train folder's images dealt into K stratified, seeded folds,
one of which is the run's test split (``dataset.folds=K dataset.fold=i``).

The plan depends only on the files (their paths, sorted) and ``split_seed``: a sweep over ``dataset.fold``
gives K runs on one plan, each image in exactly one test fold, however the folder lists its files.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter

from imgclf.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Sample = tuple[str, int]


def check_fold_keys(folds: object, fold: object, val_from: str = "train") -> None:
    """Refuse ``dataset.folds`` / ``dataset.fold`` values that name no fold of a plan, naming the key (and
    ``dataset.val_from=test``, which would carve val from a test folder that folds leave unused)."""
    if folds is None:
        if fold is not None:
            raise ConfigError(
                f"dataset.fold={fold!r} was given without dataset.folds: set dataset.folds=<K> (the number of folds, "
                "e.g. 5) as well, or remove dataset.fold"
            )
        return
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"dataset.folds={folds!r}: expected a whole number >= 2 (e.g. 5), or null for no folds")
    if fold is None:
        raise ConfigError(
            f"dataset.folds={folds} needs dataset.fold=<0..{folds - 1}>: the fold held out as the test split "
            f"(a sweep over all of them: python train.py -m dataset.folds={folds} "
            f"dataset.fold={','.join(map(str, range(folds)))})"
        )
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(
            f"dataset.fold={fold!r}: expected a whole number from 0 to {folds - 1} (dataset.folds={folds})"
        )
    if val_from == "test":
        raise ConfigError(
            f"dataset.folds={folds} with dataset.val_from=test: with folds, val is carved from the train folds "
            "and the test folder is not used; set dataset.val_from=train"
        )


def fold_plan(samples: list[Sample], folds: int, seed: int) -> dict[str, int]:
    """The fold (0..``folds``-1) of every sample, stratified by class and seeded (scikit-learn's
    ``StratifiedKFold``, fed the samples sorted by path so that the plan never depends on listing order).

    Raises:
        ConfigError: ``folds`` is more than the images of every class (some fold would hold no image).
    """
    from sklearn.model_selection import StratifiedKFold  # imported here: scanning a folder without folds needs none

    ordered = sorted(samples)
    counts = Counter(label for _, label in ordered)
    if folds > max(counts.values()):
        raise ConfigError(
            f"dataset.folds={folds} is more than the images of the largest class ({max(counts.values())}), "
            f"so some folds would hold no test image: use dataset.folds <= {max(counts.values())}"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    labels = [label for _, label in ordered]
    with warnings.catch_warnings():  # a class smaller than K: said below, in imgclf's words
        warnings.simplefilter("ignore", UserWarning)
        held_out = [test for _, test in splitter.split(labels, labels)]
    plan = {}
    for index, rows in enumerate(held_out):
        plan.update((ordered[row][0], index) for row in rows)
    return plan


def hold_out(
    samples: list[Sample], folds: int, fold: int, seed: int, classes: list[str]
) -> tuple[dict[str, int], list[Sample], list[Sample]]:
    """(the fold plan of ``samples``, the other folds, fold ``fold``); refuses a class that the fold takes entirely.

    Raises:
        ConfigError: more folds than the images of every class.
        DataError: a class has no image left to train on in this fold (a class of one image).
    """
    plan = fold_plan(samples, folds, seed)
    warn_small_classes(samples, folds, classes)
    rest = [s for s in samples if plan[s[0]] != fold]
    held = [s for s in samples if plan[s[0]] == fold]
    left = Counter(label for _, label in rest)
    empty = [f"'{classes[label]}'" for label in sorted({label for _, label in samples}) if not left[label]]
    if empty:
        raise DataError(
            f"dataset.fold={fold} holds out the only image of class(es) {', '.join(empty)}, which leaves none to "
            "train on: add images to the class (at least 2), or remove it"
        )
    return plan, rest, held


def log_fold(folds: int, fold: int, seed: int, sizes: tuple[int, int, int, int], val_from: str) -> None:
    """The run's split in one line; ``sizes``: train, val, test, and the test folder's images (not used)."""
    train, val, test, test_folder = sizes
    log.info(
        "dataset.folds=%d, dataset.fold=%d (split_seed=%d): test %d images (this fold), train %d, val %d (%s)",
        *(folds, fold, seed, test, train, val, val_from),
    )
    if test_folder:
        log.warning(
            "dataset.folds=%d: fold %d of the train folder is this run's test split; the test folder's %d images "
            "are not used (evaluate a model on them with test.py dataset.root=<the test folder> split=all)",
            *(folds, fold, test_folder),
        )


def warn_small_classes(samples: list[Sample], folds: int, classes: list[str]) -> None:
    """Say which classes have fewer images than folds: some test folds hold none of them."""
    counts = Counter(label for _, label in samples)
    small = [f"'{classes[label]}' ({n})" for label, n in sorted(counts.items()) if n < folds]
    if small:
        log.warning(
            "dataset.folds=%d: class(es) %s have fewer images than folds, so some test folds hold none of them",
            folds,
            ", ".join(small[:10]) + (f" and {len(small) - 10} more" if len(small) > 10 else ""),
        )
