"""The `scheduler` group's object: when a torch learning-rate scheduler steps, and on what."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


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
        self._apply_warmup()

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
        if self.scheduler is not None and self.interval == "step":
            self._step_scheduler()
        self._apply_warmup()

    def after_epoch(self, monitored: float) -> None:
        if self.scheduler is None or self.interval != "epoch":
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state.get("steps", 0)
        self.scheduled = list(state.get("scheduled", self.scheduled))
        self._apply_warmup()
