"""Self-describing checkpoints of a training run, written atomically as ``best.pt`` and ``last.pt``."""

from __future__ import annotations

import platform
from typing import Any

import torch
from torch import nn

from imgclf.experiment.checkpoint import first_non_finite, rng_states, save_atomic
from imgclf.experiment.folder import ExperimentDir
from imgclf.training.scheduler import Scheduler
from imgclf.training.state import Diverged, TrainState

FORMAT_VERSION = 1


class CheckpointWriter:
    """Builds self-describing checkpoints and writes ``best.pt`` / ``last.pt`` atomically.

    Args:
        exp: the experiment directory.
        model: the trained model (a :class:`~imgclf.models.classifier.Classifier`).
        optimizer: its optimizer.
        scheduler: its learning-rate scheduler.
        meta: plain values stored in every checkpoint (class names, input size, config, ...).
    """

    def __init__(
        self,
        exp: ExperimentDir,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler,
        meta: dict[str, Any],
        scaler: torch.amp.GradScaler | None = None,
        ema: torch.optim.swa_utils.AveragedModel | None = None,
    ) -> None:
        self.exp, self.model, self.optimizer, self.scheduler = exp, model, optimizer, scheduler
        self.scaler, self.ema = scaler, ema
        self.meta = {**meta, "format": FORMAT_VERSION, "versions": versions()}

    def payload(self, state: TrainState) -> dict[str, Any]:
        return {
            **self.meta,
            # with EMA, "model" holds the averaged weights (what test and predict use) and
            # "train_model" the weights training continues from
            "model": (self.ema.module if self.ema is not None else self.model).state_dict(),
            "train_model": self.model.state_dict() if self.ema is not None else {},
            "ema_steps": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "state": state.as_dict(),
            "rng": rng_states(),
        }

    def save(self, state: TrainState, *, best: bool) -> None:
        """Write ``last.pt`` (and ``best.pt`` first when ``best``); non-finite weights are never written.

        Raises:
            Diverged: a weight is NaN or infinite; the files on disk keep the previous state.
        """
        bad = first_non_finite(self.model.state_dict())
        if bad is not None:
            raise Diverged(
                f"weight '{bad}' became NaN or infinite after epoch {state.epoch} "
                f"(batch {state.step}); it was not saved"
            )
        payload = self.payload(state)
        if best:  # the new best is durable before last.pt moves on
            save_atomic(payload, self.exp.best)
        save_atomic(payload, self.exp.last)


def versions() -> dict[str, str]:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }
