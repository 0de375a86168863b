"""Classification metrics computed by torchmetrics: confusion matrix, accuracy, precision and
recall (per class, macro and weighted), F1 from them, top-k accuracy and expected calibration error.

The per-class numbers follow scikit-learn's ``precision_recall_fscore_support(labels=range(C),
zero_division=0)``: a class that is never predicted has precision 0, a class without support has
recall 0. The macro average is the plain mean over the classes PRESENT in the evaluated split (support
> 0), scikit-learn's ``average="macro"`` with ``labels=<those classes>``: a class with no image in the
split has nothing to score, and averaging its zeros in would lower every macro score (docs/reliability.md J8).
torchmetrics has no such average (its ``macro`` leaves out only classes absent from both predictions and
targets; ``ignore_index`` drops samples, not classes), so the scores are taken per class
(``average=None``) here and averaged over the present classes; ``compute`` names the absent ones.

Counts are accumulated on the device as int64; the scores are derived from them in float64 on the
CPU (torchmetrics would divide in float32), so they are the same numbers as scikit-learn's.

F1 is the harmonic mean ``2PR / (P + R)`` of torchmetrics' precision and recall, as it always was
here and in ``statistics.bootstrap_ci``. ``MulticlassF1Score`` computes ``2TP / (2TP + FP + FN)``
instead: the same number mathematically, but it rounds differently in the last bit for about a
quarter of the classes, which would change metrics.json.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassPrecision,
    MulticlassRecall,
)

PER_CLASS = ("precision", "recall", "f1")


class SplitMetrics:
    """Classification metrics of one split, accumulated batch by batch ON THE DEVICE with torchmetrics
    (no host sync until compute()).

    Args:
        num_classes: C; labels are class indices in ``[0, C)``.
        device: where the counts live: the device the logits come from.

    Note:
        No values are copied to the host before ``compute()``. But torchmetrics counts with
        ``torch.bincount``, and PyTorch's CUDA bincount reads the input's min and max back to size
        its output, so on CUDA each ``update()`` still waits for its batch.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        # validate_args=False: the checks read values back to the host on every update. sync_on_compute=False:
        # once a process group exists torchmetrics would all-reduce in every compute(), and a compute on rank 0
        # alone (a figure, a report) would wait for the other ranks forever; a distributed validation gathers
        # the ranks' outputs instead (training.validation.validate)
        common = {"num_classes": num_classes, "validate_args": False, "sync_on_compute": False}
        per_class = {**common, "average": None, "zero_division": 0}
        self._metrics = MetricCollection(
            {
                "confusion_matrix": MulticlassConfusionMatrix(**common),
                "accuracy": MulticlassAccuracy(**common, average="micro"),
                "precision": MulticlassPrecision(**per_class),
                "recall": MulticlassRecall(**per_class),
            },
            # precision and recall share one set of per-class counts; naming the group up front
            # also skips torchmetrics' state comparison (a host sync) on the first update
            compute_groups=[["precision", "recall"]],
        ).to(device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``logits`` (N, C) and ``labels`` (N,) class indices, on the device."""
        if not len(labels):
            return  # torchmetrics cannot reshape an empty batch; it adds nothing anyway
        self._metrics.update(logits.detach().argmax(1), labels)

    def compute(self) -> dict[str, Any]:
        """Metrics of everything added since the last reset.

        Returns:
            ``accuracy``, ``samples``, the macro averages ``precision``, ``recall``, ``f1``, the
            support-weighted ``precision_weighted``, ``recall_weighted``, ``f1_weighted``, the lists
            ``per_class_precision``, ``per_class_recall``, ``per_class_f1``, ``per_class_support``,
            ``absent_classes``: indices of the classes without support (left out of the macro averages),
            and ``confusion_matrix``: (C, C) int64 on the CPU, rows true classes.
        """
        # A float64 copy on the CPU: the int64 counts convert exactly, and torchmetrics then divides
        # in float64 (as scikit-learn does) instead of float32; the device accumulators stay as
        # they are, so more batches can still be added.
        with warnings.catch_warnings():
            # no batch yet (an empty split): the zero counts are the answer, not a mistake
            warnings.filterwarnings("ignore", message=r".*called before the ``update`` method")
            exact = copy.deepcopy(self._metrics).to("cpu").set_dtype(torch.float64).compute()
        cm = exact["confusion_matrix"].long()
        support = cm.sum(1).double()
        total = float(support.sum())
        weights = support / max(total, 1.0)
        precision, recall = exact["precision"], exact["recall"]
        denom = precision + recall
        f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(denom))
        out: dict[str, Any] = {"accuracy": float(exact["accuracy"]), "samples": int(total)}
        present = support > 0
        for name, values in zip(PER_CLASS, (precision, recall, f1), strict=True):
            # over the classes present in the split (see the module docstring); 0 for an empty split
            out[name] = float(values[present].mean()) if present.any() else 0.0
            out[f"{name}_weighted"] = float((values * weights).sum())
            out[f"per_class_{name}"] = values.tolist()
        out["per_class_support"] = [int(s) for s in cm.sum(1).tolist()]
        out["absent_classes"] = [i for i, s in enumerate(out["per_class_support"]) if s == 0]
        out["confusion_matrix"] = cm
        return out

    def reset(self) -> None:
        """Forget every batch, e.g. before the next epoch."""
        self._metrics.reset()


def summarize(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """One-shot: SplitMetrics over one batch of everything (see ``SplitMetrics.compute``)."""
    metrics = SplitMetrics(num_classes, logits.device)
    metrics.update(logits, labels)
    return metrics.compute()


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true, predicted) pairs, rows true classes, columns predictions (int64), via torchmetrics."""
    metric = MulticlassConfusionMatrix(num_classes, validate_args=False, sync_on_compute=False).to(preds.device)
    metric.update(preds, labels)
    return metric.compute()


def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of samples whose true class is among the ``k`` most probable (k clamped to C), via torchmetrics.

    torchmetrics divides in float32 here, as this value always was computed (a float32 mean).
    """
    if not len(labels):
        return 0.0
    metric = MulticlassAccuracy(
        probs.shape[1], top_k=min(k, probs.shape[1]), average="micro", validate_args=False, sync_on_compute=False
    ).to(probs.device)
    metric.update(probs, labels)
    return float(metric.compute())


def calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction via torchmetrics (l1 norm, equal-width bins).

    torchmetrics stores the top-1 confidences as float32 and bins them by ``torch.bucketize(...,
    right=True)``: bin i holds [i/bins, (i+1)/bins), and a confidence of exactly 1 is a bin of its
    own. The sums over the bins are done in float64. ``statistics.reliability`` bins the same way.

    Args:
        probs: (N, C) probabilities (rows sum to 1).
        labels: (N,) class indices.
        bins: number of equal-width confidence bins in [0, 1].

    Returns:
        sum over bins of |accuracy - mean confidence| * share of samples; 0 for no samples.
    """
    if not len(labels):
        return 0.0  # torchmetrics would give NaN (0 / 0 samples)
    metric = MulticlassCalibrationError(
        probs.shape[1], n_bins=bins, norm="l1", validate_args=False, sync_on_compute=False
    ).to(probs.device)
    metric.update(probs, labels)
    return float(metric.to("cpu").set_dtype(torch.float64).compute())
