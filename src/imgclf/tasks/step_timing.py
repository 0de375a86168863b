"""A run's optimizer step timed before any image is decoded: its network, optimizer, loss, mixed precision and batch
augmentation at the size it trains at, on random images (:mod:`imgclf.training.step_cost`).

The budget's choices that depend on the machine's speed (``trainer.amp=auto``, the ``scratch`` recipe's depth) ask
it for the cost of each candidate configuration.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig

from imgclf.data.batch_augment import batch_transform
from imgclf.tasks import build
from imgclf.training.step_cost import seconds_per_step

Measure = Callable[[DictConfig, int], float]  # (the config of one candidate, image size) -> seconds per step


def measurer(device: torch.device) -> Measure:
    """Times a candidate's real optimizer step on ``device``; the networks built for it draw nothing from the
    run's seeded generators."""

    def measure(trial: DictConfig, image_size: int) -> float:
        trial.dataset.image_size = image_size  # the augmentation's crop size reads it
        augment = None
        if trial.loader.batch_augment and trial.augmentation.get("train") is not None:
            augment, _ = batch_transform(build.transform(trial.augmentation.train))  # None: image by image
        with torch.random.fork_rng(devices=[]):
            net = build.network(trial)
            optimizer, _ = build.optimizer_and_scheduler(trial, net)
        return seconds_per_step(
            net,
            optimizer,
            build.loss(trial, device),
            image_size=image_size,
            batch=int(trial.loader.batch_size),
            num_classes=int(trial.dataset.num_classes),
            device=device,
            channels_last=bool(trial.trainer.channels_last),
            augment=augment,
            amp=str(trial.trainer.amp),
        )

    return measure
