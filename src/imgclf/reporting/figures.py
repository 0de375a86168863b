"""Figures of a report: confusion matrix, worst mistakes, reliability diagram; predict's bar charts.

Each function returns a matplotlib Figure (Agg backend, no display needed), so the same picture
goes to a PNG file and to TensorBoard. matplotlib is imported here only, on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.experiment.atomic import write_atomic
from imgclf.filenames import shown
from imgclf.reporting.statistics import Reliability, worst_mistakes

ANNOTATE_UP_TO = 30  # classes; beyond that the cells are too small for numbers


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(cm: torch.Tensor, names: Sequence[str], title: str = "") -> Any:
    """Counts (left) and row-normalized shares (right); class names on both axes.

    The figure grows with the class count and the numbers are left out past
    ``ANNOTATE_UP_TO`` classes, so 100+ classes stay readable as a heat map.
    """
    plt = _pyplot()
    counts = cm.cpu().numpy().astype(np.int64)
    rows = counts.sum(1, keepdims=True)
    shares = counts / np.maximum(rows, 1)
    n = len(names)
    side = min(max(4.0, 0.28 * n + 2.5), 40.0)
    font = max(3.0, min(9.0, 300.0 / max(n, 1)))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side), constrained_layout=True)
    for ax, values, label, fmt in ((axes[0], counts, "count", "d"), (axes[1], shares, "share of true class", ".2f")):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-9))
        ax.set_xticks(range(n), names, rotation=90, fontsize=font)
        ax.set_yticks(range(n), names, fontsize=font)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({label})".strip())
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        if n <= ANNOTATE_UP_TO:
            threshold = values.max() / 2
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=font,
                            color="white" if values[i, j] > threshold else "black")
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], title: str = "") -> Any:
    """A grid of (H, W, 3) uint8 images, each with a short caption."""
    plt = _pyplot()
    n = max(len(images), 1)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.9 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    if title:
        fig.suptitle(title)
    return fig


def mistakes_figure(probs: torch.Tensor, labels: torch.Tensor, names: Sequence[str],
                    picture: Callable[[int], np.ndarray], count: int = 16, paths: Sequence[str] = ()) -> Any:
    """The ``count`` most confident mistakes, captioned with true class, prediction and confidence."""
    worst = worst_mistakes(probs, labels, count)
    confidence, preds = probs.max(1)
    captions = [f"true {names[int(labels[i])]}\npred {names[int(preds[i])]} ({float(confidence[i]):.0%})"
                + (f"\n{shown(Path(paths[i]).name)}" if paths else "") for i in worst]  # Matplotlib: no surrogates
    return image_grid([picture(i) for i in worst], captions,
                      f"most confident mistakes ({len(worst)} of {int((preds != labels).sum())})")


def predictions_figure(images: Sequence[np.ndarray], top: Sequence[Sequence[tuple[str, float]]],
                       captions: Sequence[str]) -> Any:
    """One row per image: the picture, and a bar chart of its top-k classes' probabilities."""
    plt = _pyplot()
    k = max((len(t) for t in top), default=1)
    rows = max(len(images), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(8, max(2.2, 0.35 * k + 0.8) * rows), squeeze=False,
                             width_ratios=[1, 1.6], constrained_layout=True)
    for (left, right), image, classes, caption in zip(axes, images, top, captions, strict=False):
        left.imshow(image)
        left.axis("off")
        left.set_title(caption, fontsize=8)
        names = [name for name, _ in classes][::-1]
        probs = [p for _, p in classes][::-1]
        bars = right.barh(range(len(names)), probs, color="tab:blue")
        if len(bars):
            bars[-1].set_color("tab:orange")  # the prediction
        right.set_yticks(range(len(names)), names, fontsize=8)
        right.set_xlim(0, 1)
        right.bar_label(bars, labels=[f"{p:.1%}" for p in probs], fontsize=7, padding=2)
        right.set_xlabel("probability", fontsize=8)
    return fig


def reliability_figure(rel: Reliability, calibrated: Reliability | None = None) -> Any:
    """Accuracy against confidence per bin, the diagonal of perfect calibration, and the ECE."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True,
                                      constrained_layout=True)
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    curves = [(rel, "model", "tab:blue")] + ([(calibrated, "temperature-scaled", "tab:orange")] if calibrated else [])
    for values, label, color in curves:
        seen = np.array(values.counts) > 0
        top.plot(np.array(values.confidence)[seen], np.array(values.accuracy)[seen], "o-", color=color,
                 label=f"{label} (ECE {values.ece:.3f})")
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.03)
    top.legend(loc="upper left", fontsize=8)
    top.set_title("reliability diagram")
    for values, label, color in curves:
        bottom.stairs(values.counts, rel.edges, color=color, label=label)
    bottom.set_xlabel("confidence of the top class")
    bottom.set_ylabel("images")
    return fig


def save(fig: Any, path: str | Path, *, close: bool = True) -> None:
    """Write ``fig`` as a PNG (atomically, so a kill leaves no torn file) and close it unless told not to."""
    write_atomic(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    if close:
        _pyplot().close(fig)


def close(fig: Any) -> None:
    _pyplot().close(fig)
