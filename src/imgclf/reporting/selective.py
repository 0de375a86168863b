"""Selective classification: answer only the images the model is sure of, and say what that buys.

``choose_threshold`` picks the confidence threshold on val for a stated goal (precision of the answered images, or
a coverage), ``ood_threshold`` the out-of-distribution score's threshold; ``measure`` gives the coverage, the
precision of the answered images and its bootstrap interval on a split; ``curve`` and ``figure`` draw the
coverage/accuracy curve (the selective-risk curve of Geifman & El-Yaniv, 2017) with the chosen point. numpy only,
matplotlib on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.abstain import OOD, Abstain, reasons

MIN_ANSWERED = 20  # fewer answered val images than this: a precision measured on them says too little


@dataclass(frozen=True)
class Choice:
    """A threshold chosen on val, or (``threshold`` None) why none was."""

    threshold: float | None
    answered: int
    samples: int
    coverage: float
    precision: float
    reason: str | None = None

    def val_record(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "answered": self.answered,
            "coverage": self.coverage,
            "precision": self.precision,
        }


def _ordered(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidences highest first, the running count of correct answers, and the cut points: the indices after
    which the confidence changes (a threshold can only answer all of a tie or none of it)."""
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    conf = np.asarray(confidence, dtype=np.float64)[order]
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    cuts = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))  # last index of each run of equal values
    return conf, hits, cuts


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, goal: str, target: float, min_answered: int = MIN_ANSWERED
) -> Choice:
    """The lowest top-probability threshold meeting the goal on these (val) images, so the most are answered.

    ``goal="precision"``: the answered images (top probability >= threshold) are correct in at least ``target`` of
    cases, with at least ``min_answered`` of them. ``goal="coverage"``: at least ``target`` of the images are
    answered. When no threshold meets the goal, ``threshold`` is None and ``reason`` says why.
    """
    n = len(confidence)
    if n == 0:
        return Choice(None, 0, 0, 0.0, 0.0, "no val images to choose a threshold on")
    conf, hits, cuts = _ordered(confidence, correct)
    answered = cuts + 1
    precision = hits[cuts] / answered
    if goal == "coverage":
        ok = answered >= math.ceil(target * n - 1e-9)
        why = f"coverage {target:g} cannot be reached"  # never: answering all images reaches any coverage
    elif goal == "precision":
        ok = (precision >= target) & (answered >= min_answered)
        best = float(precision[answered >= min_answered].max()) if (answered >= min_answered).any() else float("nan")
        why = (
            f"precision {target:g} is not reached on val at any threshold that answers at least {min_answered} of its "
            f"{n} images (the best such precision is {best:.3f}): a larger val split or a lower target "
            "(abstain.target) is needed"
        )
    else:
        raise ValueError(f"goal {goal!r}: precision or coverage")
    if not ok.any():
        return Choice(None, 0, n, 0.0, 0.0, why)
    i = int(np.flatnonzero(ok)[-1]) if goal == "precision" else int(np.flatnonzero(ok)[0])
    return Choice(float(conf[cuts[i]]), int(answered[i]), n, float(answered[i] / n), float(precision[i]))


def ood_threshold(scores: np.ndarray, keep: float) -> float | None:
    """The out-of-distribution score (high: like the training data) that ``keep`` of these in-distribution (val)
    images reach: images below it are "not one of the classes I know". None without images."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if len(scores) == 0:
        return None
    drop = int(math.floor((1.0 - keep) * len(scores) + 1e-9))  # the lowest ones left out
    return float(scores[min(drop, len(scores) - 1)])


def curve(confidence: np.ndarray, correct: np.ndarray) -> dict[str, list[float]]:
    """Coverage and accuracy of the answered images at every threshold (one point per distinct confidence)."""
    if len(confidence) == 0:
        return {"threshold": [], "coverage": [], "accuracy": []}
    conf, hits, cuts = _ordered(confidence, correct)
    answered = cuts + 1
    return {
        "threshold": conf[cuts].tolist(),
        "coverage": (answered / len(conf)).tolist(),
        "accuracy": (hits[cuts] / answered).tolist(),
    }


def measure(
    answered: np.ndarray, correct: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Coverage and precision of the answered images with percentile bootstrap intervals (images resampled with
    replacement, seeded; a resample that answers nothing is left out of the precision's interval)."""
    answered = np.asarray(answered, dtype=bool)
    correct = np.asarray(correct, dtype=bool)
    n = len(answered)
    record: dict[str, Any] = {
        "samples": n,
        "answered": int(answered.sum()),
        "coverage": float(answered.mean()) if n else 0.0,
        "precision": float(correct[answered].mean()) if answered.any() else float("nan"),
    }
    if n == 0 or resamples <= 0:
        return record
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))
    took = answered[index]
    right = (took & correct[index]).sum(axis=1)
    count = took.sum(axis=1)
    tail = (1.0 - level) / 2 * 100
    record["coverage_ci"] = np.percentile(count / n, [tail, 100 - tail]).tolist()
    some = count > 0
    if some.any():
        record["precision_ci"] = np.percentile(right[some] / count[some], [tail, 100 - tail]).tolist()
    record["ci_level"] = level
    return record


