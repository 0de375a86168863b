"""Label issues: the images whose given label the out-of-fold probabilities contradict, ranked by cleanlab.

The list is what cleanlab flags by either of two rules, ranked by its label quality score
(``cleanlab.rank.get_label_quality_scores``, ``rank_by``: 0 to 1, lower is more likely wrong):

- the N lowest-scored images, N being confident learning's estimate of how many labels are wrong
  (``cleanlab.count.num_label_issues``; cleanlab's ``filter_by="low_self_confidence"``), so the first N rows are
  complete: no image scored lower than one of them is left out;
- the images confident learning flags by the estimated noise rate between each pair of classes (cleanlab's default,
  ``filter_by="prune_by_noise_rate"``), which follow them.

Measured with 10% of the train labels moved to another class (benchmarks/label_noise.py, the same out-of-fold
probabilities for each rule), the share of the moved images within the first 2k rows (k = the number moved):

| folder | noise-rate flags only | N lowest only | both (this) |
|---|---|---|---|
| food101_mini (k = 45) | 0.82 (100 rows) | 0.89 (89 rows) | 0.89 (111 rows) |
| flowers5 (k = 345) | 0.80 (710 rows) | 0.79 (555 rows) | 0.83 (745 rows) |
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

RANK_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")


@dataclass(frozen=True)
class LabelIssue:
    """One flagged image: its index among the audited images, its label, the class the models suggest instead,
    and its label quality score (lower: more likely wrong)."""

    index: int
    given: int
    suggested: int
    score: float


def label_issues(labels: np.ndarray, probs: np.ndarray, *, rank_by: str = "self_confidence") -> list[LabelIssue]:
    """The flagged images, most suspect first.

    Args:
        labels: (images,) given class indices.
        probs: (images, classes) out-of-fold probabilities.
        rank_by: cleanlab's label quality method (one of ``RANK_METHODS``).
    """
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if rank_by not in RANK_METHODS:
        raise ValueError(f"rank_by={rank_by!r}: expected one of {', '.join(RANK_METHODS)}")
    labels = np.asarray(labels, dtype=np.int64)
    probs = _normalised(probs)
    with warnings.catch_warnings():  # cleanlab warns about classes with few examples; the summary says so
        warnings.simplefilter("ignore")
        count = num_label_issues(labels, probs)
        by_noise_rate = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
        quality = get_label_quality_scores(labels, probs, method=rank_by)
    order = np.lexsort((np.arange(len(labels)), quality))  # lowest score first, ties by index
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[order[:count]] = True
    flagged |= by_noise_rate
    order = order[flagged[order]]
    return [LabelIssue(int(i), int(labels[i]), int(probs[i].argmax()), float(quality[i])) for i in order]


def _normalised(probs: np.ndarray) -> np.ndarray:
    """Rows that sum to one (cleanlab checks it), with no exact zeros."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)
    return probs / probs.sum(axis=1, keepdims=True)


def flag_rates(issues: list[LabelIssue], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The share of each class's images flagged (by given label): the estimate of its wrong labels."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    flagged = np.bincount(np.array([i.given for i in issues], dtype=np.int64), minlength=num_classes)
    return np.divide(flagged, counts, out=np.zeros(num_classes), where=counts > 0)
