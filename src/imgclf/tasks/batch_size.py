"""``loader.batch_size=auto``: the batch a run trains with, found on its GPU before the loaders are built.

What the config decides here (the search itself is :mod:`imgclf.training.batch_size`):

- Where: CUDA only. On the CPU or Apple's MPS the search is refused (:func:`refuse_off_cuda`).
- How large: the largest batch that trains, less the headroom (``with_headroom``: 90%, rounded down to a multiple
  of 8), at most ``loader.max_batch_size`` and the train split's share of one rank.
- The ranks: every rank searches its own GPU, and all train with the smallest batch found.
- The learning rate: as configured, unless ``loader.auto_reference_batch`` names the batch per optimizer step that
  ``optimizer.lr`` was chosen for; then it is scaled linearly to the batch per optimizer step found
  (batch x ranks x ``trainer.accumulate``).
- Resuming: the batch (and learning rate) the run started with, read from its checkpoint, not a new search.

The number found is written into ``cfg.loader.batch_size`` (and a scaled rate into ``cfg.optimizer.lr``), so the
saved config and every checkpoint record what ran.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from imgclf.errors import CheckpointError, ConfigError, TrainingError
from imgclf.models.classifier import Classifier
from imgclf.tasks import build
from imgclf.training.batch_size import (
    HEADROOM,
    MINIMUM,
    Search,
    find_largest,
    free_memory,
    search_limit,
    trial_step,
    unchanged,
    with_headroom,
)
from imgclf.training.distributed import SINGLE, Distributed
from imgclf.training.engine import StepExtras

log = logging.getLogger(__name__)

AUTO = "auto"
OFF_CUDA = {
    "cpu": "on the CPU a batch is limited by host memory and by speed, not by the device memory this search measures "
    "(a batch too large swaps instead of failing)",
    "mps": "Apple's MPS shares the system's memory, so a batch too large slows the whole machine down (swapping) "
    "instead of failing cleanly",
}


def is_auto(cfg: DictConfig) -> bool:
    return cfg.loader.batch_size == AUTO


def refuse_off_cuda(cfg: DictConfig, device: torch.device) -> None:
    """Refuse ``loader.batch_size=auto`` on a device without a memory limit the search can find (anything but
    CUDA); callable as soon as the device is known, before any image is decoded."""
    if not is_auto(cfg) or device.type == "cuda":
        return
    why = OFF_CUDA.get(device.type, f"{device.type} has no out-of-memory error the search can rely on")
    raise ConfigError(
        f"loader.batch_size=auto finds the largest batch that fits a CUDA GPU's memory, but this run trains on "
        f"{device}: {why}. Set a number instead, e.g. loader.batch_size=64 (the quickstart's; the pretrained "
        "recipes use 32)"
    )


@dataclass(frozen=True)
class Choice:
    """The batch every rank trains with, and how it was reached.

    Attributes:
        batch_size: the smallest of the ranks' batches (0: on some rank not even the smallest batch trained).
        found: each rank's batch, in rank order (one entry without ranks).
        search: this rank's tries.
        cap: the most this rank's batch could be, and what set it (``loader.max_batch_size`` or the train split).
    """

    batch_size: int
    found: tuple[int, ...]
    search: Search
    cap: tuple[int, str]


def choose(
    step: Callable[[int], None],
    *,
    max_batch_size: int,
    train_size: int,
    group: Distributed = SINGLE,
    free: Callable[[], None] = lambda: None,
) -> Choice:
    """Search this rank's largest batch with ``step`` (one trial training step of a batch; it raises an
    out-of-memory error when the batch does not fit), keep the headroom, cap it and agree with the other ranks.

    The cap is ``max_batch_size``, and the train split's share of one rank (a larger batch only repeats the
    epoch's one batch). Every rank answers, even one that found nothing (0), so no rank waits for a missing one.
    """
    split_share = max(1, math.ceil(train_size / group.world_size))
    if max_batch_size <= split_share:
        cap = (max_batch_size, f"loader.max_batch_size={max_batch_size}")
    else:
        ranks = f" / {group.world_size} ranks" if group.active else ""
        cap = (split_share, f"the train split ({train_size} images{ranks})")
    search = find_largest(step, limit=search_limit(cap[0]), free=free)
    mine = min(cap[0], with_headroom(search.largest))
    # every rank's number, then the smallest: Distributed has no min-reduction, and gather is one collective too
    found = tuple(int(n) for n in group.gather(mine)) if group.active else (mine,)
    return Choice(min(found), found, search, cap)


def resolve_batch_size(
    cfg: DictConfig,
    model: Classifier,
    *,
    train_size: int,
    device: torch.device,
    group: Distributed = SINGLE,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    loss_fn: torch.nn.Module | None = None,
    extras: StepExtras | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    """``cfg.loader.batch_size`` as a number: itself when it is one, else (``auto``) found on ``device`` with trial
    steps of ``model`` and written into ``cfg``; with ``payload`` (resuming) the batch the run started with.

    Call it after the model, optimizer, loss and step extras are built and before the loaders: the trials use them
    (the objects not given are built from ``cfg`` for the trials alone), and leave the weights, optimizer state,
    gradient scaler and random streams as they were. When ``loader.auto_reference_batch`` scales ``optimizer.lr``,
    the given ``optimizer`` and ``scheduler`` are rebuilt in place with the new rate.

    Raises:
        ConfigError: ``auto`` on a device other than CUDA.
        TrainingError: not even a batch of 2 trains on some rank's GPU.
    """
    if not is_auto(cfg):
        return int(cfg.loader.batch_size)
    if payload is not None and _resumed(cfg, payload):
        return int(cfg.loader.batch_size)
    refuse_off_cuda(cfg, device)
    return find_batch_size(
        cfg,
        model,
        train_size=train_size,
        device=device,
        group=group,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn,
        extras=extras,
    )


def find_batch_size(
    cfg: DictConfig,
    model: Classifier,
    *,
    train_size: int,
    device: torch.device,
    group: Distributed = SINGLE,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    loss_fn: torch.nn.Module | None = None,
    extras: StepExtras | None = None,
) -> int:
    """What :func:`resolve_batch_size` does on CUDA, on any device: the search with trial steps of ``model``, the
    ranks' agreement, the learning-rate rule, ``cfg`` written and the line logged."""
    trial_optimizer = optimizer if optimizer is not None else build.optimizer_and_scheduler(cfg, model.net)[0]
    extras = extras if extras is not None else build.step_extras(cfg, model, device, None)
    step = trial_step(
        model,
        trial_optimizer,
        loss_fn if loss_fn is not None else build.loss(cfg, device),
        image_size=cfg.dataset.image_size,
        num_classes=cfg.dataset.num_classes,
        device=device,
        amp=cfg.trainer.amp,
        channels_last=cfg.trainer.channels_last,
        accumulate=cfg.trainer.accumulate,
        clip_grad_norm=cfg.trainer.clip_grad_norm,
        scaler=extras.scaler,
        batch_mix=extras.batch_mix,
    )
    unfreeze = getattr(model.net, "unfreeze_at_epoch", None)
    with unchanged(model, trial_optimizer, device, extras.scaler):
        if unfreeze is not None:  # a backbone frozen at first: the epochs after it unfreezes need the most memory
            model.set_epoch(unfreeze)
        choice = choose(
            step,
            max_batch_size=cfg.loader.max_batch_size,
            train_size=train_size,
            group=group,
            free=lambda: free_memory(device),
        )
    free_memory(device)  # the trials' optimizer state and cached blocks
    if not choice.batch_size:
        raise TrainingError(nothing_fits(cfg, choice, device, group))
    cfg.loader.batch_size = choice.batch_size
    lr_said = scale_lr(cfg, choice.batch_size, group.world_size)
    if lr_said.scaled and optimizer is not None:
        rebuild_with_lr(cfg, model, optimizer, scheduler)
    log.info("%s; %s", describe(choice, group), lr_said.text)
    return choice.batch_size