def figure(points: dict[str, list[float]], chosen: dict[str, Any] | None, title: str = "") -> Any:
    """Accuracy of the answered images against coverage, the chosen threshold's point marked."""
    from imgclf.reporting.figures import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2), constrained_layout=True)
    ax.plot(
        points["coverage"],
        points["accuracy"],
        drawstyle="steps-post",
        color="tab:blue",
        label="answered above each confidence threshold",
    )
    if chosen is not None and chosen.get("answered"):
        ax.plot([chosen["coverage"]], [chosen["precision"]], "o", color="tab:red", label=chosen.get("label", "chosen"))
        interval = chosen.get("precision_ci")
        if interval:
            ax.vlines(chosen["coverage"], interval[0], interval[1], color="tab:red", alpha=0.6)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy of the answered images")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(min([0.5, *points["accuracy"]]) - 0.02, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "coverage / accuracy", fontsize=9)
    return fig


def report(
    probs: np.ndarray,
    labels: np.ndarray,
    record: Abstain | None,
    ood_scores: np.ndarray | None,
    *,
    resamples: int = 1000,
) -> tuple[dict[str, Any], Any, str]:
    """The test report's "not sure" part: metrics.json's ``not_sure`` record (the thresholds stored on val, and on
    this split the coverage and the precision of the answered images with bootstrap intervals), the
    coverage/accuracy figure with the chosen point, and report.md's section."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    points = curve(confidence, correct)
    metrics: dict[str, Any] = {"stored": record.to_dict() if record is not None else None}
    chosen = None
    if record is not None and record.active:
        whys = reasons(confidence, ood_scores, record)
        answered = np.array([why is None for why in whys])
        chosen = measure(answered, correct, resamples=resamples)
        chosen["unanswered_ood"] = sum(why == OOD for why in whys)
        metrics.update(chosen)
        cuts = [f"p >= {record.threshold:.3g}"] if record.threshold is not None else []
        cuts += [f"{record.ood_name} >= {record.ood_threshold:.3g}"] if record.ood_threshold is not None else []
        chosen = {**chosen, "label": f"thresholds chosen on val ({', '.join(cuts)})"}
    fig = figure(points, chosen, f"{len(labels)} images: answered only above a confidence threshold")
    return metrics, fig, _markdown(metrics, record)


def _markdown(metrics: dict[str, Any], record: Abstain | None) -> str:
    lines = ["## Not sure", "", "![coverage / accuracy](coverage_accuracy.png)", ""]
    if record is None:
        lines.append('The checkpoint has no "not sure" thresholds (abstain.goal / abstain.ood with calibrate=true).')
    elif not record.active:
        lines.append(f"No threshold was stored: {record.reason}.")
    else:
        precision = f"{metrics['precision']:.4f}" + (
            " (95% CI {:.4f}-{:.4f}, bootstrap)".format(*metrics["precision_ci"]) if "precision_ci" in metrics else ""
        )
        lines += [
            f"- the model {record.describe()}",
            f"- answered {metrics['answered']} of {metrics['samples']} images (coverage {metrics['coverage']:.4f}); "
            f"{metrics['unanswered_ood']} judged not one of the known classes",
            f"- precision of the answered images {precision}",
        ]
        if record.reason:
            lines.append(f"- no confidence threshold: {record.reason}")
    return "\n".join(lines) + "\n"
