"""The ``logger`` config group (``logger=[tensorboard,mlflow,csv]``) made into objects: the only reader of
``cfg.logger``. Rank 0 alone builds them (``tasks.rank_writes``); the sweep's parent run is made by a Hydra
callback (:class:`SweepParent`) before its first job starts."""

from __future__ import annotations

import atexit
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from imgclf.errors import ConfigError
from imgclf.tasks.folders import in_sweep
from imgclf.tracking import RunInfo, TensorBoardLogger, Tracker, TrackingError

log = logging.getLogger(__name__)

SWEEP_FILES = ("summary.csv", "best.yaml")  # what a finished sweep leaves in its folder (grid and Optuna)


@dataclass
class Loggers:
    """The chosen loggers: whether TensorBoard event files are written, and the trackers beside it."""

    tensorboard: bool = True
    trackers: list[Tracker] = field(default_factory=list)

    def check(self) -> None:
        """Fail fast: every store answers before any image is decoded (TrackingError naming the store)."""
        for tracker in self.trackers:
            tracker.check()

    def log_model(self, name: str, files: list[Path]) -> None:
        for tracker in self.trackers:
            tracker.log_model(name, files)


def build(cfg: DictConfig) -> Loggers:
    """The loggers ``cfg.logger`` names, in its order (none: ``logger=[]``)."""
    made = []
    for name, node in (cfg.get("logger") or {}).items():
        try:
            made.append(instantiate(node))
        except Exception as exc:  # a misspelt or added key: Hydra's message names the argument
            cause = exc.__cause__ or exc
            raise ConfigError(f"logger.{name}: {cause}; the options are in conf/logger/{name}.yaml") from None
    return Loggers(
        tensorboard=any(isinstance(m, TensorBoardLogger) for m in made),
        trackers=[m for m in made if not isinstance(m, TensorBoardLogger)],
    )


def run_info(cfg: DictConfig, folder: Path, *, resuming: bool = False, start_epoch: int = 0) -> RunInfo:
    """What the trackers are told about this run: its folder, name, flattened config and sweep."""
    sweep_dir, name = None, str(cfg.experiment)
    if in_sweep():
        hydra = HydraConfig.get()
        sweep_dir, name = Path(hydra.sweep.dir), Path(hydra.runtime.output_dir).name  # the job's folder
    return RunInfo(
        folder=folder,
        name=name,
        params=flat_params(OmegaConf.to_container(cfg, resolve=True)),
        resuming=resuming,
        start_epoch=start_epoch,
        sweep_dir=sweep_dir,
    )


def flat_params(values: Any, prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.01}}`` -> ``{"optimizer.lr": "0.01"}``; a list is one value, as JSON."""
    if isinstance(values, dict):
        flat: dict[str, str] = {}
        for key, value in values.items():
            flat.update(flat_params(value, f"{prefix}{key}."))
        return flat
    text = json.dumps(values) if isinstance(values, (list, tuple)) else str(values)
    return {prefix.rstrip("."): text}


def log_report(
    cfg: DictConfig, loggers: Loggers, experiment: Path, metrics: dict[str, Any], folder: Path, step: int
) -> None:
    """test.py's report in the experiment's recorded run (one is started when there is none): its scalar metrics,
    named as in TensorBoard (``test/acc``) at the checkpoint's epoch, and its files."""
    scalars = {
        ("acc" if key == "accuracy" else key): float(metrics[key])
        for key in ("accuracy", "precision", "recall", "f1", "loss", "ece", "top_k_accuracy", "nll")
        if isinstance(metrics.get(key), (int, float))
    }
    for tracker in loggers.trackers:
        tracker.open(run_info(cfg, experiment, resuming=True))
        tracker.log_report(str(metrics["split"]), scalars, step, folder)
        tracker.end()


class SweepParent(Callback):
    """A sweep (grid or Optuna) as one parent run whose jobs are nested under it: made before the first job,
    its id kept in the sweep folder, where each job finds it; summary.csv and best.yaml are logged to it at the
    end. A sweep continued in the same folder (an Optuna study run again) continues its parent run."""

    def __init__(self) -> None:
        self.parents: list[Any] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        trackers = [t for t in _built(config).trackers if hasattr(t, "begin_sweep")]
        if not trackers:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser()
        params = {"sweep.overrides": " ".join(config.hydra.overrides.task), "sweep.dir": str(sweep_dir)}
        try:
            for tracker in trackers:
                tracker.begin_sweep(sweep_dir, f"{config.experiment} {sweep_dir.name}", params)
                self.parents.append(tracker)
        except TrackingError as exc:
            log.error("%s: %s", type(exc).__name__, exc)
            raise SystemExit(1) from None
        atexit.register(self._end, sweep_dir, RuntimeError("the sweep stopped before its end"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end(Path(str(config.hydra.sweep.dir)).expanduser(), None)

    def _end(self, sweep_dir: Path, error: BaseException | None) -> None:
        parents, self.parents = self.parents, []  # once: at the sweep's end, or as the process exits
        for tracker in parents:
            tracker.end_sweep(error, tuple(sweep_dir / name for name in SWEEP_FILES))


def _built(config: DictConfig) -> Loggers:
    try:
        return build(config)
    except ConfigError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        raise SystemExit(1) from None
