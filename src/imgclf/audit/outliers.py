"""Outliers: images unlike the rest of the folder (a wrong folder's photo, a blank frame, a screenshot).

The score is cleanlab's out-of-distribution score on the embeddings (``cleanlab.outlier.OutOfDistribution``:
the mean cosine distance to an image's ``k`` nearest neighbours, mapped to 0..1, lower is more unusual). What
counts as unusual is relative to the folder: cleanlab's score is exp(-scaled mean distance), so the distance
is its -log, and an image is flagged when that distance lies beyond Tukey's far-out fence of all of them (third
quartile + 3 x the interquartile range), which a normal spread of photos rarely crosses, while an image from
elsewhere lies far beyond it. Its out-of-fold confidence is said beside it: an
outlier the models are also unsure of is one no class describes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

FENCE = 3.0  # Tukey's "far out": 3 interquartile ranges beyond the third quartile


@dataclass(frozen=True)
class Outlier:
    """A flagged image: its index, how unusual (1 - cleanlab's score: higher is more unusual), and why."""

    index: int
    score: float
    why: str


def outlier_scores(embeddings: torch.Tensor, k: int = 10) -> np.ndarray:
    """cleanlab's kNN out-of-distribution score of every row of the normalised ``embeddings`` (lower: more
    unusual); ``k`` shrinks for small folders."""
    from cleanlab.outlier import OutOfDistribution

    features = embeddings.float().cpu().numpy()
    k = max(1, min(k, len(features) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OutOfDistribution(params={"k": k}).fit_score(features=features, verbose=False)


def find_outliers(scores: np.ndarray, probs: np.ndarray, class_names: list[str]) -> list[Outlier]:
    """The images below the far-out fence of ``scores``, most unusual first, with the out-of-fold model's
    best guess and its probability."""
    distance = -np.log(np.clip(scores, 1e-300, None))
    q1, median, q3 = np.percentile(distance, [25, 50, 75])
    fence = q3 + FENCE * (q3 - q1)
    found = []
    for i in np.flatnonzero(distance > fence):
        guess = int(probs[i].argmax())
        why = (
            f"far from its nearest images: distance {distance[i]:.2f} beyond the fence {fence:.2f} "
            f"(folder median {median:.2f}); out-of-fold best guess {class_names[guess]} at {probs[i, guess]:.2f}"
        )
        found.append(Outlier(int(i), round(float(1 - scores[i]), 4), why))
    return sorted(found, key=lambda o: (-o.score, o.index))
