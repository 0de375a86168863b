"""Training and evaluation loops. They take objects, never config, and return plain numbers.

Per-step values stay on the device and are read once per epoch (and at most once a second for
the progress bar); the only per-step host read is whether the loss is finite, so that a NaN step
is skipped before it reaches the weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from imgclf.reporting.metrics import confusion_matrix, summarize
from imgclf.training.scheduler import LRSchedule

logger = logging.getLogger(__name__)


class Totals:
    """Running loss and accuracy sums kept on the device."""

    def __init__(self, device: torch.device, state: dict[str, float] | None = None) -> None:
        state = state or {}
        self.loss_sum = torch.tensor(state.get("loss_sum", 0.0), device=device)
        self.correct = torch.tensor(state.get("correct", 0.0), device=device)
        self.seen = int(state.get("seen", 0))
        self.steps = int(state.get("steps", 0))
        self.skipped = int(state.get("skipped", 0))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.loss_sum += loss.detach() * n
        targets = labels.argmax(1) if labels.ndim == 2 else labels  # soft labels (MixUp/CutMix): the larger share
        self.correct += (logits.detach().argmax(1) == targets).sum()
        self.seen += n
        self.steps += 1

    def skip(self) -> None:
        """A batch consumed without training on it (its loss was not finite)."""
        self.steps += 1
        self.skipped += 1

    def state(self) -> dict[str, float]:
        """Plain values (one host sync), for checkpoints and logs."""
        return {"loss_sum": float(self.loss_sum), "correct": float(self.correct),
                "seen": self.seen, "steps": self.steps, "skipped": self.skipped}

    def means(self) -> tuple[float, float]:
        seen = max(self.seen, 1)
        return float(self.loss_sum) / seen, float(self.correct) / seen


class _Progress:
    """A tqdm bar whose loss/acc postfix is refreshed (and synced) at most once a second."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False, disable=not enabled)
        self.enabled = enabled
        self.last = time.perf_counter()
        self.start = self.last

    def update(self, totals: Totals, seen_before: int) -> None:
        self.bar.update(1)
        now = time.perf_counter()
        if self.enabled and now - self.last >= 1.0:
            loss, acc = totals.means()
            rate = (totals.seen - seen_before) / (now - self.start)
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", img_s=f"{rate:.0f}", refresh=False)
            self.last = now

    def close(self) -> None:
        self.bar.close()


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """Mixed precision for ``amp`` = ``bf16`` or ``fp16`` (``none``: full precision)."""
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp != "none")


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
            clip_grad_norm: float | None) -> None:
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


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch on ``device``; image batches (not cached feature vectors) channels-last when asked."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last and images.dim() == 4 else images


def train_one_epoch(model: nn.Module, loader: Iterable, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, *,
                    device: torch.device, schedule: LRSchedule | None = None, totals: Totals | None = None,
                    should_stop: Callable[[], bool] = lambda: False, progress: bool = False, desc: str = "train",
                    accumulate: int = 1, clip_grad_norm: float | None = None, amp: str = "none",
                    scaler: torch.amp.GradScaler | None = None, channels_last: bool = False,
                    batch_mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                    ema: torch.optim.swa_utils.AveragedModel | None = None, max_nonfinite: int = 10) -> dict[str, float]:
    """Train over ``loader`` once (or until ``should_stop()``); ``totals`` is updated in place.

    A batch whose loss is NaN or infinite is skipped (no backward pass, counted in
    ``train/skipped_steps``); ``max_nonfinite`` of them in a row raise :class:`Diverged`, before
    anything non-finite reaches the weights. Checking costs one host read of the loss per batch.

    Args:
        accumulate: batches whose gradients add up to one optimizer step (the loss is divided by it).
        clip_grad_norm: clip the gradients' global norm to this value before each step (None: no clipping).
        amp: mixed precision, ``none``, ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA, with ``scaler``).
        scaler: the gradient scaler for fp16.
        channels_last: feed images in channels-last memory format (for a channels-last model).
        batch_mix: a batch-level transform such as ``v2.MixUp`` that returns (images, soft labels);
            images reach it as floats in 0..1.
        ema: an exponential moving average of the weights, updated after every optimizer step.

    Returns:
        ``train/loss``, ``train/acc`` over the epoch so far, and ``train/images_per_s``.
    """
    totals = totals if totals is not None else Totals(device)
    seen_before = totals.seen
    batches = len(loader)  # type: ignore[arg-type]
    bar = _Progress(batches, totals.steps, desc, progress)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    bad_in_row = 0
    start = time.perf_counter()
    for images, labels in loader:
        images = to_device(images, device, channels_last)
        labels = labels.to(device, non_blocking=True)
        if batch_mix is not None:
            images, labels = batch_mix(images.float() / 255 if images.dtype == torch.uint8 else images, labels)
        with autocast(device, amp):
            logits = model(images)
            loss = loss_fn(logits, labels)
        if bool(torch.isfinite(loss.detach())):
            (scaler.scale(loss / accumulate) if scaler is not None else loss / accumulate).backward()
            totals.add(loss, logits, labels)
            bad_in_row = 0
        else:
            totals.skip()
            bad_in_row += 1
            if bad_in_row >= max_nonfinite:
                raise Diverged(f"the loss was {float(loss.detach())} for {bad_in_row} batches in a row (batch {totals.steps} "
                               f"of {batches}, lr {optimizer.param_groups[0]['lr']:.3g})")
        bar.update(totals, seen_before)
        if totals.steps % accumulate and totals.steps < batches:
            continue  # keep accumulating; a stop waits for the step, so no gradient is lost
        _update(model, optimizer, scaler, clip_grad_norm)
        if ema is not None:
            ema.update_parameters(model)
        if schedule is not None:
            schedule.after_step()
        if should_stop():
            break
    loss_mean, acc = totals.means()
    seconds = time.perf_counter() - start
    bar.close()
    return {"train/loss": loss_mean, "train/acc": acc, "train/skipped_steps": totals.skipped,
            "train/images_per_s": (totals.seen - seen_before) / max(seconds, 1e-9)}


