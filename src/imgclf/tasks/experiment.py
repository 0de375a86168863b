"""Where a run's files go, and how its name is shown to the user."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from imgclf.experiment.folder import ExperimentDir

log = logging.getLogger(__name__)


def config_name() -> str:
    """The primary config's name (``-cn``), for the commands the messages suggest."""
    return HydraConfig.get().job.config_name if HydraConfig.initialized() else "<config>"


def in_sweep() -> bool:
    """Whether this run is one job of a sweep (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def project_root(cfg: DictConfig) -> Path:
    """Where relative data paths point from: paths.project_root, else the folder holding conf/."""
    if cfg.paths.project_root:
        return Path(cfg.paths.project_root)
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path).parent
    return Path.cwd()


def experiment_dir(cfg: DictConfig) -> ExperimentDir:
    """Hydra's output dir (one per run or sweep job); TensorBoard mirrors it under paths.runs."""
    experiments = Path(cfg.paths.experiments)
    path = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else experiments / cfg.experiment
    try:
        relative = path.resolve().relative_to(experiments.resolve())
    except ValueError:
        relative = Path(cfg.experiment)
    return ExperimentDir(path, Path(cfg.paths.runs) / relative)


def report_finished(cfg: DictConfig, exp: ExperimentDir, payload: dict[str, Any]) -> float | None:
    """Say that the experiment is done and how to evaluate, retrain or extend it; its best value."""
    state = payload["state"]
    log.warning(
        "experiment '%s' already finished %d epochs (best %s = %s at epoch %d) in %s; nothing to do.\n"
        "  evaluate it:    python test.py -cn=%s\n"
        "  train it again: overwrite=true (deletes it) or experiment=<new name>; train longer: epochs=<more>",
        cfg.experiment, state["epoch"], cfg.monitor, state["best"], state["best_epoch"], exp.path, config_name())
    return state["best"]
