"""Statistics of the training images: per-channel mean/std and class weights."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from imgclf.data.cache import decode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHUNK = 256  # images per step: bounded memory for memory-mapped caches of any size


def channel_stats(
    images: np.ndarray | None, rows: Sequence[int], paths: Sequence[str], image_size: int, resize: str = "squash"
) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each RGB channel (0..1 scale) over the given images.

    Args:
        images: the decoded (N, H, W, 3) uint8 array, or None to decode ``paths`` instead.
        rows: rows of ``images`` to use.
        paths: the files (used when ``images`` is None).
        image_size: working size (when decoding).
        resize: how each image becomes the square (when decoding; ``images.RESIZE_MODES``).
    """
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for start in range(0, len(rows), CHUNK):
        if images is not None:
            chunk = np.asarray(images[list(rows[start : start + CHUNK])], dtype=np.float64)
        else:
            chunk = np.stack([decode(p, image_size, resize) for p in paths[start : start + CHUNK]]).astype(np.float64)
        chunk /= 255.0
        total += chunk.sum(axis=(0, 1, 2))
        squares += (chunk**2).sum(axis=(0, 1, 2))
        count += chunk.shape[0] * chunk.shape[1] * chunk.shape[2]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 1e-12))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """Inverse-frequency weights, scaled so that a balanced dataset gets 1.0 for every class."""
    counts = Counter(labels)
    total = len(labels)
    return [total / (num_classes * counts[c]) if counts[c] else 0.0 for c in range(num_classes)]
