"""A fault in the middle of training or evaluation, told in the user's terms (docs/reliability.md E2-E4)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from imgclf.errors import TrainingError
from imgclf.experiment.folder import ExperimentDir
from imgclf.training.state import Diverged

# what torch's CPU allocator says when malloc fails: a RuntimeError, not torch.OutOfMemoryError
CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out, on a GPU or in the CPU's allocator."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in CPU_OUT_OF_MEMORY)
    )


def training_error(cfg: DictConfig, exc: BaseException, device: torch.device, exp: ExperimentDir) -> BaseException:
    """The :class:`TrainingError` that says what happened and what to do, or ``exc`` itself when it is none of ours."""
    kept = f"{exp.last} keeps the last finished epoch" if exp.last.exists() else "no checkpoint was written yet"
    if isinstance(exc, Diverged):
        return TrainingError(
            f"training diverged: {first_line(exc)}; {kept}. Lower optimizer.lr, set "
            "trainer.clip_grad_norm=1.0, or check the inputs (dataset.normalize, bad images)"
        )
    return fault_error(
        cfg,
        exc,
        device,
        doing="training",
        kept=f"; {kept}",
        again="then run the same command to resume",
        smaller="lower loader.batch_size (trainer.accumulate=N keeps the effective batch)",
    )


def evaluation_error(cfg: DictConfig, exc: BaseException, device: torch.device) -> BaseException:
    """What :func:`training_error` says, for test.py and calibration: nothing is written before the outputs are
    all in."""
    return fault_error(
        cfg,
        exc,
        device,
        doing="evaluating",
        kept="; nothing was written",
        again="then run the same command again",
        smaller="lower loader.batch_size",
    )


def fault_error(
    cfg: DictConfig, exc: BaseException, device: torch.device, *, doing: str, kept: str, again: str, smaller: str
) -> BaseException:
    """Memory or loader-worker faults as a :class:`TrainingError` with the settings to change; else ``exc``."""
    if out_of_memory(exc):
        return TrainingError(
            f"out of memory on {device} with loader.batch_size={cfg.loader.batch_size} at "
            f"dataset.image_size={cfg.dataset.image_size} while {doing} ({first_line(exc)}){kept}. {smaller.capitalize()}, use "
            "trainer.amp=bf16 (or fp16 on CUDA), a smaller dataset.image_size, or close what else uses the memory, "
            f"{again}"
        )
    if "DataLoader" in first_line(exc):
        return TrainingError(
            f"loading batches failed while {doing} with loader.num_workers={cfg.loader.num_workers}: "
            f"{first_line(exc)}{kept}. A worker killed by the system usually ran out of memory or shared memory "
            "(/dev/shm): use loader.num_workers=0 or a smaller loader.batch_size; a worker that hangs past "
            f"loader.timeout={cfg.loader.timeout} s is stopped. {again.capitalize()}"
        )
    return exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
