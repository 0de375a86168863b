"""The test report: ``metrics.json``, a terminal table and TensorBoard scalars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from imgclf.atomic import write_text_atomic

PER_CLASS = ("precision", "recall", "f1")


def write_metrics(folder: str | Path, summary: dict[str, Any], cm: torch.Tensor, loss: float,
                  classes: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """Write ``folder/metrics.json`` (atomically) and return what was written."""
    per_class = {
        name: {**{m: summary[f"per_class_{m}"][i] for m in PER_CLASS}, "support": summary["per_class_support"][i]}
        for i, name in enumerate(classes)
    }
    metrics = {
        **info,
        "samples": summary["samples"],
        "loss": loss,
        "accuracy": summary["accuracy"],
        **{m: summary[m] for m in PER_CLASS},
        **{f"{m}_weighted": summary[f"{m}_weighted"] for m in PER_CLASS},
        "per_class": per_class,
        "confusion_matrix": cm.cpu().tolist(),
        "classes": classes,
    }
    write_text_atomic(Path(folder) / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def format_table(metrics: dict[str, Any], classes: list[str]) -> str:
    """A plain-text table: overall values, then one row per class."""
    shown = {c: f"{c} {metrics.get('display_names', {}).get(c, '')}".strip() for c in classes}
    width = max([len(name) for name in shown.values()] + [12])
    lines = [
        f"{metrics['split']} split of {metrics['data_root']}: {metrics['samples']} images, "
        f"checkpoint {metrics['checkpoint']} (epoch {metrics['epoch']})",
        f"{'':{width}}  precision  recall     f1  support",
    ]
    for name in classes:
        row = metrics["per_class"][name]
        lines.append(f"{shown[name]:{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}")
    for label, suffix in (("macro avg", ""), ("weighted avg", "_weighted")):
        values = [metrics[m + suffix] for m in PER_CLASS]
        lines.append(f"{label:{width}}  {values[0]:9.4f}  {values[1]:6.4f}  {values[2]:6.4f}  {metrics['samples']:7d}")
    lines.append(f"{'accuracy':{width}}  {metrics['accuracy']:.4f}   loss {metrics['loss']:.4f}")
    return "\n".join(lines)


def log_to_tensorboard(folder: str | Path, metrics: dict[str, Any], step: int) -> None:
    """Add the test split's headline numbers to the experiment's TensorBoard run."""
    from torch.utils.tensorboard import SummaryWriter

    split = metrics["split"]
    with SummaryWriter(str(folder)) as writer:
        for key in ("accuracy", "precision", "recall", "f1", "loss"):
            writer.add_scalar(f"{split}/{'acc' if key == 'accuracy' else key}", metrics[key], step)
