"""When a learning-rate scheduler steps, and on what."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class LRSchedule:
    """Steps a torch scheduler per optimizer step or per epoch, optionally on a metric.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        factory: builds the scheduler from the optimizer (``None``: constant learning rate).
        interval: ``"step"`` (after every optimizer step) or ``"epoch"`` (after validation).
        steps_on_metric: pass the monitored validation value (ReduceLROnPlateau).
    """

    def __init__(self, optimizer: torch.optim.Optimizer,
                 factory: Callable[[torch.optim.Optimizer], Any] | None = None,
                 interval: str = "epoch", steps_on_metric: bool = False) -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"scheduler.interval must be 'step' or 'epoch', got {interval!r}")
        if steps_on_metric and interval != "epoch":
            raise ValueError("scheduler.steps_on_metric needs scheduler.interval=epoch")
        self.optimizer = optimizer
        self.scheduler = factory(optimizer) if factory is not None else None
        self.interval = interval
        self.steps_on_metric = steps_on_metric

    def after_step(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, monitored: float) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if self.steps_on_metric:
            self.scheduler.step(monitored)
        else:
            self.scheduler.step()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)
