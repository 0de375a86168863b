"""A fault in the middle of training, told in the user's terms (RELIABILITY E2-E4)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from imgclf.errors import TrainingError
from imgclf.experiment.folder import ExperimentDir
from imgclf.training.state import Diverged


def training_error(cfg: DictConfig, exc: BaseException, device: torch.device, exp: ExperimentDir) -> BaseException:
    """The :class:`TrainingError` that says what happened and what to do, or ``exc`` itself when it is none of ours."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kept = f"{exp.last} keeps the last finished epoch" if exp.last.exists() else "no checkpoint was written yet"
    if isinstance(exc, Diverged):
        return TrainingError(f"training diverged: {first}; {kept}. Lower optimizer.lr, set trainer.clip_grad_norm=1.0, "
                             "or check the inputs (dataset.normalize, bad images)")
    if isinstance(exc, torch.OutOfMemoryError):
        return TrainingError(
            f"out of memory on {device} with loader.batch_size={cfg.loader.batch_size} at "
            f"dataset.image_size={cfg.dataset.image_size} ({first}); {kept}. Lower loader.batch_size "
            "(trainer.accumulate=N keeps the effective batch), use trainer.amp=bf16 (or fp16 on CUDA), or a smaller "
            "dataset.image_size, then run the same command to resume")
    if "DataLoader" in first:
        return TrainingError(
            f"loading batches failed with loader.num_workers={cfg.loader.num_workers}: {first}; {kept}. A worker "
            "killed by the system usually ran out of memory or shared memory (/dev/shm): use loader.num_workers=0 or a "
            f"smaller loader.batch_size; a worker that hangs past loader.timeout={cfg.loader.timeout} s is stopped. "
            "Run the same command to resume")
    return exc
