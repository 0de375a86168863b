"""The test report: every file of ``experiments/<experiment>/test*/``, a terminal table and
TensorBoard entries.

Files: ``metrics.json``, ``per_class.csv``, ``confusion_matrix.csv`` and ``.png``,
``predictions.csv``, ``misclassified.png``, ``reliability.png``, ``confused_pairs.csv`` and ``.png``,
``cam_mistakes.png`` and ``cam_correct.png`` (class activation maps), ``coverage_accuracy.png`` (answering only
above a confidence threshold: the "not sure" point the checkpoint stores) and ``report.md``.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.abstain import Abstain
from imgclf.atomic import csv_text, staged_folder, write_text_atomic
from imgclf.errors import ReportError
from imgclf.filenames import shown
from imgclf.reporting import confusion, explain, figures, selective, statistics
from imgclf.reporting.events import EventFile
from imgclf.reporting.metrics import calibration_error, summarize, topk_accuracy
from imgclf.reporting.outputs import Outputs

log = logging.getLogger(__name__)

PER_CLASS = ("precision", "recall", "f1")


@dataclass
class SplitResult:
    """A model's outputs on one split, and what is needed to describe them."""

    outputs: Outputs
    classes: list[str]
    paths: list[str]
    image: Callable[[int], np.ndarray]  # (H, W, 3) uint8 picture of sample i, as the model saw it
    info: dict[str, Any]  # split, checkpoint, epoch, data_root, experiment, ...
    temperature: float = 1.0  # logits are divided by it (1: uncalibrated)
    display_names: dict[str, str] = field(default_factory=dict)
    abstain: Abstain | None = None  # the checkpoint's "not sure" thresholds (imgclf.abstain)
    ood_scores: np.ndarray | None = None  # (N,) out-of-distribution scores (abstain.ood), for an OOD threshold

    def names(self) -> list[str]:
        return [self.display_names.get(c, c) for c in self.classes]


def compute(result: SplitResult, *, top_k: int, bootstrap: int) -> tuple[dict[str, Any], torch.Tensor]:
    """metrics.json's content and the (calibrated) probabilities of every sample."""
    logits, labels = result.outputs.logits, result.outputs.labels
    num_classes = len(result.classes)
    probs = torch.softmax(logits.double() / result.temperature, 1)
    summary = summarize(logits, labels, num_classes)
    metrics: dict[str, Any] = {
        **result.info,
        "samples": summary["samples"],
        "loss": result.outputs.loss,
        "accuracy": summary["accuracy"],
        **{m: summary[m] for m in PER_CLASS},
        **{f"{m}_weighted": summary[f"{m}_weighted"] for m in PER_CLASS},
    }
    k = min(top_k, num_classes - 1)
    if k >= 2:
        metrics.update(top_k=k, top_k_accuracy=topk_accuracy(probs, labels, k))
    if bootstrap:
        ci = statistics.bootstrap_ci(logits.argmax(1), labels, num_classes, resamples=bootstrap)
        metrics.update(accuracy_ci=ci["accuracy"], f1_ci=ci["f1"], ci_level=0.95, bootstrap_resamples=bootstrap)
    metrics.update(
        ece=calibration_error(probs, labels),
        nll=statistics.nll(logits, labels, result.temperature),
        temperature=result.temperature,
    )
    if result.temperature != 1.0:
        metrics.update(
            ece_uncalibrated=calibration_error(torch.softmax(logits.double(), 1), labels),
            nll_uncalibrated=statistics.nll(logits, labels),
        )
    metrics["per_class"] = {
        name: {**{m: summary[f"per_class_{m}"][i] for m in PER_CLASS}, "support": summary["per_class_support"][i]}
        for i, name in enumerate(result.classes)
    }
    absent = [result.classes[i] for i in summary["absent_classes"]]  # nothing to score: not in the macro averages
    metrics.update(
        confusion_matrix=summary["confusion_matrix"].tolist(),
        classes=result.classes,
        display_names=result.display_names,
        absent_classes=absent,
        macro_average_over=[c for c in result.classes if c not in absent],
    )
    return metrics, probs


