"""The learning-rate range test drawn: the loss against the learning rate on a log axis, the suggestion marked,
and the same curve as TensorBoard scalars (plain lists in, so reporting needs nothing of training)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from imgclf.reporting.events import EventFile
from imgclf.reporting.figures import _pyplot


def lr_figure(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    *,
    suggested: float | None,
    steepest: float | None,
    minimum: float | None,
    title: str,
) -> Any:
    """The raw and smoothed loss per step against its learning rate (log x), with the suggested rate, the steepest
    fall and a tenth of the lowest point as vertical lines; the y range stops a little above the first smoothed
    loss, so the blow-up at the end does not flatten the part that matters."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if finite:
        ax.plot(*zip(*finite, strict=True), color="0.75", linewidth=1, label="loss per step")
    ax.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed loss")
    if suggested is not None:
        ax.axvline(suggested, color="C3", linestyle="--", linewidth=2, label=f"suggested lr {suggested:.2g} (valley)")
    if steepest is not None:
        ax.axvline(steepest, color="C1", linestyle="-.", label=f"steepest fall: {steepest:.2g}")
    if minimum is not None:
        ax.axvline(minimum, color="C2", linestyle=":", label=f"lowest loss / 10: {minimum:.2g}")
    ax.set_xscale("log")
    shown = [s for s in smoothed if math.isfinite(s)]
    if shown and shown[0] > min(shown):  # a curve that falls: from its lowest loss to a little above its first
        low, first = min(shown + [loss for _, loss in finite]), shown[0]
        ax.set_ylim(low - 0.05 * (first - low), first + 0.25 * (first - low))
    ax.set_xlabel("learning rate (optimizer.lr)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lr_events(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], fig: Any) -> EventFile:
    """TensorBoard's x axis is an integer step: the step, with the learning rate, the loss and the smoothed loss
    as three scalars, and the figure as an image."""
    events = EventFile()
    for step, (lr, loss, smooth) in enumerate(zip(lrs, losses, smoothed, strict=True)):
        events.add_scalar("lr_find/lr", lr, step)
        if math.isfinite(loss):
            events.add_scalar("lr_find/loss", loss, step)
        if math.isfinite(smooth):
            events.add_scalar("lr_find/smoothed_loss", smooth, step)
    events.add_figure("lr_find/curve", fig, 0)
    return events
