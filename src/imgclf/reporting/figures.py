"""Figures of a report: confusion matrix, worst mistakes, reliability diagram; predict's bar charts.

Each function returns a matplotlib Figure (Agg backend, no display needed), so the same picture
goes to a PNG file and to TensorBoard. matplotlib is imported here only, on first use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.atomic import write_atomic
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
                    ax.text(
                        j,
                        i,
                        format(values[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if values[i, j] > threshold else "black",
                    )
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], title: str = "", empty: str = "no mistakes") -> Any:
    """A grid of (H, W, 3) uint8 images, each with a short caption (``empty`` written when there are none)."""
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
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center")
    if title:
        fig.suptitle(title)
    return fig


def mistakes_figure(
    probs: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    picture: Callable[[int], np.ndarray],
    count: int = 16,
    paths: Sequence[str] = (),
) -> Any:
    """The ``count`` most confident mistakes, captioned with true class, prediction and confidence."""
    worst = worst_mistakes(probs, labels, count)
    confidence, preds = probs.max(1)
    captions = [
        f"true {names[int(labels[i])]}\npred {names[int(preds[i])]} ({float(confidence[i]):.0%})"
        + (f"\n{shown(Path(paths[i]).name)}" if paths else "")
        for i in worst
    ]  # Matplotlib: no surrogates
    return image_grid(
        [picture(i) for i in worst],
        captions,
        f"most confident mistakes ({len(worst)} of {int((preds != labels).sum())})",
    )


PLOT_COLUMNS = 4  # images side by side on a page of predict --plot
LABEL_CHARS = 22  # a class name longer than this is cut with an ellipsis, so no label leaves its panel


def _short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "\u2026"


def predictions_figure(
    images: Sequence[np.ndarray], top: Sequence[Sequence[tuple[str, float]]], captions: Sequence[str]
) -> Any:
    """A grid of up to ``PLOT_COLUMNS`` images a row, each above a bar chart of its top-k probabilities.

    Probabilities are written inside the bars' panel (the axis runs to 1.25) and class names are cut to
    ``LABEL_CHARS``, so a page of 12 images is a compact 4 x 3 grid and nothing runs off its edges.
    """
    plt = _pyplot()
    k = max((len(t) for t in top), default=1)
    n = max(len(images), 1)
    cols = min(PLOT_COLUMNS, n)
    rows = (n + cols - 1) // cols
    bar_height = 0.22 * k + 0.45
    fig = plt.figure(figsize=(3.4 * cols, (2.6 + bar_height) * rows), constrained_layout=True)
    cells = fig.add_gridspec(rows, cols)
    for i, (image, classes, caption) in enumerate(zip(images, top, captions, strict=False)):
        cell = cells[i // cols, i % cols].subgridspec(2, 1, height_ratios=[2.4, bar_height])
        picture, chart = fig.add_subplot(cell[0]), fig.add_subplot(cell[1])
        picture.imshow(image)
        picture.axis("off")
        picture.set_title(caption, fontsize=8, wrap=True)
        names = [_short(name) for name, _ in classes][::-1]
        probs = [p for _, p in classes][::-1]
        bars = chart.barh(range(len(names)), probs, color="tab:blue")
        if len(bars):
            bars[-1].set_color("tab:orange")  # the prediction
        chart.set_yticks(range(len(names)), names, fontsize=7)
        chart.set_xlim(0, 1.25)
        chart.set_xticks([0, 0.5, 1], ["0", "0.5", "1"], fontsize=7)
        chart.bar_label(bars, labels=[f"{p:.1%}" for p in probs], fontsize=7, padding=2)
    return fig


def _wilson(correct: float, count: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of an accuracy of ``correct`` out of ``count`` images."""
    share = correct / count
    centre = (share + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(share * (1 - share) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return max(0.0, centre - half), min(1.0, centre + half)


def reliability_figure(rel: Reliability, calibrated: Reliability | None = None) -> Any:
    """Accuracy against confidence per bin, the diagonal of perfect calibration, and the ECE.

    A bin of one or two images says little, so each bin is a point whose area grows with its image count,
    with the Wilson 95% interval of its accuracy as an error bar, and no line joins the bins: a bin of
    one wrong image no longer draws a spike from 1.0 to 0.0, and the counts below say how much each holds.
    """
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True, constrained_layout=True)
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    curves = [(rel, "model", "tab:blue")] + ([(calibrated, "temperature-scaled", "tab:orange")] if calibrated else [])
    largest = max(max(values.counts) for values, _, _ in curves) or 1
    for values, label, color in curves:
        counts = np.array(values.counts)
        seen = counts > 0
        conf, acc = np.array(values.confidence)[seen], np.array(values.accuracy)[seen]
        lows, highs = (
            zip(*(_wilson(a * c, int(c)) for a, c in zip(acc, counts[seen], strict=True))) if seen.any() else ((), ())
        )
        top.errorbar(
            conf,
            acc,
            yerr=np.clip([acc - np.array(lows), np.array(highs) - acc], 0, None),
            fmt="none",
            ecolor=color,
            alpha=0.5,
            capsize=2,
        )
        top.scatter(
            conf,
            acc,
            s=12 + 150 * counts[seen] / largest,
            color=color,
            alpha=0.8,
            label=f"{label} (ECE {values.ece:.3f})",
        )
    top.set_ylabel("accuracy (95% interval)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.03)
    top.legend(loc="upper left", fontsize=8)
    top.set_title("reliability diagram (point area: images in the bin)")
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