def write(
    folder: str | Path,
    result: SplitResult,
    *,
    top_k: int = 5,
    bootstrap: int = 1000,
    mistakes: int = 16,
    tensorboard: str | Path | None = None,
    step: int = 0,
    explained: explain.Explain | None = None,
) -> dict[str, Any]:
    """Write every report file to ``folder`` (and, given ``tensorboard``, add the split's metrics,
    PR curves and figures to that run at ``step``); return metrics.json's content. ``explained`` says which
    most-confused pairs and class activation maps it shows (None: the default counts, no maps).

    The files are written to a folder beside ``folder`` that replaces it only once they all are (and the
    TensorBoard file is): ``folder`` holds one whole report, the previous one or this one (docs/reliability.md J7).

    Raises:
        ReportError: a file could not be written (a full disk); ``folder`` is left as it was.
    """
    folder = Path(folder)
    metrics, probs = compute(result, top_k=top_k, bootstrap=bootstrap)
    if metrics["absent_classes"]:
        log.warning(
            "the %s split has no images of %s: its macro precision, recall and F1 average the %d classes present",
            metrics.get("split", ""),
            ", ".join(metrics["absent_classes"]),
            len(metrics["macro_average_over"]),
        )
    cm = torch.tensor(metrics["confusion_matrix"])
    pics = pictures(result, probs, cm, mistakes)
    explained = explained or explain.Explain()
    pairs, more = explain.figures(
        explained, probs, result.outputs.labels, cm, result.names(), result.image, result.paths
    )
    pics.update(more)
    extra = explain.markdown(explained, pairs, pics, result.names(), result.paths)
    metrics["not_sure"], pics["coverage_accuracy"], unsure = selective.report(
        probs.numpy(), result.outputs.labels.numpy(), result.abstain, result.ood_scores, resamples=bootstrap
    )
    extra = unsure + (f"\n{extra}" if extra else "")
    try:
        with staged_folder(folder) as staging:
            write_files(staging, metrics, result, probs, pics, top_k=top_k, extra=extra)
            if explained.pairs:
                write_text_atomic(
                    staging / "confused_pairs.csv", confusion.pairs_csv(pairs, result.classes, result.paths)
                )
            if tensorboard is not None:
                try:
                    log_to_tensorboard(tensorboard, metrics, result, probs, pics, step)
                except OSError as exc:
                    raise not_written(exc, Path(tensorboard), folder) from exc
    except OSError as exc:
        raise not_written(exc, folder, folder) from exc
    finally:
        for fig in pics.values():
            figures.close(fig)
    return metrics


def not_written(exc: OSError, path: Path, report: Path) -> ReportError:
    """The error of a write to ``path`` that failed (with the free space there when it ran out); the report
    folder ``report`` is the old one."""
    said = f"could not write {path}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        place = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        said += (
            f" ({shutil.disk_usage(place).free / 2**20:.0f} MiB free in {place}; the file size limit of this "
            "process may be lower: ulimit -f)"
        )
    return ReportError(
        f"{said}; {report} is left as it was. Free some space or make it writable (or write "
        "elsewhere: paths.experiments=..., paths.runs=...), then run the same command again"
    )