@dataclass(frozen=True)
class LrRule:
    """What the learning-rate rule did, as the log says it."""

    scaled: bool
    text: str


def scale_lr(cfg: DictConfig, batch_size: int, world_size: int = 1) -> LrRule:
    """Apply the learning-rate rule to ``cfg.optimizer.lr`` for the batch found: linear scaling from
    ``loader.auto_reference_batch`` to the batch per optimizer step, or (null) none."""
    reference = cfg.loader.get("auto_reference_batch")
    configured = cfg.optimizer.lr
    if reference is None:
        return LrRule(False, f"optimizer.lr {configured:g} as configured (not scaled)")
    per_step = batch_size * world_size * cfg.trainer.accumulate
    cfg.optimizer.lr = configured * per_step / reference
    how = (
        f" ({batch_size} x {world_size} ranks x trainer.accumulate {cfg.trainer.accumulate})"
        if per_step != batch_size
        else ""
    )
    return LrRule(
        True,
        f"optimizer.lr {cfg.optimizer.lr:g} scaled linearly from {configured:g} at batch {reference} "
        f"(loader.auto_reference_batch) to batch {per_step} per optimizer step{how}",
    )


def rebuild_with_lr(cfg: DictConfig, model: Classifier, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """The run's optimizer and scheduler made as ``cfg`` now describes them (a scaled ``optimizer.lr``), in place:
    fresh ones are built and their state loaded into the live ones, so every learning rate derived from
    ``optimizer.lr`` (a backbone's group, a scheduler's base and warm-up values) follows. Before the first step only."""
    fresh_optimizer, fresh_scheduler = build.optimizer_and_scheduler(cfg, model.net)
    optimizer.load_state_dict(fresh_optimizer.state_dict())
    if scheduler is not None:
        scheduler.load_state_dict(fresh_scheduler.state_dict())


def describe(choice: Choice, group: Distributed = SINGLE) -> str:
    """The log line's first half: the batch, what limited it, and the ranks' numbers."""
    search, capped_by = choice.search, choice.cap[1]
    if search.failed is None:  # every batch up to the search's limit trained: the cap decided, with headroom kept
        why = f"capped by {capped_by}; {search.largest} trained"
    else:
        why = f"largest that fit: {search.largest}, {HEADROOM:.0%} headroom"
    ranks = ""
    if group.active:
        ranks = (
            f"; the smallest of {group.world_size} ranks' {list(choice.found)}: global batch "
            f"{choice.batch_size * group.world_size}"
        )
    return f"batch size auto: {choice.batch_size} ({why}; {len(search.tries)} tries in {search.seconds:.1f} s){ranks}"


def nothing_fits(cfg: DictConfig, choice: Choice, device: torch.device, group: Distributed) -> str:
    ranks = [r for r, n in enumerate(choice.found) if not n]
    where = f"rank {', '.join(map(str, ranks))}'s GPU" if group.active else str(device)
    memory = ""
    if device.type == "cuda":
        memory = f" ({torch.cuda.get_device_properties(device).total_memory / 2**30:.1f} GiB)"
    return (
        f"loader.batch_size=auto: not even a batch of {MINIMUM} images of {cfg.dataset.image_size} px trains in the "
        f"memory of {where}{memory}. Use trainer.amp=bf16 (or fp16), a smaller dataset.image_size or model, or free "
        "the GPU (nvidia-smi lists what else uses it)"
    )


def _resumed(cfg: DictConfig, payload: dict[str, Any]) -> bool:
    """A resumed run trains on with the batch it started with (and the learning rate that went with it), taken from
    its checkpoint's config; False when the checkpoint names no batch."""
    saved = payload.get("config") or {}
    batch = (saved.get("loader") or {}).get("batch_size")
    if isinstance(batch, bool) or not isinstance(batch, int):
        return False
    cfg.loader.batch_size = batch
    if cfg.loader.get("auto_reference_batch") is not None and "lr" in (saved.get("optimizer") or {}):
        cfg.optimizer.lr = saved["optimizer"]["lr"]
    log.info(
        "batch size auto: %d, as the run started with (resuming; a new search could choose another); optimizer.lr %g",
        batch,
        cfg.optimizer.lr,
    )
    return True


def batch_for_evaluation(cfg: DictConfig, payload: dict[str, Any], path: Path) -> int:
    """test.py (and calibration) with ``loader.batch_size=auto``: the batch the checkpoint was trained with, written
    into ``cfg``. Evaluation keeps no gradients or optimizer state, so a batch that trained fits."""
    if not is_auto(cfg):
        return int(cfg.loader.batch_size)
    batch = ((payload.get("config") or {}).get("loader") or {}).get("batch_size")
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise CheckpointError(
            f"loader.batch_size=auto evaluates with the batch the checkpoint trained with, but {path} records none: "
            "set a number, e.g. loader.batch_size=64"
        )
    cfg.loader.batch_size = batch
    log.info("loader.batch_size=auto: evaluating in batches of %d, the batch %s trained with", batch, path.name)
    return batch
