"""A network trained from scratch under ``trainer.budget``: fewer blocks per stage when the configured depth would
not get ``trainer.budget_min_epochs`` epochs (the ``scratch`` recipe's step-down).

A deep network that the budget stops after a few epochs learns less than a shallower one that gets twice as many:
on flowers5 at 32 px the recipe's two blocks per stage ran 28 epochs in 15 minutes on 2 cores (test accuracy
0.686), one block per stage 60 (0.726) (docs/recipes.md). Before any image is decoded, each depth from the
configured ``model.blocks`` down to one is timed on a few real optimizer steps of random images
(:mod:`imgclf.tasks.step_timing`: the run's batch, size, optimizer, loss, precision and batch augmentation), its
epochs are estimated as :class:`~imgclf.training.budget.Budget` first estimates them, and the deepest one that gets
``trainer.budget_min_epochs`` (at most ``epochs``) is kept; none does: the shallowest. The run then plans its
epochs from its own measured steps as any budgeted run does. The choice is written into the config, so the saved
config, the checkpoint and a resumed run say what ran; a resumed run keeps its checkpoint's depth.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from imgclf.data.folder import Splits
from imgclf.experiment.folder import ExperimentDir
from imgclf.experiment.resume import resumed_config
from imgclf.tasks import build
from imgclf.tasks.step_timing import Measure, measurer
from imgclf.training.budget import VALIDATION_SHARE
from imgclf.training.distributed import Distributed

log = logging.getLogger(__name__)


def applies(cfg: DictConfig) -> bool:
    """A budget, a least number of epochs, and a network with several blocks per stage that trains whole."""
    blocks = cfg.model.get("blocks")
    return (
        cfg.trainer.get("budget") is not None
        and cfg.trainer.get("budget_min_epochs") is not None
        and isinstance(blocks, int)
        and not isinstance(blocks, bool)
        and blocks > 1
        and cfg.model.get("freeze") in (None, "none")
        and isinstance(cfg.loader.batch_size, int)  # batch_size=auto (CUDA) is found later, on the network chosen
    )


def ladder(cfg: DictConfig) -> list[int]:
    """``model.blocks`` from the configured depth down to one block per stage."""
    return list(range(int(cfg.model.blocks), 0, -1))


def fit(
    cfg: DictConfig,
    exp: ExperimentDir,
    scanned: Splits,
    sizes: Sequence[Any],
    *,
    started: float,
    device: torch.device,
    group: Distributed,
    measure: Measure | None = None,
) -> None:
    """Write into ``cfg.model.blocks`` the deepest depth of :func:`ladder` whose estimated epochs reach
    ``trainer.budget_min_epochs`` (a resumed run: its checkpoint's depth)."""
    if not applies(cfg):
        return
    resumed = resumed_config(exp, str(cfg.get("resume", "auto")), bool(cfg.get("overwrite")))
    if resumed is not None:  # a resumed run trains the network its checkpoint holds
        cfg.model.blocks = resumed.get("model", {}).get("blocks", cfg.model.blocks)
        return
    depths = ladder(cfg)
    index = 0
    if group.is_main:  # rank 0 measures and decides; every rank trains the same network
        size = build.image_size(cfg, build.native_size(cfg), sizes).image_size
        index = _choose(cfg, depths, scanned, size, started, measure or measurer(device))
    cfg.model.blocks = depths[group.broadcast(index)]


def follow(cfg: DictConfig, config: dict[str, Any]) -> None:
    """Build what a budgeted run chose (test.py): the checkpoint's ``model.blocks``, when its ``config`` had a budget
    and a least epoch count to choose the depth by; another run's config is left as the user composed it."""
    trainer, model = config.get("trainer", {}), config.get("model", {})
    chosen = trainer.get("budget") is not None and trainer.get("budget_min_epochs") is not None
    if chosen and "blocks" in model and "blocks" in cfg.model:
        cfg.model.blocks = model["blocks"]


def _choose(
    cfg: DictConfig, depths: list[int], scanned: Splits, image_size: int, started: float, measure: Measure
) -> int:
    """The first depth whose epochs reach the least asked for; each is timed once, deepest first."""
    counts = scanned.counts()
    batch = int(cfg.loader.batch_size)  # a timed step is one batch's: with accumulation, a part of an optimizer step
    batches, val_batches = math.ceil(counts.get("train", 0) / batch), math.ceil(counts.get("val", 0) / batch)
    wanted = min(int(cfg.trainer.budget_min_epochs), int(cfg.epochs))
    lines = []
    for index, blocks in enumerate(depths):
        trial = copy.deepcopy(cfg)
        trial.model.blocks = blocks
        step = measure(trial, image_size)
        epoch = step * (batches + VALIDATION_SHARE * val_batches)
        left = float(cfg.trainer.budget) * 60 - (time.perf_counter() - started)
        epochs = max(left, 0.0) / max(epoch, 1e-9)
        lines.append(f"model.blocks={blocks}: {step:.2f} s per step of {batch}, about {epochs:.0f} epochs")
        if epochs >= wanted or index == len(depths) - 1:
            reason = (
                "as configured"
                if index == 0
                else f"the deeper ones get fewer than {wanted} epochs, trainer.budget_min_epochs"
                + ("" if epochs >= wanted else "; the shallowest, though it gets fewer too")
            )
            log.info(
                "trainer.budget=%g min, %.0f s left for %d batches per epoch at %d px; measured:\n  %s\nchose "
                "model.blocks=%d (%s)",
                cfg.trainer.budget,
                left,
                batches,
                image_size,
                "\n  ".join(lines),
                blocks,
                reason,
            )
            return index
    raise AssertionError("unreachable: the last depth is always chosen")
