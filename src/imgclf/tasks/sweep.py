"""A Hydra callback that keeps ``summary.csv`` in a sweep's directory up to date."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from imgclf.experiment.atomic import write_text_atomic

FIELDS = ("job", "overrides", "status", "best", "error", "dir")


class SweepSummary(Callback):
    """After every sweep job, rewrite ``<sweep dir>/summary.csv``: one row per job with its
    overrides, status (COMPLETED / FAILED), best monitored value and output directory.

    Rewritten after each job, so it is complete up to the last finished job even if the
    sweep itself dies.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
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
        path = Path(config.hydra.sweep.dir) / "summary.csv"
        rows = _read(path) + [row]
        rows.sort(key=lambda r: int(r["job"]))
        text = io.StringIO()
        writer = csv.DictWriter(text, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, text.getvalue())


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
