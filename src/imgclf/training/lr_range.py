"""The learning-rate range test (Leslie Smith, "Cyclical Learning Rates", 2015; fastai's ``lr_find``).

The learning rate grows exponentially from ``start`` to ``end``, one value per optimizer step, while the loss is
recorded; the loss first barely moves (too small a rate), then falls (a rate that learns), then explodes (too
large). Every step is a real step of :func:`engine.train_one_epoch` (AMP, accumulation, gradient clipping,
MixUp/CutMix and the skipping of non-finite losses included), so the curve is the one training would see: the loop
gets a loader that stops when the sweep is done and a step hook in place of its scheduler that records the step's
loss and sets the next rate. The module, the optimizer, the gradient scaler and every random generator are restored
afterwards, so a caller can train from where it was.

The suggestion is fastai's "valley" (halfway along the longest fall of the smoothed loss), with its "steep" (the
fastest fall against log(lr)) and "minimum" (a tenth of the lowest point) beside it.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from imgclf.training.engine import Batch, EpochFollower, StepExtras, Totals, TrainLoader, TrainOptions, train_one_epoch
from imgclf.training.state import Diverged

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sweep:
    """How the learning rate is swept and the loss read.

    Attributes:
        start, end: the first and last learning rate of the reference parameter group (the first one: the head
            of a network with a backbone group); the other groups keep their ratio to it.
        steps: optimizer steps from ``start`` to ``end`` (fewer when the loss diverges first).
        smooth: the exponential moving average's beta for the loss (bias-corrected); 0: no smoothing.
        diverge: stop once the smoothed loss exceeds this many times its best value.
    """

    start: float = 1e-7
    end: float = 10.0
    steps: int = 100
    smooth: float = 0.98
    diverge: float = 4.0

    def __post_init__(self) -> None:
        problems = {
            "start": None if self.start > 0 else "a learning rate above 0",
            "end": None if self.end > self.start else f"a learning rate above start ({self.start})",
            "steps": None if isinstance(self.steps, int) and self.steps >= 2 else "a whole number of steps, 2 or more",
            "smooth": None if 0 <= self.smooth < 1 else "a moving average's beta in [0, 1)",
            "diverge": None if self.diverge > 1 else "a factor above 1",
        }
        for name, expected in problems.items():
            if expected is not None:
                raise SweepError(name, getattr(self, name), expected)

    def lr(self, step: int) -> float:
        """The reference group's learning rate at ``step`` (0-based)."""
        return self.start * (self.end / self.start) ** (step / (self.steps - 1))


class SweepError(ValueError):
    """A :class:`Sweep` setting that cannot work; ``key`` names it."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        super().__init__(f"{key}={value!r}: expected {expected}")
        self.key, self.value, self.expected = key, value, expected


@dataclass
class Curve:
    """The recorded sweep: per optimizer step, the reference learning rate, the mean loss of its batches and the
    smoothed loss. ``diverged``: it stopped early because the loss exploded (or was not finite)."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    diverged: bool = False


@dataclass(frozen=True)
class Suggestion:
    """What the curve suggests (every rate None when the loss never fell enough to say).

    Attributes:
        lr: the suggestion, fastai's "valley": halfway along the longest stretch over which the smoothed loss keeps
            falling (its longest falling subsequence), where the fall is under way and still far from the blow-up.
        steepest: the rate where the smoothed loss falls fastest against log(lr) (fastai's "steep").
        minimum: a tenth of the rate with the lowest smoothed loss (fastai's "minimum").
        reason: why there is no suggestion, or how it was found.
    """

    lr: float | None
    steepest: float | None
    minimum: float | None
    reason: str


def range_test(
    module: nn.Module,
    loader: TrainLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    options: TrainOptions = TrainOptions(),
    extras: StepExtras = StepExtras(),
    sweep: Sweep = Sweep(),
    followers: Sequence[EpochFollower] = (),
) -> Curve:
    """Sweep the learning rate over real steps of the training loop; ``module``, ``optimizer``, the scaler and the
    random generators are as they were afterwards.

    ``loader`` is read from epoch 0 on, again from the next epoch when it runs out; the EMA of ``extras`` takes no
    part (it changes no step). One host read per optimizer step (the step's loss), on top of the loop's own.
    """
    with restored(module, optimizer, extras.scaler):
        for follower in followers:
            follower.set_epoch(0)
        ratios = _ratios(optimizer)
        schedule = _Schedule(optimizer, ratios, sweep, Totals(device))
        schedule.set_lr(0)
        steps = _Steps(loader, sweep.steps * options.accumulate, schedule)
        try:
            train_one_epoch(
                module,
                steps,
                loss_fn,
                optimizer,
                device=device,
                options=options,
                extras=StepExtras(scaler=extras.scaler, batch_mix=extras.batch_mix),
                scheduler=schedule,  # type: ignore[arg-type]  # only its after_step() is called
                totals=schedule.totals,
                desc="lr_find",
            )
        except Diverged as exc:  # options.max_nonfinite batches in a row were not finite
            log.info("lr_find: %s", exc)
            schedule.record(math.inf)
    return schedule.curve