def write_files(
    folder: Path,
    metrics: dict[str, Any],
    result: SplitResult,
    probs: torch.Tensor,
    pics: dict[str, Any],
    *,
    top_k: int,
    extra: str = "",
) -> None:
    """Every report file in ``folder`` (the figures are left open); ``extra``: more sections of report.md."""
    write_text_atomic(folder / "metrics.json", json.dumps(metrics, indent=2))
    write_text_atomic(
        folder / "per_class.csv",
        csv_text(
            ["class", "name", *PER_CLASS, "support"],
            [
                [c, n, *(f"{metrics['per_class'][c][m]:.6f}" for m in PER_CLASS), metrics["per_class"][c]["support"]]
                for c, n in zip(result.classes, result.names(), strict=True)
            ],
        ),
    )
    cm = torch.tensor(metrics["confusion_matrix"])
    write_text_atomic(
        folder / "confusion_matrix.csv",
        csv_text(
            ["true \\ predicted", *result.classes],
            [[c, *row] for c, row in zip(result.classes, cm.tolist(), strict=True)],
        ),
    )
    write_text_atomic(folder / "predictions.csv", predictions_csv(result, probs, min(top_k, len(result.classes))))
    for name, fig in pics.items():
        figures.save(fig, folder / f"{name}.png", close=False)
    write_text_atomic(folder / "report.md", markdown(metrics, result, extra))


def pictures(result: SplitResult, probs: torch.Tensor, cm: torch.Tensor, mistakes: int) -> dict[str, Any]:
    """The report's figures by file stem: confusion matrix, worst mistakes, reliability diagram."""
    labels = result.outputs.labels
    calibrated = statistics.reliability(probs, labels) if result.temperature != 1.0 else None
    raw = statistics.reliability(torch.softmax(result.outputs.logits.double(), 1), labels)
    return {
        "confusion_matrix": figures.confusion_figure(cm, result.names(), f"{result.info.get('split', '')} split"),
        "misclassified": figures.mistakes_figure(probs, labels, result.names(), result.image, mistakes, result.paths),
        "reliability": figures.reliability_figure(raw, calibrated),
    }


def predictions_csv(result: SplitResult, probs: torch.Tensor, k: int) -> str:
    """One row per image: path, true, pred, confidence, then the k best classes and probabilities."""
    top_p, top_i = probs.topk(k, dim=1)
    header = ["path", "true", "pred", "confidence"] + [f"{kind}{j + 1}" for j in range(k) for kind in ("top", "p")]
    rows = []
    for n in range(len(result.outputs.labels)):
        guesses = [v for j in range(k) for v in (result.classes[int(top_i[n, j])], f"{float(top_p[n, j]):.6f}")]
        path = shown(result.paths[n]) if result.paths else n  # a name that is not UTF-8: its bytes as \\xNN
        rows.append([path, result.classes[int(result.outputs.labels[n])], guesses[0], guesses[1], *guesses])
    return csv_text(header, rows)


def headline(metrics: dict[str, Any]) -> list[str]:
    """The overall numbers, one per line: accuracy with its interval, top-k, F1, calibration."""
    lines = [
        f"accuracy {metrics['accuracy']:.4f}" + _ci(metrics, "accuracy_ci"),
        f"macro F1 {metrics['f1']:.4f}" + _ci(metrics, "f1_ci"),
    ]
    if "top_k_accuracy" in metrics:
        lines.append(f"top-{metrics['top_k']} accuracy {metrics['top_k_accuracy']:.4f}")
    if metrics.get("absent_classes"):
        lines.append(
            f"macro precision, recall and F1 average the {len(metrics['macro_average_over'])} classes "
            f"present; no images of {', '.join(metrics['absent_classes'])} in this split"
        )
    calibration = f"ECE {metrics['ece']:.4f}, NLL {metrics['nll']:.4f}"
    if "ece_uncalibrated" in metrics:
        calibration += (
            f" at temperature {metrics['temperature']:.3f} (uncalibrated: ECE "
            f"{metrics['ece_uncalibrated']:.4f}, NLL {metrics['nll_uncalibrated']:.4f})"
        )
    unsure = metrics.get("not_sure") or {}
    if unsure.get("answered") is not None:  # the checkpoint's "not sure" thresholds, applied to this split
        lines.append(
            f"not sure: answered {unsure['answered']} of {unsure['samples']} (coverage {unsure['coverage']:.4f}), "
            f"precision of the answered {unsure['precision']:.4f}" + _ci(unsure, "precision_ci")
        )
    return [*lines, calibration, f"loss {metrics['loss']:.4f}"]


