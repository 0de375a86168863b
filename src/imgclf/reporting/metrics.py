"""Classification metrics from a confusion matrix accumulated on the device."""

from __future__ import annotations

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true, predicted) pairs: rows are true classes, columns predictions."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def summarize(cm: torch.Tensor) -> dict[str, float | list[float] | list[int]]:
    """Accuracy, macro and weighted precision/recall/F1 and per-class values.

    Classes with no predictions get precision 0 (and no support gets recall 0), as in
    scikit-learn with ``zero_division=0``.
    """
    cm = cm.detach().to("cpu", torch.float64)
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    total = float(support.sum())
    weights = support / max(total, 1.0)
    out: dict[str, float | list[float] | list[int]] = {
        "accuracy": float(tp.sum()) / max(total, 1.0),
        "samples": int(total),
    }
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[name] = float(values.mean())
        out[f"{name}_weighted"] = float((values * weights).sum())
        out[f"per_class_{name}"] = values.tolist()
    out["per_class_support"] = [int(s) for s in support.tolist()]
    return out
