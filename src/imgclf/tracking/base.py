"""What every tracker is told, and when: the run it records (:class:`RunInfo`) and the calls of
:class:`Tracker`, made by rank 0 only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imgclf.errors import ImgclfError


class TrackingError(ImgclfError):
    """A tracking store or server cannot be used; raised before training starts."""


@dataclass(frozen=True)
class TensorBoardLogger:
    """``logger=tensorboard``: the run log writes TensorBoard event files to ``runs/<experiment>/`` (curves,
    the figures of each new best, the first batch, HParams, the test report). Nothing to configure: its
    presence in ``logger`` switches those files on."""


@dataclass(frozen=True)
class RunInfo:
    """The run a tracker records.

    Args:
        folder: the experiment folder (``experiments/<name>/``), where a tracker keeps what it must find again
            on resume (MLflow's run id) or writes beside ``metrics.jsonl`` (``metrics.csv``).
        name: the run's default name (the experiment; a sweep job's overrides).
        params: the resolved config, flattened to ``a.b.c`` keys and text values.
        resuming: training continues a checkpoint of this folder: continue its tracked run, don't start a new one.
        start_epoch: epochs the resumed checkpoint completed (later records are dropped, as metrics.jsonl's).
        sweep_dir: the sweep folder of a sweep job (None otherwise): its parent run is recorded there.
    """

    folder: Path
    name: str
    params: Mapping[str, str] = field(default_factory=dict)
    resuming: bool = False
    start_epoch: int = 0
    sweep_dir: Path | None = None


class Tracker(Protocol):
    """A place a run's record goes. Only :meth:`check` and :meth:`begin` / :meth:`open` may raise (before any
    training): a store that fails later is warned about and skipped, so the run, its checkpoints and
    ``metrics.jsonl`` never depend on it."""

    def check(self) -> None:
        """Fail fast (:class:`TrackingError`) when the store cannot be reached or written."""

    def begin(self, run: RunInfo) -> None:
        """Start (or, resuming, continue) the training run's record."""

    def open(self, run: RunInfo) -> None:
        """Attach to the experiment's recorded run for test.py's report (or start one when there is none)."""

    def log_epoch(self, epoch: int, record: Mapping[str, float | None]) -> None:
        """One line of metrics.jsonl (``epoch`` and every metric, None where it is not finite)."""

    def log_figures(self, epoch: int, figures: Mapping[str, Any]) -> None:
        """The matplotlib figures of a new best epoch on val (left open: the caller closes them)."""

    def log_report(self, split: str, metrics: Mapping[str, float], step: int, folder: Path) -> None:
        """The test report of ``split``: its scalar metrics (named ``<split>/acc`` ...) and its files."""

    def log_model(self, name: str, files: list[Path]) -> None:
        """The trained model (best.pt and the files it needs) as the run's model."""

    def end(self, error: BaseException | None = None) -> None:
        """The run is over: finished, or stopped by ``error``."""