def _ratios(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each group's learning rate relative to the first (a backbone at ``backbone_lr_scale`` of the head's)."""
    first = optimizer.param_groups[0]["lr"]
    return [group["lr"] / first if first > 0 else 1.0 for group in optimizer.param_groups]


class _Schedule:
    """Stands in for the loop's scheduler: after each optimizer step, records the step's loss (from the loop's
    running totals, then zeroed) and sets the next learning rate, or declares the sweep done."""

    def __init__(self, optimizer: torch.optim.Optimizer, ratios: list[float], sweep: Sweep, totals: Totals) -> None:
        self.optimizer, self.ratios, self.sweep, self.totals = optimizer, ratios, sweep, totals
        self.curve = Curve()
        self.done = False
        self._average, self._best = 0.0, math.inf

    def set_lr(self, step: int) -> None:
        lr = self.sweep.lr(step)
        for group, ratio in zip(self.optimizer.param_groups, self.ratios, strict=True):
            group["lr"] = lr * ratio

    def after_step(self) -> None:
        totals = self.totals
        seen, skipped = totals.seen, totals.skipped
        loss = float(totals.loss_sum) / seen if seen and not skipped else math.inf  # the one sync of the step
        totals.loss_sum.zero_()
        totals.correct.zero_()
        totals.seen = totals.skipped = 0
        self.record(loss)

    def record(self, loss: float) -> None:
        if self.done:
            return
        step, curve, beta = len(self.curve.lrs), self.curve, self.sweep.smooth
        curve.lrs.append(self.sweep.lr(step))
        curve.losses.append(loss)
        self._average = beta * self._average + (1 - beta) * loss
        smoothed = self._average / (1 - beta ** (step + 1))
        curve.smoothed.append(smoothed)
        self._best = min(self._best, smoothed)
        if not math.isfinite(smoothed) or (step > 0 and smoothed > self.sweep.diverge * self._best):
            curve.diverged = self.done = True
        elif step + 1 >= self.sweep.steps:
            self.done = True
        else:
            self.set_lr(step + 1)


class _Steps:
    """The batches of ``total`` loop steps, read from ``loader`` epoch after epoch; ends as soon as the schedule is
    done (after the step that diverged), so the loop ends there."""

    def __init__(self, loader: TrainLoader, total: int, schedule: _Schedule) -> None:
        self.loader, self.total, self.schedule = loader, total, schedule

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[Batch]:
        given, epoch = 0, 0
        while given < self.total and not self.schedule.done:
            self.loader.set_epoch(epoch, 0)
            before = given
            for batch in self.loader:
                if given >= self.total or self.schedule.done:
                    return
                given += 1
                yield batch
            if given == before:  # an empty loader: nothing to sweep on
                return
            epoch += 1


@contextmanager
def restored(
    module: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> Iterator[None]:
    """Put back the weights and buffers, the training mode of every submodule, the optimizer's state and learning
    rates, the scaler and the random generators as they were when the block started; gradients are cleared (as
    every optimizer step of the loop leaves them)."""
    weights = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    modes = [(m, m.training) for m in module.modules()]
    state = copy.deepcopy(optimizer.state_dict())
    scaled = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
    generators = _rng_states()
    try:
        yield
    finally:
        module.load_state_dict(weights)
        for submodule, training in modes:
            submodule.training = training
        optimizer.load_state_dict(state)
        optimizer.zero_grad(set_to_none=True)
        module.zero_grad(set_to_none=True)  # as the loop leaves it: no gradient
        if scaler is not None and scaled is not None:
            scaler.load_state_dict(scaled)
        _set_rng_states(generators)


def _rng_states() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_states(states: tuple) -> None:
    python, numpy, cpu, cuda = states
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def suggest(curve: Curve, *, min_fall: float = 0.05) -> Suggestion:
    """fastai's suggestions on the smoothed loss, with its trimming: the first tenth of the steps (the average still
    filling) and the last few (where it blows up) are left out. None when the trimmed curve has fewer than 3 points
    or its lowest point is not ``min_fall`` (5%) below its first: a flat curve's steepest point is noise."""
    points = len(curve.smoothed)
    head, tail = points // 10, min(5, points // 4)
    lrs = np.array(curve.lrs[head : points - tail])
    smoothed = np.array(curve.smoothed[head : points - tail])
    if len(smoothed) < 3 or not np.isfinite(smoothed).all():
        return Suggestion(None, None, None, f"{points} step(s) recorded: too few to read a slope (raise lr_find.steps)")
    lowest = int(smoothed.argmin())
    fall = (smoothed[0] - smoothed[lowest]) / abs(smoothed[0]) if smoothed[0] else 0.0
    if fall < min_fall:
        return Suggestion(
            None,
            None,
            None,
            f"the smoothed loss never fell by {min_fall:.0%} (from {smoothed[0]:.4g} at lr {lrs[0]:.2g} to at best "
            f"{smoothed[lowest]:.4g} at lr {lrs[lowest]:.2g}): widen the range (lr_find.start/end), take more "
            "lr_find.steps, or check that the data can be learned",
        )
    start, end = _longest_fall(smoothed)
    third = (end - start) / 3
    valley = start + int(third) + int(third / 2)
    steepest = int((np.diff(smoothed) / np.diff(np.log(lrs))).argmin())
    return Suggestion(
        float(lrs[valley]),
        float(lrs[steepest]),
        float(lrs[lowest] / 10),
        f"valley: halfway along the longest fall of the smoothed loss (lr {lrs[start]:.2g} to {lrs[end]:.2g})",
    )


def _longest_fall(losses: np.ndarray) -> tuple[int, int]:
    """The first and last index of the longest strictly falling subsequence of ``losses`` (fastai's valley)."""
    lengths = [1] * len(losses)
    end = 0
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j]:
                lengths[i] = max(lengths[i], lengths[j] + 1)
        if lengths[i] > lengths[end]:
            end = i
    return max(end - lengths[end], 0), end