@dataclass
class Outputs:
    """A model's outputs over a whole split, in loader order, on the CPU."""

    loss: float              # mean loss
    logits: torch.Tensor     # (N, C) float32
    labels: torch.Tensor     # (N,) class indices

    def confusion(self, num_classes: int) -> torch.Tensor:
        """Rows true classes, columns predictions."""
        return confusion_matrix(self.logits.argmax(1), self.labels, num_classes)


@torch.no_grad()
def collect(model: nn.Module, loader: Iterable, loss_fn: nn.Module, *, device: torch.device,
            progress: bool = False, desc: str = "eval", amp: str = "none",
            channels_last: bool = False) -> Outputs:
    """Logits, labels and mean loss of ``model`` over ``loader`` (one transfer to the CPU at the end)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    logits_list, labels_list = [], []
    for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        images = to_device(images, device, channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
            loss_sum += loss_fn(logits, labels).float() * labels.shape[0]
        logits_list.append(logits.float())
        labels_list.append(labels)
    if not logits_list:
        return Outputs(0.0, torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
    all_logits, all_labels = torch.cat(logits_list).cpu(), torch.cat(labels_list).cpu()
    return Outputs(float(loss_sum) / max(len(all_labels), 1), all_logits, all_labels)


def evaluate(model: nn.Module, loader: Iterable, loss_fn: nn.Module, *, device: torch.device, num_classes: int,
             prefix: str = "val", progress: bool = False, amp: str = "none",
             channels_last: bool = False) -> tuple[dict[str, float], Outputs]:
    """``<prefix>/loss``, ``<prefix>/acc`` and ``<prefix>/f1`` (macro) over ``loader``, and the outputs."""
    outputs = collect(model, loader, loss_fn, device=device, progress=progress, desc=prefix, amp=amp,
                      channels_last=channels_last)
    summary = summarize(outputs.confusion(num_classes))
    metrics = {f"{prefix}/loss": outputs.loss, f"{prefix}/acc": summary["accuracy"], f"{prefix}/f1": summary["f1"]}
    return metrics, outputs


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0                 # completed epochs
    step: int = 0                  # batches done in the unfinished epoch (after an interrupt)
    best: float | None = None      # best monitored value so far (never NaN)
    best_epoch: int = 0
    partial: dict[str, float] = field(default_factory=dict)  # Totals of the unfinished epoch
    bad_epochs: int = 0            # epochs since the monitored value last improved by min_delta
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Interrupted(Exception):
    """Training stopped on request after a step; ``last.pt`` holds the state."""


class Diverged(Exception):
    """Too many non-finite losses in a row: training cannot go on with these settings."""


class Checkpoints(Protocol):
    def save(self, state: TrainState, *, best: bool) -> None: ...


class EpochLog(Protocol):
    def write(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def new_best(self, epoch: int, outputs: Outputs) -> None: ...


def is_better(value: float, best: float | None, mode: str) -> bool:
    """A finite value that beats ``best`` in direction ``mode``; NaN never wins."""
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _log_epoch(epoch: int, epochs: int, metrics: dict[str, float], improved: bool) -> None:
    if metrics["train/skipped_steps"]:
        logger.warning("epoch %d: skipped %d batch(es) whose loss was NaN or infinite", epoch,
                       metrics["train/skipped_steps"])
    logger.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f f1 %.4f | lr %.3g | %.1fs, %.0f img/s%s",
                epoch, epochs, metrics["train/loss"], metrics["train/acc"], metrics["val/loss"], metrics["val/acc"],
                metrics["val/f1"], metrics["lr"], metrics["epoch_seconds"], metrics["train/images_per_s"],
                "  (new best)" if improved else "")


def fit(model: nn.Module, train_loader: Any, val_loader: Iterable, loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer, schedule: LRSchedule, *, epochs: int, device: torch.device,
        num_classes: int, monitor: str, mode: str, state: TrainState, checkpoints: Checkpoints, log: EpochLog,
        should_stop: Callable[[], bool] = lambda: False, progress: bool = False, patience: int | None = None,
        min_delta: float = 0.0, **step_options: Any) -> TrainState:
    """Train from ``state`` to ``epochs``, validating, logging and checkpointing every epoch.

    Args:
        patience: stop early after this many epochs without an improvement of the monitored
            value by more than ``min_delta`` (None: never).
        min_delta: the smallest change that counts as an improvement for early stopping.
        **step_options: passed to :func:`train_one_epoch` (accumulate, clip_grad_norm, amp, scaler,
            channels_last, batch_mix, ema); amp and channels_last also to :func:`evaluate`. With ``ema``,
            validation (and so best.pt) uses the averaged weights.

    Raises:
        Interrupted: ``should_stop()`` turned true; ``last.pt`` was written first.
    """
    eval_options = {k: v for k, v in step_options.items() if k in ("amp", "channels_last")}
    ema = step_options.get("ema")
    evaluated = ema.module if ema is not None else model  # with EMA, the averaged weights are validated and kept
    for epoch in range(state.epoch, epochs):
        if state.stopped_early:
            break
        train_loader.batch_sampler.set_epoch(epoch, state.step)
        for follower in (model, train_loader.dataset):  # e.g. unfreeze a backbone, read the next cached copy
            if hasattr(follower, "set_epoch"):
                follower.set_epoch(epoch)
        totals = Totals(device, state.partial)
        lr = schedule.lr()
        start = time.perf_counter()
        try:
            metrics = train_one_epoch(model, train_loader, loss_fn, optimizer, device=device, schedule=schedule,
                                      totals=totals, should_stop=should_stop, progress=progress,
                                      desc=f"epoch {epoch + 1}/{epochs}", **step_options)
        except Diverged as exc:
            raise Diverged(f"epoch {epoch + 1}: {exc}") from None
        if should_stop():
            state.step, state.partial = totals.steps, totals.state()
            checkpoints.save(state, best=False)
            raise Interrupted(f"stopped in epoch {epoch + 1} after {totals.steps} batches")
        val_metrics, outputs = evaluate(evaluated, val_loader, loss_fn, device=device, num_classes=num_classes,
                                        **eval_options)
        metrics.update(val_metrics)
        metrics.update({"lr": lr, "epoch_seconds": time.perf_counter() - start})
        schedule.after_epoch(metrics[monitor])
        _track(state, metrics[monitor], mode, min_delta, epoch + 1)
        improved = state.best_epoch == epoch + 1
        state.stopped_early = patience is not None and state.bad_epochs >= patience
        log.write(epoch + 1, metrics)
        checkpoints.save(state, best=improved)
        if improved:
            log.new_best(epoch + 1, outputs)
        _log_epoch(epoch + 1, epochs, metrics, improved)
        if state.stopped_early:
            logger.info("early stopping: %s has not improved by more than %g for %d epochs (best %.4f at epoch %d)",
                        monitor, min_delta, state.bad_epochs, state.best, state.best_epoch)
    return state


def _track(state: TrainState, value: float, mode: str, min_delta: float, epoch: int) -> None:
    """Update best value/epoch and the early-stopping counter after an epoch."""
    significant = is_better(value, None if state.best is None else
                            state.best + (min_delta if mode == "max" else -min_delta), mode)
    state.bad_epochs = 0 if significant else state.bad_epochs + 1
    state.epoch, state.step, state.partial = epoch, 0, {}
    if is_better(value, state.best, mode):
        state.best, state.best_epoch = value, epoch
