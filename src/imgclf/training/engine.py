"""The training loop. It takes objects, never config, and returns plain numbers.

Per-step values stay on the device and are read once per epoch (and at most once a second for
the progress bar); the only per-step host read is whether the loss is finite, so that a NaN step
is skipped before it reaches the weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from imgclf.reporting.outputs import Outputs
from imgclf.training.budget import Budget
from imgclf.training.device import autocast, to_device
from imgclf.training.distributed import SINGLE, Distributed
from imgclf.training.figure_throttle import FigureThrottle
from imgclf.training.scheduler import Scheduler
from imgclf.training.state import Diverged, Interrupted, TrainState
from imgclf.training.totals import Progress, Totals
from imgclf.training.validation import validate

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainOptions:
    """How to train: the settings of ``cfg.trainer`` and the run, as the loop needs them.

    Attributes:
        epochs: train until this many epochs are done.
        monitor: the validation metric that selects ``best.pt`` (``val/acc``, ``val/f1``, ``val/loss``).
        mode: ``max`` or ``min``: the direction in which ``monitor`` improves.
        accumulate: batches whose gradients add up to one optimizer step (the loss is divided by it).
        clip_grad_norm: clip the gradients' global norm to this value before each step (None: no clipping).
        amp: mixed precision, ``none``, ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA, with a gradient scaler).
        channels_last: feed images in channels-last memory format (for a channels-last model).
        max_nonfinite: this many batches with a NaN or infinite loss in a row raise :class:`Diverged`.
        patience: stop early after this many epochs without an improvement of ``monitor`` by more than
            ``min_delta`` (None: never).
        min_delta: the smallest change that counts as an improvement for early stopping.
        progress: show tqdm progress bars.
    """

    epochs: int = 1
    monitor: str = "val/acc"
    mode: str = "max"
    accumulate: int = 1
    clip_grad_norm: float | None = None
    amp: str = "none"
    channels_last: bool = False
    max_nonfinite: int = 10
    patience: int | None = None
    min_delta: float = 0.0
    progress: bool = False


@dataclass
class StepExtras:
    """Objects that take part in every training step besides the model and the optimizer.

    Attributes:
        scaler: the fp16 gradient scaler (CUDA).
        batch_mix: a batch-level transform such as ``v2.MixUp`` that returns (images, soft labels);
            images reach it as floats in 0..1.
        ema: an exponential moving average of the weights, updated after every optimizer step; with it,
            validation (and so ``best.pt``) uses the averaged weights.
    """

    scaler: torch.amp.GradScaler | None = None
    batch_mix: Callable[[torch.Tensor, torch.Tensor], Batch] | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None


class TrainLoader(Protocol):
    """What the loop needs of a training loader (``imgclf.data.dataset.make_loader`` builds them)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Shuffle for ``epoch`` and skip the first ``start_batch`` batches (resuming mid-epoch)."""


class EpochFollower(Protocol):
    """Something that changes with the epoch: a model that unfreezes its backbone, cached feature copies."""

    def set_epoch(self, epoch: int) -> None: ...


class Checkpoints(Protocol):
    def save(self, state: TrainState, *, best: bool) -> None: ...


class EpochLog(Protocol):
    def write(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def new_best(self, epoch: int, outputs: Outputs) -> None: ...


@dataclass(frozen=True)
class Stage:
    """What :func:`fit` trains: ``module`` on these loaders, for the epochs up to ``until`` (None: all);
    ``followers`` are told the epoch before it starts (e.g. a model that unfreezes its backbone at an epoch)."""

    module: nn.Module
    train: TrainLoader
    val: Iterable[Batch]
    followers: Sequence[EpochFollower] = ()
    until: int | None = None


def _update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_grad_norm: float | None,
) -> None:
    """One optimizer step from the accumulated gradients (unscaled and clipped first if asked)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    options: TrainOptions = TrainOptions(),
    extras: StepExtras = StepExtras(),
    scheduler: Scheduler | None = None,
    totals: Totals | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    desc: str = "train",
    group: Distributed = SINGLE,
    after_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Train over ``loader`` once (or until ``should_stop()``, asked at each optimizer step); ``totals`` is updated
    in place.

    A batch whose loss is NaN or infinite is skipped (no backward pass, counted in
    ``train/skipped_steps``); ``options.max_nonfinite`` of them in a row raise :class:`Diverged`,
    before anything non-finite reaches the weights. Checking costs one host read of the loss per batch.

    With several ranks (``group``; ``model`` wrapped in DistributedDataParallel), each batch is this rank's
    slice of the global batch: the ranks agree once per batch on the global batch size (each rank's loss is
    weighted by its share, so the averaged gradient is the global batch's), on skipping the batch when any
    rank's loss is not finite, and on stopping. The returned means are over every rank.

    ``after_step`` is told the optimizer steps done in the epoch after each one (a budget times them).

    Returns:
        ``train/loss``, ``train/acc`` over the epoch so far, ``train/skipped_steps`` and ``train/images_per_s``.
    """
    totals = totals if totals is not None else Totals(device)
    seen_before = totals.seen
    batches = len(loader)  # type: ignore[arg-type]
    bar = Progress(batches, totals.steps, desc, options.progress)
    nonfinite = _NonFinite(options.max_nonfinite, batches, optimizer)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for images, labels in loader:
        ends_step = (totals.steps + 1) % options.accumulate == 0 or totals.steps + 1 >= batches
        if len(labels) or group.active:  # an empty slice still steps with the other ranks
            stop = _learn(
                model,
                images,
                labels,
                loss_fn,
                options,
                extras,
                totals,
                nonfinite,
                group,
                device,
                stop=ends_step and should_stop(),  # asked once per optimizer step
            )
        else:  # every sample failed to load (dataset.bad_files=skip): nothing to learn, but a batch of the
            totals.steps += 1  # epoch, so that a run resumed mid-epoch starts after it
            ends_step = stop = False
        bar.update(totals, seen_before)
        if not ends_step:
            continue  # keep accumulating; a stop waits for the step, so no gradient is lost
        _update(model, optimizer, extras.scaler, options.clip_grad_norm)
        if extras.ema is not None:
            extras.ema.update_parameters(model)
        if scheduler is not None:
            scheduler.after_step()
        if after_step is not None:
            after_step(-(-totals.steps // options.accumulate))
        if stop:
            break
    bar.close()
    return _epoch_metrics(totals, seen_before, time.perf_counter() - start, group, device)


class _NonFinite:
    """Counts batches in a row whose loss was NaN or infinite, and raises :class:`Diverged` at the limit."""

    def __init__(self, limit: int, batches: int, optimizer: torch.optim.Optimizer) -> None:
        self.limit, self.batches, self.optimizer, self.in_row = limit, batches, optimizer, 0

    def finite(self) -> None:
        self.in_row = 0

    def skipped(self, loss: torch.Tensor, totals: Totals) -> None:
        totals.skip()
        self.in_row += 1
        if self.in_row >= self.limit:
            raise Diverged(
                f"the loss was {float(loss.detach())} for {self.in_row} batches in a row (batch {totals.steps} "
                f"of {self.batches}, lr {self.optimizer.param_groups[0]['lr']:.3g})"
            )


def loop_inputs(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool, extras: StepExtras
) -> Batch:
    """A loader's batch as the model trains on it: on the device (channels-last when asked), then ``batch_mix``
    (MixUp/CutMix) on floats in 0..1. ``imgclf-preview`` draws exactly this."""
    images = to_device(images, device, channels_last)
    labels = labels.to(device, non_blocking=True)
    if extras.batch_mix is not None:
        images, labels = extras.batch_mix(images.float() / 255 if images.dtype == torch.uint8 else images, labels)
    return images, labels


def _learn(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: nn.Module,
    options: TrainOptions,
    extras: StepExtras,
    totals: Totals,
    nonfinite: _NonFinite,
    group: Distributed,
    device: torch.device,
    *,
    stop: bool,
) -> bool:
    """Forward and backward of one batch (skipped when a rank's loss is not finite); True when this rank
    (``stop``) or another asked to stop."""
    images, labels = loop_inputs(images, labels, device, options.channels_last, extras)
    with autocast(device, options.amp):
        logits = model(images)
        loss = loss_fn(logits, labels) if len(labels) else logits.sum() * 0  # an empty slice still steps
    finite = bool(torch.isfinite(loss.detach()))  # the one per-step host read
    total, finite, stop = group.agree(len(labels), finite, stop, device)  # the one per-step collective
    if not finite:
        nonfinite.skipped(loss, totals)
        return stop
    share = len(labels) * group.world_size / max(total, 1)  # 1.0 in one process
    scaled = loss * share / options.accumulate
    (extras.scaler.scale(scaled) if extras.scaler is not None else scaled).backward()
    if len(labels):
        totals.add(loss, logits, labels)
    else:
        totals.steps += 1
    nonfinite.finite()
    return stop


def _epoch_metrics(
    totals: Totals, seen_before: int, seconds: float, group: Distributed, device: torch.device
) -> dict[str, float]:
    """The epoch's means over every rank, and the images per second of this call."""
    loss_mean, acc = totals.reduced(group).means()
    seen = totals.seen - seen_before  # this rank's images of this call; with ranks, every rank's together
    if group.active:  # on the device: NCCL reduces no CPU tensor
        seen = int(group.sum(torch.tensor(float(seen), device=device)).item())
    return {
        "train/loss": loss_mean,
        "train/acc": acc,
        "train/skipped_steps": totals.skipped,
        "train/images_per_s": seen / max(seconds, 1e-9),
    }


def _log_epoch(epoch: int, epochs: int, metrics: dict[str, float], improved: bool) -> None:
    if metrics["train/skipped_steps"]:
        logger.warning(
            "epoch %d: skipped %d batch(es) whose loss was NaN or infinite", epoch, metrics["train/skipped_steps"]
        )
    logger.info(
        "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f f1 %.4f | lr %.3g | %.1fs, %.0f img/s%s",
        epoch,
        epochs,
        metrics["train/loss"],
        metrics["train/acc"],
        metrics["val/loss"],
        metrics["val/acc"],
        metrics["val/f1"],
        metrics["lr"],
        metrics["epoch_seconds"],
        metrics["train/images_per_s"],
        "  (new best)" if improved else "",
    )


def fit(
    stage: Stage,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    options: TrainOptions,
    *,
    device: torch.device,
    num_classes: int,
    state: TrainState,
    checkpoints: Checkpoints,
    log: EpochLog,
    extras: StepExtras = StepExtras(),
    should_stop: Callable[[], bool] = lambda: False,
    after_epoch: Callable[[int, dict[str, float]], bool] | None = None,
    group: Distributed = SINGLE,
    budget: Budget | None = None,
) -> TrainState:
    """Train from ``state`` to ``options.epochs``, validating, logging and checkpointing every epoch.

    Args:
        stage: the module and loaders; with ``stage.until``, training stops after that epoch instead (one
            stage of a run: its epochs are still shown out of ``options.epochs``).
        after_epoch: called with the epoch number and its metrics after validation, before they are logged
            (it may add its own entries, which are logged with them); True stops training after this epoch
            like early stopping. An Optuna trial reports to its study here and stops when pruned. With several
            ranks it runs on rank 0, which tells the others whether to stop.
        group: the ranks training together (see :func:`train_one_epoch`); ``checkpoints`` and ``log`` write
            on rank 0 only (the others get stand-ins that write nothing).
        budget: plans the number of epochs (at most ``options.epochs``) to end on time (``trainer.budget``):
            told every optimizer step and every epoch's seconds; its state goes into ``state.budget``.

    Raises:
        Interrupted: ``should_stop()`` turned true; ``last.pt`` was written first.
        Diverged: the loss stayed non-finite (see :func:`train_one_epoch`).
    """
    model, train_loader = stage.module, stage.train
    evaluated = extras.ema.module if extras.ema is not None else model  # with EMA, the averaged weights are kept
    epoch, mark = state.epoch, time.perf_counter()  # mark: the last epoch's end, for the budget
    figures = FigureThrottle(log.new_best)  # drawn at most a tenth of the time; the stage's best always
    while epoch < _last_epoch(options.epochs, stage.until, budget):
        if state.stopped_early:
            break
        epochs = budget.planned() if budget is not None else options.epochs
        train_loader.set_epoch(epoch, state.step)
        for follower in stage.followers:
            follower.set_epoch(epoch)
        totals = Totals.resumed(device, state.partial, group)
        lr = scheduler.lr()
        start = time.perf_counter()
        try:
            metrics = train_one_epoch(
                model,
                train_loader,
                loss_fn,
                optimizer,
                device=device,
                options=options,
                extras=extras,
                scheduler=scheduler,
                totals=totals,
                should_stop=should_stop,
                desc=f"epoch {epoch + 1}/{epochs}",
                group=group,
                after_step=None if budget is None else lambda step, done=epoch: budget.after_step(done, step),
            )
        except Diverged as exc:
            raise Diverged(f"epoch {epoch + 1}: {exc}") from None
        metrics.update(getattr(train_loader, "drop_metrics", dict)())  # samples that failed to load, if any
        if group.agree(0, True, should_stop(), device)[2]:  # every rank stops with the one that was asked
            state.step, state.partial = totals.steps, totals.reduced(group).state()
            state.budget = budget.state() if budget is not None else None
            checkpoints.save(state, best=False)
            raise Interrupted(f"stopped in epoch {epoch + 1} after {totals.steps} batches")
        val_metrics, outputs = validate(
            evaluated,
            stage.val,
            loss_fn,
            device=device,
            num_classes=num_classes,
            amp=options.amp,
            channels_last=options.channels_last,
            group=group,
        )
        metrics.update(val_metrics)
        metrics.update(getattr(stage.val, "drop_metrics", dict)())
        metrics.update({"lr": lr, "epoch_seconds": time.perf_counter() - start})
        scheduler.after_epoch(metrics[options.monitor])
        improved = state.end_epoch(epoch + 1, metrics[options.monitor], options.mode, options.min_delta)
        patience_ran_out = options.patience is not None and state.bad_epochs >= options.patience
        stopped_by_hook = group.broadcast(after_epoch is not None and group.is_main and after_epoch(epoch + 1, metrics))
        state.stopped_early = patience_ran_out or stopped_by_hook
        log.write(epoch + 1, metrics)
        if budget is not None:  # the plan for the epochs after this one, made before the checkpoint keeps it
            budget.end_epoch(epoch + 1, time.perf_counter() - mark)  # the last epoch's checkpoints included
            mark = time.perf_counter()
            state.budget = budget.state()
        checkpoints.save(state, best=improved)
        if improved:
            figures.new_best(epoch + 1, outputs)
        _log_epoch(epoch + 1, budget.planned() if budget is not None else epochs, metrics, improved)
        if patience_ran_out:
            logger.info(
                "early stopping: %s has not improved by more than %g for %d epochs (best %.4f at epoch %d)",
                options.monitor,
                options.min_delta,
                state.bad_epochs,
                state.best,
                state.best_epoch,
            )
        epoch += 1
    figures.flush()
    return state


def _last_epoch(epochs: int, until: int | None, budget: Budget | None) -> int:
    """The epoch a stage trains up to: ``epochs`` or the budget's plan, and the stage's own end."""
    last = budget.planned() if budget is not None else epochs
    return last if until is None else min(until, last)
