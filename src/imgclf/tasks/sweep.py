"""Sweep jobs (``-m``): the ``summary.csv`` callback, a parallel job's share of the machine, and the
per-epoch hook of an Optuna trial."""

from __future__ import annotations

import atexit
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from imgclf.sweeps import summary
from imgclf.tasks.folders import in_sweep

log = logging.getLogger(__name__)

AfterEpoch = Callable[[int, dict[str, float]], bool]


class SweepSummary(Callback):
    """After every sweep job, update ``<sweep dir>/summary.csv``: one row per job with its overrides,
    status (COMPLETED / FAILED), best monitored value and output directory.

    Updated after each job, so it is complete up to the last finished job even if the sweep itself dies.
    The Optuna sweeper writes the table of its trials itself, from the study (pruned trials marked).
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or config.get("sweep_trial"):
            return
        ok = job_return.status == JobStatus.COMPLETED
        value = job_return._return_value if ok else None
        row = {
            "job": config.hydra.job.num,
            "overrides": " ".join(config.hydra.overrides.task),
            "status": job_return.status.name,
            "best": "" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.6g}",
            "error": "" if ok else f"{type(job_return._return_value).__name__}: {job_return._return_value}"[:500],
            "dir": config.hydra.runtime.output_dir,
        }
        summary.update(Path(config.hydra.sweep.dir), [row])

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A grid sweep ends with one line naming its best job, also when a job failed: Hydra then raises before
        any end-of-sweep callback, so the line is written as the process exits. (The Optuna sweeper names its
        best trial itself.)"""
        if "Optuna" not in str(config.hydra.sweeper.get("_target_", "")):
            atexit.register(_closing_line, Path(config.hydra.sweep.dir) / summary.NAME, config.monitor, config.mode)


def _closing_line(path: Path, monitor: str, mode: str) -> None:
    if path.exists():
        log.info(summary.closing_line(summary.read(path), monitor, mode, path))


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine (the joblib launcher's n_jobs; else 1)."""
    if not in_sweep():
        return 1
    n = HydraConfig.get().launcher.get("n_jobs") or 1
    return int(n) if int(n) > 0 else (os.cpu_count() or 1)


def prepare_job(cfg: DictConfig) -> None:
    """A job that runs beside others (hydra/launcher=joblib) takes its share of the CPU threads, so the
    jobs do not oversubscribe the cores; with ``device=auto`` on a machine with several GPUs, job N
    trains on GPU N mod count. Nothing changes for a single run or a one-at-a-time sweep."""
    n_jobs = parallel_jobs()
    if n_jobs <= 1 or "LOCAL_RANK" in os.environ:  # a torchrun rank: torch.distributed placed it already
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // n_jobs))
    job = int(HydraConfig.get().job.num)
    if cfg.device == "auto" and torch.cuda.device_count() > 1:
        cfg.device = f"cuda:{job % torch.cuda.device_count()}"
    log.info(
        "sweep job %d, %d at a time: %d of %d CPU thread(s), device %s",
        job,
        n_jobs,
        torch.get_num_threads(),
        cores,
        cfg.device,
    )


def trial_hook(cfg: DictConfig) -> AfterEpoch | None:
    """For a trial of the Optuna sweeper (``sweep_trial`` set): reports each epoch, stops when pruned."""
    spec = cfg.get("sweep_trial")
    if not spec:
        return None
    from imgclf.sweeps.trial import TrialReporter  # optuna: only in trials

    pruner_cfg = HydraConfig.get().sweeper.get("pruner") if HydraConfig.initialized() else None
    return TrialReporter(str(spec), cfg.monitor, instantiate(pruner_cfg) if pruner_cfg else None)
