"""The one place that decides how images reach the model: their size and their normalization.

The dataset group holds the user's choice (``dataset.image_size``, ``normalize``, ``mean``, ``std``);
the network may bring the normalization its pretrained weights were trained with; ``normalize: auto``
measures the train split. :func:`resolve` weighs these once, in this order, before the model (the
network wrapped with its normalization) is built; the composition root writes the result into the
saved config and the checkpoint and nothing else changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from imgclf.data.stats import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

# dataset keys that describe how images are fed to the model, not the folder: the data source never sees them
KEYS = ("image_size", "normalize", "mean", "std")
NORMALIZE = ("imagenet", "auto", "custom")

Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class Preprocessing:
    """What every image goes through before the network: resized to ``image_size`` x ``image_size``
    (when decoded), then normalized with ``mean`` / ``std``; ``source`` says where those came from."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "model" (the pretrained weights' own), "imagenet", "auto" (measured on train) or "custom"

    def record(self) -> dict[str, object]:
        """Plain values for the checkpoint."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std), "source": self.source}


def model_stats(net: nn.Module) -> Stats | None:
    """The normalization a network's pretrained weights expect (``input_mean`` / ``input_std``), or None."""
    mean, std = getattr(net, "input_mean", None), getattr(net, "input_std", None)
    return None if mean is None or std is None else (tuple(mean), tuple(std))


def resolve(image_size: int, normalize: str, mean: Sequence[float], std: Sequence[float], *,
            expected: Stats | None, measure: Callable[[], Stats]) -> Preprocessing:
    """Decide the preprocessing.

    Args:
        image_size: ``dataset.image_size``.
        normalize: ``dataset.normalize``: ``imagenet``, ``auto`` or ``custom``.
        mean: ``dataset.mean`` (used with ``custom``).
        std: ``dataset.std`` (used with ``custom``).
        expected: the network's own normalization (:func:`model_stats`); pretrained weights expect the
            statistics they were trained with, whatever the dataset says, so these win.
        measure: the train split's statistics, called only for ``normalize: auto`` without ``expected``.
    """
    if expected is not None:
        if expected != (tuple(mean), tuple(std)):
            log.info("the model expects inputs normalized with mean %s, std %s: using them instead of the dataset's",
                     list(expected[0]), list(expected[1]))
        return Preprocessing(image_size, *expected, source="model")
    if normalize == "imagenet":
        return Preprocessing(image_size, IMAGENET_MEAN, IMAGENET_STD, source="imagenet")
    if normalize == "auto":
        measured_mean, measured_std = measure()
        log.info("normalize=auto: train mean %s, std %s", list(measured_mean), list(measured_std))
        return Preprocessing(image_size, tuple(measured_mean), tuple(measured_std), source="auto")
    return Preprocessing(image_size, tuple(mean), tuple(std), source="custom")
