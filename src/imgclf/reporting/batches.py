"""Pictures of training batches as the loop receives them: the preview grid and the first batch in TensorBoard.

A batch reaches the model as uint8 images (0..255), or as floats in 0..1 once MixUp/CutMix has blended them;
the model normalizes them itself (``Classifier``), so what the loop holds is already what a person can look at.
Labels are class indices, or, after MixUp/CutMix, rows of class shares: a mixed image is captioned with its two
largest shares, so the grid shows what the loss is asked to predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from imgclf.reporting.figures import _pyplot

COLUMNS = 8  # tiles side by side in a preview grid
NAME_CHARS = 16  # a class name longer than this is cut with an ellipsis, so captions stay inside their tile
PURE = 0.995  # a soft label with this share of one class (an image mixed with its own class) reads as that class


def displayable(
    images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """A batch (B, 3, H, W) as uint8 (B, H, W, 3) pixels.

    Args:
        images: uint8 (0..255) or floats in 0..1, or normalized floats when ``mean`` and ``std`` are given.
        mean, std: the normalization to undo (the loop's batches are not normalized: leave them None).
    """
    x = images.detach().cpu()
    if x.dtype == torch.uint8:
        return x.permute(0, 2, 3, 1).contiguous().numpy()
    x = x.float()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _name(classes: Sequence[str], index: int) -> str:
    name = classes[index] if 0 <= index < len(classes) else f"class {index}"
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "\u2026"


def captions(labels: torch.Tensor, classes: Sequence[str]) -> list[str]:
    """One caption per image: the class name, or for soft labels (B, C) the two largest classes and their shares
    (``cat 70% + dog 30%``; one class when it holds nearly all of the label)."""
    labels = labels.detach().cpu()
    if labels.ndim == 1:
        return [_name(classes, int(label)) for label in labels]
    shown = []
    for row in labels.float():
        shares, top = row.topk(min(2, len(row)))
        if float(shares[0]) >= PURE * float(row.sum()) or len(top) == 1:
            shown.append(_name(classes, int(top[0])))
            continue
        shown.append(" + ".join(f"{_name(classes, int(i))} {float(s):.0%}" for s, i in zip(shares, top, strict=True)))
    return shown


def batch_figure(images: np.ndarray, titles: Sequence[str], title: str = "", columns: int = COLUMNS) -> Any:
    """A grid of (H, W, 3) uint8 tiles, each under its caption; one axes with an image per tile."""
    plt = _pyplot()
    n = max(len(images), 1)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows + 0.4), squeeze=False, constrained_layout=True)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image, interpolation="nearest")  # small images: their pixels, not a blur of them
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def batch_grid(
    images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], title: str = "", limit: int = 32
) -> Any:
    """The first ``limit`` images of a batch as the loop received it, captioned with their (mixed) labels."""
    shown = min(limit, len(labels))
    return batch_figure(displayable(images[:shown]), captions(labels[:shown], classes), title)


def first_batch_to_tensorboard(
    writer: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    *,
    step: int = 0,
    limit: int = 32,
    tag: str = "train/first_batch",
) -> None:
    """The first training batch in TensorBoard (as MMPretrain's browse_dataset shows it): a captioned grid under
    ``tag`` and the exact pixels under ``<tag>_pixels`` (the grid is resampled for display).

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (``RunLog.writer``).
        images, labels: the batch as the loop received it (after augmentation and MixUp/CutMix).
        classes: class names, in label order.
        step: the global step to file it under.
        limit: at most this many images of the batch.
    """
    shown = min(limit, len(labels))
    if not shown:
        return
    writer.add_figure(tag, batch_grid(images, labels, classes, limit=shown), step)  # closes the figure
    writer.add_images(f"{tag}_pixels", displayable(images[:shown]), step, dataformats="NHWC")
    writer.flush()
