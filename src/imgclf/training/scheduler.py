"""The `scheduler` group's object: when a torch learning-rate scheduler steps, and on what."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from imgclf.errors import ConfigError


class Scheduler:
    """Steps a torch scheduler per optimizer step or per epoch, optionally on a metric.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        factory: builds the scheduler from the optimizer (``None``: constant learning rate).
        interval: ``"step"`` (after every optimizer step) or ``"epoch"`` (after validation).
        steps_on_metric: pass the monitored validation value (ReduceLROnPlateau).
        warmup_steps: scale the learning rate linearly from 1/warmup_steps to 1 over the first
            optimizer steps. The scheduler keeps its own values underneath, so warmup combines
            with any of them.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        factory: Callable[[torch.optim.Optimizer], Any] | None = None,
        interval: str = "epoch",
        steps_on_metric: bool = False,
        warmup_steps: int = 0,
    ) -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"scheduler.interval must be 'step' or 'epoch', got {interval!r}")
        if steps_on_metric and interval != "epoch":
            raise ValueError("scheduler.steps_on_metric needs scheduler.interval=epoch")
        self.optimizer = optimizer
        self.scheduler = factory(optimizer) if factory is not None else None
        self.interval = interval
        self.steps_on_metric = steps_on_metric
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.scheduled = [group["lr"] for group in optimizer.param_groups]
        self.units: float | None = None  # with a budget: the schedule's length in its own units (follow_plan)
        self.progress = 0.0  # with a budget: how far along the schedule the run is, 0 to 1
        self.remaining: int | None = None  # with a budget: the optimizer steps the plan has left
        self._apply_warmup()

    def follow_plan(self, units: float) -> None:
        """Let :meth:`plan` lay the schedule over the optimizer steps a budget plans (``trainer.budget``).

        ``units`` is the schedule's length in its own terms (``epochs`` for a schedule stepped per epoch): the
        run's progress, 0 to 1, is mapped onto it through the torch scheduler's closed form, so a cosine ends at
        its minimum on the plan's last step whatever the number of epochs. A schedule on the monitored metric
        (ReduceLROnPlateau) knows no length and steps as before.
        """
        if self.scheduler is None or self.steps_on_metric:
            return
        if not hasattr(self.scheduler, "_get_closed_form_lr"):
            raise ConfigError(
                f"trainer.budget cannot stretch the scheduler {type(self.scheduler).__name__} over the planned "
                "steps (it has no closed form): use scheduler=cosine, step or none (or LinearLR, ExponentialLR, "
                "PolynomialLR, MultiStepLR), or trainer.budget=null"
            )
        self.units = float(units)

    def plan(self, steps_left: int) -> None:
        """The optimizer steps left in the run: the rest of the schedule is laid over them, from where it is (a
        shorter or longer plan changes how fast the learning rate moves on, never where it is)."""
        self.remaining = max(int(steps_left), 1)

    def _follow_progress(self) -> None:
        self.progress += (1.0 - self.progress) / self.remaining
        self.remaining = max(self.remaining - 1, 1)
        self.scheduler.last_epoch = self.progress * self.units
        self.scheduled = list(self.scheduler._get_closed_form_lr())

    def _apply_warmup(self) -> None:
        factor = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        for group, lr in zip(self.optimizer.param_groups, self.scheduled, strict=True):
            group["lr"] = lr * factor

    def _step_scheduler(self, *args: float) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.scheduled, strict=True):
            group["lr"] = lr  # the scheduler sees (and updates) its own values, not the warmed-up ones
        self.scheduler.step(*args)
        self.scheduled = [group["lr"] for group in self.optimizer.param_groups]

    def after_step(self) -> None:
        self.steps += 1
        if self.units is not None and self.remaining is not None:
            self._follow_progress()
        elif self.scheduler is not None and self.interval == "step":
            self._step_scheduler()
        self._apply_warmup()

    def after_epoch(self, monitored: float) -> None:
        if self.scheduler is None or self.interval != "epoch" or self.units is not None:
            return
        self._step_scheduler(*((monitored,) if self.steps_on_metric else ()))
        self._apply_warmup()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "steps": self.steps,
            "scheduled": list(self.scheduled),
            "progress": self.progress,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state.get("steps", 0)
        self.scheduled = list(state.get("scheduled", self.scheduled))
        self.progress = float(state.get("progress", 0.0))
        self._apply_warmup()
