"""Hand the first batch the training loop trains on to a callback (to draw it), without changing the run.

The batch is taken where the loop has it, not made again beside it: making it again would draw from the random
streams the run uses (per-image augmentation and MixUp/CutMix use torch's global generator, a DataLoader's workers
their loader's), so the run would train on other batches than it would have without the picture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch

from imgclf.training.engine import Batch, StepExtras, TrainLoader

Show = Callable[[torch.Tensor, torch.Tensor], None]


class _Once:
    """Calls ``show`` with the first batch it is given, then never again."""

    def __init__(self, show: Show) -> None:
        self.show, self.done = show, False

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.done or not len(labels):  # an empty batch (every sample dropped) is not a picture
            return
        self.done = True
        self.show(images.detach(), labels.detach())


class TappedLoader:
    """The train loader, showing its first non-empty batch once; everything else is the loader's own."""

    def __init__(self, loader: TrainLoader, once: _Once) -> None:
        self.loader, self.once = loader, once

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels in self.loader:
            self.once(images, labels)
            yield images, labels

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.loader.set_epoch(epoch, start_batch)

    def __getattr__(self, name: str) -> Any:  # dataset, drop_metrics, batch_sampler...
        return getattr(self.loader, name)


class _TappedMix:
    """``batch_mix`` that shows its first output: the images and soft labels the model and the loss get."""

    def __init__(self, mix: Callable[[torch.Tensor, torch.Tensor], Batch], once: _Once) -> None:
        self.mix, self.once = mix, once

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        images, labels = self.mix(images, labels)
        self.once(images, labels)
        return images, labels


def tap_first_batch(loader: TrainLoader, extras: StepExtras, show: Show) -> tuple[TrainLoader, StepExtras]:
    """The loader and the step extras to train with, so that ``show(images, labels)`` gets the first batch the loop
    trains on, once: after MixUp/CutMix when there is a ``batch_mix`` (then the loader is returned as it is),
    else as the loader yields it (on the CPU, before the loop moves it to the device)."""
    once = _Once(show)
    if extras.batch_mix is not None:
        return loader, dataclasses.replace(extras, batch_mix=_TappedMix(extras.batch_mix, once))
    return TappedLoader(loader, once), extras