def _ci(metrics: dict[str, Any], key: str) -> str:
    if key not in metrics:
        return ""
    low, high = metrics[key]
    return f" (95% CI {low:.4f}-{high:.4f}, bootstrap)"


def _tta(metrics: dict[str, Any]) -> str:
    tta = metrics.get("tta", "none")
    return "" if tta == "none" else f", test-time augmentation: {tta}"


def format_table(metrics: dict[str, Any], classes: list[str]) -> str:
    """A plain-text table: where the numbers come from, one row per class, then the overall values."""
    shown = {c: f"{c} {metrics.get('display_names', {}).get(c, '')}".strip() for c in classes}
    width = max([len(name) for name in shown.values()] + [12])
    lines = [
        f"{metrics['split']} split of {metrics['data_root']}: {metrics['samples']} images, "
        f"checkpoint {metrics['checkpoint']} (epoch {metrics['epoch']}){_tta(metrics)}",
        f"{'':{width}}  precision  recall     f1  support",
    ]
    for name in classes:
        row = metrics["per_class"][name]
        lines.append(
            f"{shown[name]:{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}"
        )
    for label, suffix in (("macro avg", ""), ("weighted avg", "_weighted")):
        values = [metrics[m + suffix] for m in PER_CLASS]
        lines.append(f"{label:{width}}  {values[0]:9.4f}  {values[1]:6.4f}  {values[2]:6.4f}  {metrics['samples']:7d}")
    return "\n".join(lines + headline(metrics))


def markdown(metrics: dict[str, Any], result: SplitResult, extra: str = "") -> str:
    """report.md: the headline numbers, the per-class table, links to the pictures, then ``extra``."""
    rows = "\n".join(
        f"| {name} | {metrics['per_class'][c]['precision']:.4f} | {metrics['per_class'][c]['recall']:.4f} "
        f"| {metrics['per_class'][c]['f1']:.4f} | {metrics['per_class'][c]['support']} |"
        for c, name in zip(result.classes, result.names(), strict=True)
    )
    bullets = "\n".join(f"- {line}" for line in headline(metrics))
    return f"""# Test report: {metrics["experiment"]}, {metrics["split"]} split

{metrics["samples"]} images from `{metrics["data_root"]}`; checkpoint `{metrics["checkpoint"]}` (epoch {metrics["epoch"]}){_tta(metrics)}.

{bullets}

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

## Confusion matrix

![confusion matrix](confusion_matrix.png)

Counts in [confusion_matrix.csv](confusion_matrix.csv); per-class values in [per_class.csv](per_class.csv);
every prediction with its top-{min(metrics.get("top_k", len(result.classes)), len(result.classes))} guesses in
[predictions.csv](predictions.csv).

## Most confident mistakes

![misclassified](misclassified.png)

## Calibration

![reliability diagram](reliability.png)
""" + (f"\n{extra}" if extra else "")


def log_to_tensorboard(
    folder: str | Path,
    metrics: dict[str, Any],
    result: SplitResult,
    probs: torch.Tensor,
    pics: dict[str, Any],
    step: int,
) -> None:
    """Add the split's metrics, per-class PR curves and the report's figures to the experiment's run, as one
    event file written whole (:class:`events.EventFile`).

    Raises:
        OSError: the event file could not be written; none is left.
    """
    split = metrics["split"]
    writer = EventFile()
    for key in ("accuracy", "precision", "recall", "f1", "loss", "ece", "top_k_accuracy"):
        if key in metrics:
            writer.add_scalar(f"{split}/{'acc' if key == 'accuracy' else key}", metrics[key], step)
    for i, name in enumerate(result.classes[:100]):  # PR curves: one per class, the first 100
        writer.add_pr_curve(f"{split}/pr/{name}", result.outputs.labels == i, probs[:, i].float(), step)
    for name, fig in pics.items():
        writer.add_figure(f"{split}/{name}", fig, step)
    writer.save(folder)
