"""Where a run's files go, and how its name is shown to the user."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from imgclf.errors import ConfigError, ExperimentError
from imgclf.experiment.folder import ExperimentDir
from imgclf.experiment.names import check_name
from imgclf.experiment.resume import SELECTION_KEYS, data_change, is_finished

log = logging.getLogger(__name__)


def config_name() -> str:
    """The primary config's name (``-cn``), for the commands the messages suggest."""
    return HydraConfig.get().job.config_name if HydraConfig.initialized() else "<config>"


def in_sweep() -> bool:
    """Whether this run is one job of a sweep (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def entry_point_run() -> bool:
    """Whether this process is one run of an entry point (``python train.py ...``, not a sweep's job, not a call of
    ``tasks.train`` from other code): then the process's age is the run's age."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN


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
    """Hydra's output dir (one per run or sweep job); TensorBoard mirrors it under paths.runs. ``experiment`` is
    checked first: one folder name, so that neither folder lies outside paths.experiments / paths.runs (J1)."""
    name = check_name(cfg.experiment)
    experiments = Path(cfg.paths.experiments)
    path = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else experiments / name
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # the command line's WritableOutput said so already; tasks.train() called directly
        raise ExperimentError(
            f"cannot write to the experiment folder {path}: {blocking} is a file, not a folder. Remove or move it, "
            "or put the experiments in another folder: paths.experiments=<folder>"
        )
    try:
        relative = path.resolve().relative_to(experiments.resolve())
    except ValueError:  # hydra.run.dir / hydra.sweep.dir elsewhere: a sweep's jobs still get a TensorBoard folder each
        relative = Path(name) / path.parent.name / path.name if in_sweep() else Path(name)
    # what overwrite=true may delete lies inside paths.experiments, or inside the folder hydra.run.dir /
    # hydra.sweep.dir put it in when they name a folder elsewhere
    under = Path(os.path.abspath(experiments)) in Path(os.path.abspath(path)).parents
    return ExperimentDir(
        path, Path(cfg.paths.runs) / relative, experiments=experiments if under else path.parent, runs=cfg.paths.runs
    )


class ExperimentNameCheck(Callback):
    """``hydra.callbacks``: refuse a bad ``experiment`` (``..``, ``a/b``, an empty ``$EXP``) before Hydra makes
    ``hydra.run.dir`` / ``hydra.sweep.dir`` from it and writes its records and log there: one line, exit 1."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _name_or_exit(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _name_or_exit(config)


def _name_or_exit(config: DictConfig) -> None:
    try:
        check_name(config.get("experiment"))
    except ConfigError as exc:  # Hydra prints a traceback for an exception here, and logging is not set up yet
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def check_same_data(cfg: DictConfig, exp: ExperimentDir, payload: dict[str, Any], classes: list[str]) -> None:
    """Refuse to call finished, or to continue, a checkpoint trained on other data than ``dataset.root`` (J3).

    A stop rather than a new experiment named after the folder: where the outputs go never changes silently.
    """
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)  # its fold and reviewed lists count as data too
    change = data_change(payload, cfg.dataset.root, classes, project_root(cfg), dataset)  # type: ignore[arg-type]
    if change is None:
        return
    own = str(cfg.resume) in ("auto", "never")
    what = f"experiment '{cfg.experiment}' ({exp.path})" if own else f"the checkpoint resume={cfg.resume}"
    done = "finished" if is_finished(payload, cfg.epochs) else "started"
    chosen = [f"{key}={dataset[key.split('.', 1)[1]]}" for key in SELECTION_KEYS if dataset.get(key.split(".", 1)[1])]
    command = " ".join([f"python train.py -cn={config_name()} dataset.root={cfg.dataset.root}", *chosen])
    name = f"{cfg.experiment}_fold{dataset['fold']}" if change.startswith("dataset.fold:") else None
    instead = (
        f"  or train '{cfg.experiment}' again on it, deleting its results:  {command} overwrite=true"
        if own
        else "  or start from scratch or from a checkpoint trained on this data: another resume="
    )
    raise ExperimentError(
        f"{what} was {done} on other data ({change}), so it is neither done nor continued on "
        f"dataset.root={cfg.dataset.root} (a folder moved or copied counts as other data).\n"
        f"  train this data as its own experiment:  {command} "
        f"experiment={name or suggested_name(cfg.experiment, Path(cfg.dataset.root).name)}\n{instead}"
    )


def suggested_name(experiment: str, folder: str) -> str:
    """``<experiment>_<folder>``, made one valid folder name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{experiment}_{folder}").strip("._") or "new_experiment"
    return name[:100]


def report_finished(cfg: DictConfig, exp: ExperimentDir, payload: dict[str, Any]) -> float | None:
    """Say that the experiment is done and how to evaluate, retrain or extend it; its best value."""
    state = payload["state"]
    log.warning(
        "experiment '%s' already finished %d epochs (best %s = %.4f at epoch %d) in %s; nothing to do.\n"
        "  evaluate it:    python test.py -cn=%s\n"
        "  train it again: overwrite=true (deletes it) or experiment=<new name>; train longer: epochs=<more>",
        cfg.experiment,
        state["epoch"],
        cfg.monitor,
        float(state["best"] if state["best"] is not None else "nan"),
        state["best_epoch"],
        exp.path,
        config_name(),
    )
    return state["best"]
