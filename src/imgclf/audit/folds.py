"""Out-of-fold probabilities: every image scored by a model trained on the other folds only.

A model scored on the images it was trained on has learnt their labels, wrong ones included, so its
confidence in a wrong label says nothing; out-of-fold probabilities are what confident learning needs.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

log = logging.getLogger(__name__)

# (indices to train on, indices to score, fold number) -> (len(score indices), classes) probabilities
TrainAndScore = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def assign_folds(labels: Sequence[int], folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of every image: stratified by class (each fold holds about 1/folds of each class),
    shuffled with ``seed``, so the same folder and seed give the same plan.

    Raises:
        ValueError: fewer images than folds, or folds < 2.
    """
    labels = np.asarray(labels)
    if folds < 2:
        raise ValueError(f"audit.folds={folds}: at least 2 folds are needed")
    if len(labels) < folds:
        raise ValueError(f"{len(labels)} labelled image(s) cannot be split into audit.folds={folds} folds")
    fold_of = np.empty(len(labels), dtype=np.int64)
    with warnings.catch_warnings():  # a class smaller than `folds` is said once by the caller, in words
        warnings.simplefilter("ignore", UserWarning)
        plan = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
        for fold, (_, held_out) in enumerate(plan.split(np.zeros(len(labels)), labels)):
            fold_of[held_out] = fold
    return fold_of


def small_classes(labels: Sequence[int], folds: int, class_names: Sequence[str]) -> list[str]:
    """Classes with fewer images than folds: some of their images are scored by a model that saw few (or no)
    others of their class, so their out-of-fold probabilities understate the class."""
    counts = np.bincount(np.asarray(labels), minlength=len(class_names))
    return [f"{name} ({n})" for name, n in zip(class_names, counts, strict=True) if 0 < n < folds]


def out_of_fold(fold_of: np.ndarray, num_classes: int, train_and_score: TrainAndScore) -> np.ndarray:
    """(images, classes) probabilities, each row from the model of the one fold that held the image out;
    one log line per fold with its seconds."""
    folds = int(fold_of.max()) + 1
    probs = np.full((len(fold_of), num_classes), np.nan, dtype=np.float64)
    for fold in range(folds):
        start = time.perf_counter()
        held_out = np.flatnonzero(fold_of == fold)
        kept = np.flatnonzero(fold_of != fold)
        probs[held_out] = train_and_score(kept, held_out, fold)
        log.info(
            "fold %d/%d: trained on %d image(s), scored %d held-out image(s) in %.1f s",
            fold + 1,
            folds,
            len(kept),
            len(held_out),
            time.perf_counter() - start,
        )
    return probs
