"""An answer of "not sure": the thresholds a model was given on val, and the rule every predictor applies.

A model answers an image only when its top probability (calibrated) reaches ``threshold`` and, with an
out-of-distribution score (``ood``: the energy score, or the kNN similarity to training images'
features, :mod:`imgclf.models.ood_tap`), when that score reaches ``ood_threshold``; otherwise it says "not sure" and
shows its top guesses. The record is plain data, stored in the checkpoint (``payload["abstain"]``) and in an
export's metadata, so predict, serve and the page apply it without torch. The thresholds are chosen by
:mod:`imgclf.reporting.selective` (called from ``tasks.calibration``).

This module imports numpy only: the ONNX predictor reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

GOALS = ("precision", "coverage")
OOD_SCORES = ("energy", "knn")  # imgclf.models.ood_tap.KINDS
OOD_NAMES = {"energy": "energy score", "knn": "kNN similarity"}
CONFIDENCE, OOD = "confidence", "ood"  # why an image was not answered


@dataclass(frozen=True)
class Abstain:
    """The thresholds chosen on val, and what they were chosen for (``None`` thresholds: none could be chosen,
    ``reason`` says why; such a record is kept for the report but never applied)."""

    goal: str | None = None  # precision | coverage | None
    target: float | None = None  # the precision (or coverage) the threshold keeps on val
    threshold: float | None = None  # answer when the top probability is >= this
    ood: str | None = None  # energy | knn | None
    ood_keep: float | None = None  # the share of in-distribution val images the OOD threshold keeps
    ood_threshold: float | None = None  # answer only when the OOD score is >= this
    ood_k: int | None = None  # knn: the score is the similarity to the k-th nearest training image
    temperature: float = 1.0  # the energy score's temperature (the calibrated one)
    tta: str = "none"  # the test-time augmentation the val scores were computed with
    val: dict[str, Any] | None = None  # on val at the chosen point: samples, answered, coverage, precision
    reason: str | None = None  # why no threshold was stored

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | None) -> Abstain | None:
        """The record from a checkpoint or export; None when there is none (or one from an unknown version)."""
        if not isinstance(record, Mapping):
            return None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    @property
    def active(self) -> bool:
        """Whether any threshold is applied at all."""
        return self.threshold is not None or self.ood_threshold is not None

    @property
    def ood_name(self) -> str:
        """The OOD score in words ("energy score", "kNN similarity")."""
        return OOD_NAMES.get(self.ood or "energy", str(self.ood))

    def describe(self) -> str:
        """One line for logs and the page: the thresholds and what they were chosen for."""
        parts = []
        if self.threshold is not None:
            parts.append(f"top probability >= {self.threshold:.4g} (chosen on val for {self.goal} {self.target:g})")
        if self.ood_threshold is not None:
            k = f", k={self.ood_k}" if self.ood == "knn" else ""
            parts.append(
                f"{self.ood_name} >= {self.ood_threshold:.4g} (keeps {self.ood_keep:.0%} of val images of known "
                f"classes{k})"
            )
        return "answers when " + " and ".join(parts) if parts else "answers every image"


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``T * logsumexp(logits / T)`` per row (Liu et al., 2020, "Energy-based Out-of-distribution Detection"): the
    negative free energy, high for inputs like the training data and low for others. Unlike the top probability it
    keeps the logits' scale, which a softmax throws away."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    top = z.max(axis=1, keepdims=True)
    return float(temperature) * (top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def reasons(top_probability: np.ndarray, ood_scores: np.ndarray | None, record: Abstain | None) -> list[str | None]:
    """Per image: None (answered), :data:`OOD` (not like the classes it knows) or :data:`CONFIDENCE` (too unsure).
    An image whose OOD score is unknown (an export without the score) is judged by its probability alone."""
    out: list[str | None] = []
    for i, p in enumerate(np.asarray(top_probability, dtype=np.float64)):
        why = None
        if record is not None and record.ood_threshold is not None and ood_scores is not None:
            if float(ood_scores[i]) < record.ood_threshold:
                why = OOD
        if why is None and record is not None and record.threshold is not None and p < record.threshold:
            why = CONFIDENCE
        out.append(why)
    return out


def message(why: str | None, guesses: list[str]) -> str | None:
    """What predict and the page say instead of a class: ``not sure: top guesses a, b, c``."""
    if why is None:
        return None
    lead = "not sure (not one of the classes I know)" if why == OOD else "not sure"
    return f"{lead}: top guesses {', '.join(guesses)}"


def scored(predictor: Any, images: list[Any], record: Abstain | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (B, C) of either predictor (torch or ONNX) as numpy and, when ``record`` has an OOD threshold,
    the OOD scores (B,) of the same forward pass (None otherwise, or when an export has no score output)."""
    if not images:
        return np.zeros((0, len(predictor.classes)), np.float32), None
    if record is None or record.ood_threshold is None:
        return _numpy(predictor.probabilities(images)), None
    probs, ood_scores = predictor.scores(images)
    return _numpy(probs), None if ood_scores is None else np.asarray(ood_scores, dtype=np.float64)


def _numpy(values: Any) -> np.ndarray:
    return np.asarray(values.numpy() if hasattr(values, "numpy") else values, dtype=np.float32)
