"""The most-confused class pairs of a confusion matrix, with example images: which mix-ups dominate the
errors, and what those images look like (fastai's ``most_confused``, with the share of the true class and the
files beside the counts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.atomic import csv_text
from imgclf.filenames import shown

EXAMPLES = 4  # images shown per pair


@dataclass
class ConfusedPair:
    """``count`` images of class ``true`` predicted as ``predicted``: ``share`` of the true class's images."""

    true: int
    predicted: int
    count: int
    share: float
    examples: list[int] = field(default_factory=list)  # sample indices, the most confident mistakes first


def most_confused(cm: torch.Tensor | np.ndarray, top: int | None = None, min_count: int = 1) -> list[ConfusedPair]:
    """The off-diagonal cells of ``cm`` (rows: true class, columns: predicted) holding at least ``min_count``
    images, the largest first; ties keep the matrix's row order, as fastai's ``most_confused`` does."""
    counts = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.int64)
    totals = counts.sum(1)
    pairs = [
        ConfusedPair(int(i), int(j), int(counts[i, j]), float(counts[i, j] / totals[i]))
        for i, j in zip(*np.nonzero(counts >= min_count), strict=True)
        if i != j
    ]
    pairs.sort(key=lambda p: p.count, reverse=True)  # stable: ties stay in row-major order
    return pairs[:top] if top is not None else pairs


def add_examples(pairs: list[ConfusedPair], probs: torch.Tensor, labels: torch.Tensor, n: int = EXAMPLES) -> None:
    """Fill each pair's ``examples``: its ``n`` most confident mistakes."""
    confidence, preds = probs.max(1)
    for pair in pairs:
        mine = torch.nonzero((labels == pair.true) & (preds == pair.predicted)).flatten()
        pair.examples = [int(i) for i in mine[confidence[mine].argsort(descending=True, stable=True)][:n]]


def pairs_csv(pairs: Sequence[ConfusedPair], classes: Sequence[str], paths: Sequence[str]) -> str:
    """confused_pairs.csv: true, predicted, count, share of the true class, then the example files."""
    width = max((len(p.examples) for p in pairs), default=0)
    rows = [
        [
            classes[p.true],
            classes[p.predicted],
            p.count,
            f"{p.share:.6f}",
            *[shown(paths[i]) if paths else i for i in p.examples],
            *[""] * (width - len(p.examples)),
        ]
        for p in pairs
    ]
    return csv_text(["true", "predicted", "count", "share_of_true", *(f"example{k + 1}" for k in range(width))], rows)


def pairs_markdown(pairs: Sequence[ConfusedPair], names: Sequence[str], paths: Sequence[str], figure: bool) -> str:
    """report.md's section on the pairs: a table with the example files, and the picture grid."""
    if not pairs:
        return "## Most confused pairs\n\nNo image was mistaken for another class.\n"
    rows = "\n".join(
        f"| {names[p.true]} | {names[p.predicted]} | {p.count} | {p.share:.1%} | "
        + "<br>".join(f"`{shown(paths[i]) if paths else i}`" for i in p.examples)
        + " |"
        for p in pairs
    )
    picture = "\n![most confused pairs](confused_pairs.png)\n" if figure else ""
    return f"""## Most confused pairs

The most frequent mix-ups (true -> predicted, the share of the true class's images), each with its most
confident examples; all of them in [confused_pairs.csv](confused_pairs.csv).

| true | predicted | count | share of true | examples |
|---|---|---|---|---|
{rows}
{picture}"""


def pairs_figure(
    pairs: Sequence[ConfusedPair],
    names: Sequence[str],
    picture: Callable[[int], np.ndarray],
    probs: torch.Tensor,
    paths: Sequence[str] = (),
) -> Any | None:
    """One row per pair (its label on the left), its examples side by side; None without pairs."""
    from imgclf.reporting.figures import _pyplot

    shown_pairs = [p for p in pairs if p.examples]
    if not shown_pairs:
        return None
    plt = _pyplot()
    cols = max(len(p.examples) for p in shown_pairs)
    fig, axes = plt.subplots(
        len(shown_pairs),
        cols,
        figsize=(2.3 * cols + 1.2, 2.5 * len(shown_pairs)),
        squeeze=False,
        constrained_layout=True,
    )
    confidence = probs.max(1).values
    for row, pair in zip(axes, shown_pairs, strict=True):
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
        row[0].set_ylabel(
            f"{names[pair.true]}\n-> {names[pair.predicted]}\n({pair.count}, {pair.share:.0%})", fontsize=8
        )
        for ax, i in zip(row, pair.examples, strict=False):
            ax.imshow(picture(i))
            caption = f"{float(confidence[i]):.0%}" + (f" {shown(Path(paths[i]).name)}" if paths else "")
            ax.set_title(caption, fontsize=7)
    fig.suptitle("most confused pairs (true -> predicted: count, share of true class)")
    return fig
